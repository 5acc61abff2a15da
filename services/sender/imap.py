"""The Sent copy: IMAP APPEND of the sent message to the mailbox's Sent folder.

Implicit TLS goes through aioimaplib; STARTTLS (which aioimaplib lacks) and plain IMAP through
the standard library's imaplib on a worker thread. The folder is the one flagged ``\\Sent``
(RFC 6154), else one named like a Sent folder, else ``Sent`` is created. A retried copy first
searches the folder for the Message-ID, so a copy whose outcome was lost is not filed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
import ssl
from datetime import UTC, datetime
from typing import Protocol

import aioimaplib

from libs.common.events.registry import Server
from services.sender.smtp import Credential

_LIST = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')
_NAMES = ("sent", "sent items", "sent messages", "sent mail")


class CopyFailed(Exception):
    pass


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(raw: bytes) -> str:
    name = raw.decode("utf-8", "replace").strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name


def pick_folder(lines: list[bytes]) -> str | None:
    """The Sent folder among LIST reply lines: ``\\Sent`` flag first, then a usual name."""
    found: list[tuple[bytes, str]] = []
    for line in lines:
        m = _LIST.match(line.strip())
        if m:
            found.append((m["flags"].lower(), _unquote(m["name"])))
    for flags, name in found:
        if b"\\sent" in flags.split():
            return name
    for want in _NAMES:
        for _, name in found:
            if name.lower() == want:
                return name
    return None


class _Session(Protocol):
    async def login(self, cred: Credential) -> None: ...
    async def list(self) -> list[bytes]: ...
    async def create(self, folder: str) -> None: ...
    async def has(self, folder: str, message_id: str) -> bool: ...
    async def append(self, folder: str, raw: bytes) -> None: ...
    async def logout(self) -> None: ...


def _ok(result: str, lines: list[bytes] | list[str], what: str) -> None:
    if result != "OK":
        text = b" ".join(x if isinstance(x, bytes) else x.encode() for x in lines)
        raise CopyFailed(f"{what}: {result} {text.decode('utf-8', 'replace')[:300]}")


class _Aio:
    def __init__(self, server: Server, ctx: ssl.SSLContext, timeout: float) -> None:
        self.c = aioimaplib.IMAP4_SSL(server.host, server.port, timeout=timeout, ssl_context=ctx)

    async def login(self, cred: Credential) -> None:
        await self.c.wait_hello_from_server()
        secret = cred.secret.get_secret_value()
        if cred.auth_mode == "oauth2":
            r = await self.c.xoauth2(cred.username, secret.encode())
        else:
            r = await self.c.login(cred.username, secret)
        _ok(r.result, r.lines, "login")

    async def list(self) -> list[bytes]:
        r = await self.c.list('""', "*")
        _ok(r.result, r.lines, "list")
        return [x for x in r.lines if isinstance(x, bytes)]

    async def create(self, folder: str) -> None:
        await self.c.create(quote(folder))

    async def has(self, folder: str, message_id: str) -> bool:
        r = await self.c.select(quote(folder))
        _ok(r.result, r.lines, "select")
        r = await self.c.search("HEADER", "Message-ID", quote(message_id), charset=None)
        _ok(r.result, r.lines, "search")
        return any(line.strip() and line.strip()[:1].isdigit() for line in r.lines[:1])

    async def append(self, folder: str, raw: bytes) -> None:
        r = await self.c.append(
            raw, mailbox=quote(folder), flags="(\\Seen)", date=datetime.now(UTC)
        )
        _ok(r.result, r.lines, "append")

    async def logout(self) -> None:
        await self.c.logout()


class _Threaded:
    """imaplib on a worker thread: STARTTLS (``security: starttls``) or plain (``none``)."""

    def __init__(self, server: Server, ctx: ssl.SSLContext, timeout: float) -> None:
        self.server, self.ctx, self.timeout = server, ctx, timeout
        self.c: imaplib.IMAP4 | None = None

    async def login(self, cred: Credential) -> None:
        def run() -> None:
            c = imaplib.IMAP4(self.server.host, self.server.port, timeout=self.timeout)
            self.c = c
            if self.server.security == "starttls":
                c.starttls(ssl_context=self.ctx)
            secret = cred.secret.get_secret_value()
            if cred.auth_mode == "oauth2":
                token = f"user={cred.username}\x01auth=Bearer {secret}\x01\x01".encode()
                c.authenticate("XOAUTH2", lambda _: token)
            else:
                c.login(cred.username, secret)

        await asyncio.to_thread(run)

    def _c(self) -> imaplib.IMAP4:
        assert self.c is not None
        return self.c

    async def list(self) -> list[bytes]:
        typ, data = await asyncio.to_thread(self._c().list)
        _ok(typ, [], "list")
        return [x for x in data if isinstance(x, bytes)]

    async def create(self, folder: str) -> None:
        await asyncio.to_thread(self._c().create, quote(folder))

    async def has(self, folder: str, message_id: str) -> bool:
        c = self._c()
        typ, _ = await asyncio.to_thread(c.select, quote(folder))
        _ok(typ, [], "select")
        typ, data = await asyncio.to_thread(
            c.search, None, "HEADER", "Message-ID", quote(message_id)
        )
        _ok(typ, [], "search")
        return bool(data and data[0] and data[0].split())

    async def append(self, folder: str, raw: bytes) -> None:
        now = imaplib.Time2Internaldate(datetime.now(UTC))
        typ, _ = await asyncio.to_thread(self._c().append, quote(folder), "(\\Seen)", now, raw)
        _ok(typ, [], "append")

    async def logout(self) -> None:
        if self.c is not None:
            await asyncio.to_thread(self.c.logout)


async def append_sent(
    server: Server,
    cred: Credential,
    raw: bytes,
    message_id: str,
    *,
    tls_context: ssl.SSLContext,
    timeout: float,
    retrying: bool,
) -> str:
    """File ``raw`` in the Sent folder; return the folder's name. Raises ``CopyFailed``."""
    if server.security == "none":
        raise CopyFailed("the incoming server has no TLS")
    session: _Session = (
        _Aio(server, tls_context, timeout)
        if server.security == "ssl"
        else _Threaded(server, tls_context, timeout)
    )
    try:
        async with asyncio.timeout(timeout * 4):
            await session.login(cred)
            folder = pick_folder(await session.list())
            if folder is None:
                folder = "Sent"
                await session.create(folder)
            if not (retrying and await session.has(folder, message_id)):
                await session.append(folder, raw)
            return folder
    except CopyFailed:
        raise
    except (TimeoutError, OSError, imaplib.IMAP4.error, aioimaplib.AioImapException) as exc:
        raise CopyFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.logout(), 5)
