"""POP3 by UIDL (stdlib poplib on a worker thread): list, headers of new messages (TOP n 0),
and — only when the account says ``leave_on_server: false`` — delete what was recorded.
Login by USER/PASS, or for OAuth2 accounts by SASL XOAUTH2 (``libs.common.pop3_xoauth2``).

POP3 locks the maildrop while a session is open and commits deletions only at QUIT, so a
session lives for one poll: ``open`` → ``listing`` → the caller commits → ``finish`` (DELE the
recorded messages if asked, then QUIT).
"""

from __future__ import annotations

import asyncio
import contextlib
import poplib
import ssl
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from libs.common import pop3_xoauth2
from libs.common.events.registry import Server
from services.sync.domain import SyncError
from services.sync.imap import classify
from services.sync.mailmeta import MessageMeta, parse_headers
from services.sync.ports import Credential

_MAX_LINE = 2048  # poplib's limit on a reply line


@dataclass
class Listing:
    uidls: dict[str, int]  # UIDL -> message number in this session
    sizes: dict[int, int]


def _error(exc: BaseException) -> SyncError:
    if isinstance(exc, poplib.error_proto):
        text = str(exc.args[0] if exc.args else exc)[:200]
        if "[SYS/TEMP]" in text or "[IN-USE]" in text:
            return SyncError("network", f"POP3: {text}")
        return SyncError("protocol", f"POP3: {text}")
    return classify(exc)


def _refused(text: str) -> SyncError:
    if "[SYS/TEMP]" in text or "[IN-USE]" in text:
        return SyncError("network", f"POP3 login: {text}")
    return SyncError("auth", f"login refused: {text}")


def _login(conn: poplib.POP3, cred: Credential) -> None:
    """USER/PASS, or SASL XOAUTH2 with an OAuth2 access token (blocking, on the thread)."""
    if cred.auth_mode == "oauth2":

        def send(line: str) -> str:  # not poplib's putline: no debug print, no audit event
            conn.sock.sendall(line.encode() + b"\r\n")
            raw = conn.file.readline(_MAX_LINE + 1)
            if not raw:
                raise EOFError("the server closed the connection during login")
            return raw[:_MAX_LINE].decode("utf-8", "replace").rstrip("\r\n")

        exchange = pop3_xoauth2.xoauth2(cred.username, cred.secret.get_secret_value())
        outcome = pop3_xoauth2.run(exchange, send)
        if not outcome.ok:
            raise _refused(outcome.describe())
        return
    try:
        conn.user(cred.username)
        conn.pass_(cred.secret.get_secret_value())
    except poplib.error_proto as exc:
        raise _refused(str(exc.args[0] if exc.args else exc)[:200]) from None


class Pop3Session:
    def __init__(self, conn: poplib.POP3, executor: Executor | None, timeout: float) -> None:
        self.conn = conn
        self.executor = executor
        self.timeout = timeout

    async def _call(self, fn: object, *args: object) -> object:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self.executor, fn, *args),  # type: ignore[arg-type]
                self.timeout,
            )
        except Exception as exc:
            self.abort()
            raise _error(exc) from None

    @classmethod
    async def open(
        cls,
        server: Server,
        cred: Credential,
        ctx: ssl.SSLContext,
        *,
        executor: Executor | None,
        connect_timeout: float,
        timeout: float,
    ) -> Pop3Session:
        def connect() -> poplib.POP3:
            conn: poplib.POP3
            if server.security == "ssl":
                conn = poplib.POP3_SSL(server.host, server.port, timeout=timeout, context=ctx)
            else:
                conn = poplib.POP3(server.host, server.port, timeout=timeout)
            try:
                if server.security == "starttls":
                    try:
                        conn.stls(ctx)
                    except poplib.error_proto as exc:
                        raise SyncError("tls", f"STLS refused: {exc}") from None
                _login(conn, cred)
            except BaseException:
                conn.close()
                raise
            return conn

        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(executor, connect)
        try:
            conn = await asyncio.wait_for(asyncio.shield(fut), connect_timeout)
        except BaseException as exc:
            fut.add_done_callback(_close_late)  # the thread may still log in: never keep it
            if isinstance(exc, SyncError | asyncio.CancelledError):
                raise
            if not isinstance(exc, Exception):
                raise
            raise _error(exc) from None
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # 3.11 wait_for swallowed a cancellation
            conn.close()
            raise asyncio.CancelledError
        return cls(conn, executor, timeout)

    async def listing(self) -> Listing:
        def run() -> Listing:
            _, lines, _ = self.conn.uidl()
            uidls: dict[str, int] = {}
            for line in lines:
                num, _, uidl = line.decode("ascii", "replace").partition(" ")
                uidls[uidl.strip()] = int(num)
            _, lines, _ = self.conn.list()
            sizes = {}
            for line in lines:
                num, _, size = line.decode("ascii", "replace").partition(" ")
                sizes[int(num)] = int(size.split()[0])
            return Listing(uidls, sizes)

        result = await self._call(run)
        assert isinstance(result, Listing)
        return result

    async def headers(self, numbers: Iterable[int], sizes: dict[int, int]) -> list[MessageMeta]:
        """Header metadata of messages by number (uid and uidl are set by the caller)."""

        def run(nums: list[int]) -> list[MessageMeta]:
            out = []
            for n in nums:
                _, lines, _ = self.conn.top(n, 0)
                meta = parse_headers(MessageMeta(uid=n, size=sizes.get(n)), b"\r\n".join(lines))
                out.append(meta)
            return out

        result = await self._call(run, list(numbers))
        assert isinstance(result, list)
        return result

    async def finish(self, delete: Iterable[int] = ()) -> None:
        """DELE ``delete`` (message numbers), then QUIT, which commits the deletions."""

        def run(nums: list[int]) -> None:
            for n in nums:
                self.conn.dele(n)
            self.conn.quit()

        await self._call(run, list(delete))

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # already gone
            self.conn.close()


def _close_late(fut: asyncio.Future[poplib.POP3]) -> None:
    """A login that finished after its caller gave up: close it."""
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()
