"""One IMAP session on aioimaplib: TLS or STARTTLS, login, EXAMINE, UID search and metadata
fetch (header fields only — never bodies), QUOTA, NOOP and IDLE.

Every failure leaves as a classified :class:`SyncError` (network, timeout, tls, auth,
protocol). A lost connection is noticed at once (aioimaplib's connection-lost callback): the
command in flight and an IDLE wait end with ``network`` instead of waiting for a time-out.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import aioimaplib
from aioimaplib.aioimaplib import Command

from libs.common.events.registry import Server
from libs.common.imap_xoauth2 import xoauth2
from services.sync.domain import SyncError, uid_set
from services.sync.mailmeta import MessageMeta, parse_headers, parse_internaldate
from services.sync.ports import Credential

T = TypeVar("T")
log = logging.getLogger("mailroom.sync.imap")
HEADER_FIELDS = (
    "MESSAGE-ID FROM TO SUBJECT DATE"
    # for autoresponders (RFC 3834): where to answer, and whether to answer at all
    " RETURN-PATH AUTO-SUBMITTED PRECEDENCE LIST-ID LIST-UNSUBSCRIBE X-AUTO-RESPONSE-SUPPRESS"
)
FETCH_ITEMS = f"(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})])"
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_IDATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_CODE = re.compile(rb"\[(UIDVALIDITY|UIDNEXT) (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS$")
_STORAGE = re.compile(rb"\(.*?STORAGE (\d+) (\d+)")


@dataclass(frozen=True)
class FolderCheck:
    folder: str
    uidvalidity: int
    uidnext: int | None
    exists: int


def imap_utf7(name: str) -> str:
    """Modified UTF-7 (RFC 3501 5.1.3) for folder names, quoted for the wire."""
    out, buf = [], ""

    def flush() -> None:
        nonlocal buf
        if buf:
            import base64

            b64 = base64.b64encode(buf.encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            buf = ""

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf += ch
    flush()
    encoded = "".join(out).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{encoded}"'


def classify(exc: BaseException) -> SyncError:
    if isinstance(exc, SyncError):
        return exc
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return SyncError("tls", f"TLS: {getattr(exc, 'reason', None) or exc}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aioimaplib.CommandTimeout):
        return SyncError("timeout", "the server did not answer in time")
    if isinstance(exc, ConnectionError | OSError | EOFError):
        return SyncError("network", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aioimaplib.Abort | aioimaplib.Error):
        return SyncError("protocol", f"IMAP: {exc}")
    return SyncError("unknown", f"{type(exc).__name__}: {exc}")


class ImapSession:
    """A logged-in IMAP connection. Not safe for concurrent use (one watcher owns it)."""

    def __init__(self, server: Server, timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        self.lost = asyncio.Event()
        self.client: Any = None
        self.selected: str | None = None

    # --- lifecycle --------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        server: Server,
        cred: Credential,
        ctx: ssl.SSLContext,
        *,
        connect_timeout: float,
        timeout: float,
    ) -> ImapSession:
        s = cls(server, timeout)
        try:
            await asyncio.wait_for(s._open(cred, ctx), connect_timeout)
        except BaseException as exc:
            s.abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise classify(exc) from None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Python 3.11's wait_for returns the result when the login finished just as we
            # were cancelled (the cancellation is swallowed): never keep that session.
            s.abort()
            raise asyncio.CancelledError
        return s

    async def _open(self, cred: Credential, ctx: ssl.SSLContext) -> None:
        srv = self.server
        self.client = aioimaplib.IMAP4(
            srv.host,
            srv.port,
            timeout=self.timeout,
            conn_lost_cb=self._on_lost,
            ssl_context=ctx if srv.security == "ssl" else None,
        )
        await self.client.wait_hello_from_server()
        proto = self.client.protocol
        if srv.security == "starttls":
            if "STARTTLS" not in proto.capabilities:
                raise SyncError("tls", "the server does not offer STARTTLS")
            loop = asyncio.get_running_loop()
            r = await proto.execute(Command("STARTTLS", proto.new_tag(), loop=loop))
            if r.result != "OK":
                raise SyncError("tls", "STARTTLS refused")
            proto.transport = await loop.start_tls(
                proto.transport, proto, ctx, server_hostname=srv.host
            )
            await proto.capability()
        if cred.auth_mode == "oauth2":
            r = await xoauth2(proto, cred.username, cred.secret.get_secret_value())
        else:
            if "LOGINDISABLED" in proto.capabilities:
                raise SyncError("tls", "the server refuses logins without TLS")
            user = aioimaplib.aioimaplib.quoted(cred.username)
            r = await self.client.login(user, cred.secret.get_secret_value())
        if r.result != "OK":
            text = b" ".join(bytes(x) for x in r.lines).decode(errors="replace")[:200]
            if "[UNAVAILABLE]" in text or "[SERVERBUG]" in text:
                raise SyncError("network", f"login: {text}")
            raise SyncError("auth", f"login refused: {text}")

    def _on_lost(self, exc: BaseException | None) -> None:
        self.lost.set()

    @property
    def alive(self) -> bool:
        return self.client is not None and not self.lost.is_set()

    @property
    def can_idle(self) -> bool:
        return self.alive and self.client.has_capability("IDLE")

    @property
    def has_quota(self) -> bool:
        return self.alive and self.client.has_capability("QUOTA")

    def abort(self) -> None:
        self.lost.set()
        if self.client is not None and self.client.protocol.transport is not None:
            self.client.protocol.transport.close()

    async def close(self) -> None:
        try:
            if self.alive and not self.client.has_pending_idle():
                await asyncio.wait_for(self.client.logout(), 1.0)
        except Exception as exc:  # closing anyway
            log.debug("logout failed: %s", exc)
        finally:  # also when cancelled during LOGOUT: the socket never outlives the session
            self.abort()

    # --- commands ---------------------------------------------------------------------------
    async def _run(self, coro: Awaitable[T]) -> T:
        """Run a command; end it at once with ``network`` if the connection drops."""
        if not self.alive:
            raise SyncError("network", "connection closed")
        task = asyncio.ensure_future(coro)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost}, timeout=self.timeout + 5, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:  # cancelled: the command does not run on without us
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task not in done:
            task.cancel()
            self.abort()
            raise SyncError("network" if self.lost.is_set() else "timeout", "connection lost")
        try:
            return task.result()
        except Exception as exc:
            self.abort()
            raise classify(exc) from None

    def _ok(self, r: Any, what: str) -> Any:
        if r.result != "OK":
            detail = b" ".join(bytes(x) for x in r.lines[-1:]).decode(errors="replace")[:200]
            raise SyncError("protocol", f"{what}: {r.result} {detail}")
        return r

    async def examine(self, folder: str) -> FolderCheck:
        r = self._ok(await self._run(self.client.examine(imap_utf7(folder))), f"EXAMINE {folder}")
        self.client.protocol.state = aioimaplib.aioimaplib.SELECTED
        self.selected = folder
        codes: dict[bytes, int] = {}
        exists = 0
        for line in r.lines:
            line = bytes(line)
            for name, value in _CODE.findall(line):
                codes[name] = int(value)
            m = _EXISTS.match(line)
            if m:
                exists = int(m.group(1))
        if b"UIDVALIDITY" not in codes:
            raise SyncError("protocol", f"EXAMINE {folder}: no UIDVALIDITY")
        return FolderCheck(folder, codes[b"UIDVALIDITY"], codes.get(b"UIDNEXT"), exists)

    async def search(self, *criteria: str) -> list[int]:
        """UID SEARCH in the selected folder."""
        r = self._ok(await self._run(self.client.uid_search(*criteria, charset=None)), "UID SEARCH")
        uids: list[int] = []
        for line in r.lines[:-1]:
            parts = bytes(line).split()
            if parts[:1] == [b"SEARCH"]:
                parts = parts[1:]
            uids.extend(int(p) for p in parts if p.isdigit())
        return sorted(uids)

    async def fetch_meta(self, uids: Iterable[int]) -> list[MessageMeta]:
        wanted = set(uids)
        if not wanted:
            return []
        r = self._ok(
            await self._run(self.client.uid("fetch", uid_set(wanted), FETCH_ITEMS)), "UID FETCH"
        )
        found: dict[int, MessageMeta] = {}
        current: MessageMeta | None = None
        for item in r.lines:
            if isinstance(item, bytearray):
                if current is not None:
                    parse_headers(current, bytes(item))
                continue
            line = bytes(item)
            if _FETCH_START.match(line):
                current = MessageMeta(uid=0)
            if current is None:
                continue
            if m := _UID.search(line):
                current.uid = int(m.group(1))
                found[current.uid] = current
            if m := _SIZE.search(line):
                current.size = int(m.group(1))
            if m := _IDATE.search(line):
                current.internaldate = parse_internaldate(m.group(1).decode())
        return [found[u] for u in sorted(found) if u in wanted]

    async def quota(self) -> tuple[int, int] | None:
        """(used KiB, limit KiB) of INBOX's quota root, if the server tells."""
        r = await self._run(self.client.getquotaroot("INBOX"))
        if r.result != "OK":
            return None
        for line in r.lines:
            m = _STORAGE.search(bytes(line))
            if m:
                return int(m.group(1)), int(m.group(2))
        return None

    async def noop(self) -> None:
        self._ok(await self._run(self.client.noop()), "NOOP")

    async def idle(self, timeout: float, wake: asyncio.Event) -> str:
        """IDLE on the selected folder until the server pushes ("push"), ``wake`` is set
        ("wake") or ``timeout`` passes ("timeout"); the connection is usable afterwards."""
        queue = self.client.protocol.idle_queue
        while not queue.empty():
            queue.get_nowait()
        idle_task = await self._run(self.client.idle_start(timeout=timeout + 60))
        push = asyncio.ensure_future(self.client.wait_server_push(timeout))
        woken = asyncio.ensure_future(wake.wait())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({push, woken, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (push, woken, lost):
                t.cancel()
        if lost in done or not self.alive:
            self.abort()
            raise SyncError("network", "connection lost while idling")
        result = "wake" if woken in done else "timeout"
        if push in done and not push.cancelled() and push.exception() is None:
            lines = push.result()
            if any(bytes(x).startswith(b"BYE") for x in lines):
                self.abort()
                raise SyncError("network", "the server closed the connection")
            result = "push"
        self.client.idle_done()
        r = await self._run(asyncio.wait_for(idle_task, self.timeout))
        self._ok(r, "IDLE")
        return result
