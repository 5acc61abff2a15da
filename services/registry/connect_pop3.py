"""The POP3 login of a connection test: line I/O on asyncio streams, USER/PASS or SASL
XOAUTH2 (``libs.common.pop3_xoauth2``: answers the error challenge, so a refused token fails
at once instead of waiting for the step time-out)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from libs.common import pop3_xoauth2
from services.registry.connect_hints import StepFailed, classify_reply

if TYPE_CHECKING:
    from services.registry.connect import Credential

MAX_LINE = 8192


class Pop3Lines:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def line(self) -> str:
        raw = await self.reader.readline()
        if not raw:
            raise ConnectionResetError("the server closed the connection")
        return raw[:MAX_LINE].decode(errors="replace").rstrip("\r\n")

    async def command(self, text: str) -> str:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()
        return await self.line()


async def login(s: Pop3Lines, c: Credential) -> None:
    assert c.secret is not None
    if c.auth_mode == "oauth2":
        exchange = pop3_xoauth2.xoauth2(c.username, c.secret.get_secret_value())
        outcome = await pop3_xoauth2.run_async(exchange, s.command)
        if not outcome.ok:
            # the reply alone: the challenge's HTTP-like status ("401") is no server outage
            raise StepFailed(classify_reply(outcome.reply, "pop3"), outcome.describe())
        return
    for command in (f"USER {c.username}", f"PASS {c.secret.get_secret_value()}"):
        reply = await s.command(command)
        if not reply.startswith("+OK"):
            raise StepFailed(classify_reply(reply, "pop3"), reply)
