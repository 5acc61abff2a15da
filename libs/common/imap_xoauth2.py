"""SASL XOAUTH2 for IMAP on aioimaplib (Gmail's and Microsoft's bearer-token login).

aioimaplib's own ``xoauth2`` neither answers the server's error challenge (a refused token
then waits for the command time-out instead of failing) nor keeps the SASL string, which
carries the token in base64, out of its debug log. This does both.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aioimaplib
from aioimaplib.aioimaplib import Command


class _SaslCommand(Command):  # type: ignore[misc]
    """AUTHENTICATE with an initial response. A continuation from the server is its error
    challenge (base64 JSON status): the empty answer makes the server end with NO."""

    def __init__(self, *args: Any, transport: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._transport = transport

    def flush(self) -> None:
        self._transport.write(b"\r\n")


def sasl_xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


async def xoauth2(proto: Any, user: str, token: str) -> Any:
    """Log in on a connected ``IMAP4ClientProtocol``; returns the tagged response."""
    sasl = sasl_xoauth2(user, token)
    cmd = _SaslCommand(
        "AUTHENTICATE",
        proto.new_tag(),
        "XOAUTH2",
        sasl,
        loop=asyncio.get_running_loop(),
        transport=proto.transport,
    )
    r = await proto.execute(cmd, scrub=sasl)  # aioimaplib's debug log shows asterisks
    if r.result == "OK":
        proto.state = aioimaplib.aioimaplib.AUTH
    return r
