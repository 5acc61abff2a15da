"""SASL XOAUTH2 for POP3 (RFC 5034 ``AUTH``), Gmail's and Microsoft's bearer-token login.

The exchange is written once, free of I/O, as a generator: it yields each line to send and
is sent the server's reply; the blocking (poplib) and the asyncio client drive it.

* The SASL string goes as the initial response (``AUTH XOAUTH2 <base64>``) when the command
  fits POP3's 255-octet limit; a longer one (Microsoft's JWTs) follows the server's empty
  ``+`` challenge on a line of its own, as RFC 5034 asks.
* A refused token is answered by an error challenge (``+ <base64 JSON>``) first: the client
  sends an empty line and the server ends with ``-ERR``, without waiting for a time-out.

Neither the token nor the SASL string (the token in base64) ever appears in a result.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass

from libs.common.imap_xoauth2 import sasl_xoauth2

MAX_COMMAND = 255  # octets of a POP3 command line, CRLF included (RFC 2449)
_STATUS = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
Exchange = Generator[str, str, "Outcome"]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    reply: str  # the server's last reply ("+OK ..." or "-ERR ..."), never our line
    status: str = ""  # the error challenge's "status" (e.g. "401"), when there was one

    def describe(self) -> str:
        """The refusal as safe text for a log or an error."""
        reply = self.reply[:200] or "no reply"
        return f"{reply} (XOAUTH2 status {self.status})" if self.status else reply


def is_continuation(reply: str) -> bool:
    """``+`` or ``+ <base64>``: a SASL challenge, not ``+OK``."""
    return reply == "+" or reply.startswith("+ ")


def challenge_status(reply: str) -> str:
    """The ``status`` of an error challenge (base64 JSON), if it is a short plain word."""
    try:
        doc = json.loads(base64.b64decode(reply[1:].strip(), validate=True))
    except (binascii.Error, ValueError):
        return ""
    status = str(doc.get("status", "")) if isinstance(doc, dict) else ""
    return status if _STATUS.match(status) else ""


def xoauth2(user: str, token: str) -> Exchange:
    """The client's side of ``AUTH XOAUTH2``: yields lines (without CRLF), receives replies."""
    sasl = sasl_xoauth2(user, token)
    command = f"AUTH XOAUTH2 {sasl}"
    if len(command) + 2 <= MAX_COMMAND:
        reply = yield command
    else:
        reply = yield "AUTH XOAUTH2"
        if not is_continuation(reply):  # e.g. -ERR: the mechanism is not offered
            return Outcome(False, reply)
        reply = yield sasl
    status = ""
    if is_continuation(reply):  # the error challenge: an empty answer makes the server end
        status = challenge_status(reply)
        reply = yield ""
    if is_continuation(reply):  # a server that insists: give up rather than go round
        return Outcome(False, "", status)
    return Outcome(reply.startswith("+OK"), reply, status)


def run(exchange: Exchange, send: Callable[[str], str]) -> Outcome:
    """Drive the exchange with a blocking ``send`` (a line out, the reply line back)."""
    try:
        line = next(exchange)
        while True:
            line = exchange.send(send(line))
    except StopIteration as done:
        result: Outcome = done.value
        return result


async def run_async(exchange: Exchange, send: Callable[[str], Awaitable[str]]) -> Outcome:
    """Drive the exchange with an asyncio ``send``."""
    try:
        line = next(exchange)
        while True:
            line = exchange.send(await send(line))
    except StopIteration as done:
        result: Outcome = done.value
        return result
