"""One account's watcher: wait (IDLE, keep-alive or sleep), poll, record — forever.

The connection stays open between polls while the worker's connection budget allows (else it
logs in for each poll); with IDLE and an idle slot, INBOX idles between polls so new mail is
reported within a second or two. Each poll's findings — new messages (deduplicated by the
unique key account+folder+UIDVALIDITY+UID), vanished mail, folder states, health — and the
events they cause commit in one transaction. A poll after a failure that gets through emits
``SyncRecovered``; a failure is recorded with its class and retried after the back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from libs.common.events.registry import Server
from services.sync.checks import check_imap_folder, check_pop3
from services.sync.domain import SyncError
from services.sync.ews import poll_ews
from services.sync.imap import ImapSession
from services.sync.mailmeta import MessageMeta
from services.sync.models import Account, FolderState
from services.sync.pop3 import Pop3Session
from services.sync.ports import Credential
from services.sync.recording import PollResult, Recorded, Recording
from services.sync.repository import SyncRepository

if TYPE_CHECKING:
    from services.sync.scheduler import SyncEngine

S = TypeVar("S")
log = logging.getLogger("mailroom.sync")


class AccountWatcher(Recording):
    def __init__(self, engine: SyncEngine, account: Account) -> None:
        self.engine = engine
        self.account = account
        self.wake = asyncio.Event()
        self.session: ImapSession | None = None
        self.persistent = False
        self.idle_slot = False
        self.reconnect = False
        self.folders: dict[str, FolderState] | None = None
        self.next_due = 0.0
        self.last_quota = -1e18
        self.logins = 0
        self.login_version = 0  # the credential version of the open session
        self.polls = 0
        self.recorded: Recorded | None = None
        self.live_success_at: datetime | None = None
        self.live_next_at: datetime | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.account.tenant_id, self.account.account_id

    # --- control ----------------------------------------------------------------------------
    def start(self, delay: float = 0.0) -> None:
        self.next_due = asyncio.get_running_loop().time() + delay
        self.task = asyncio.create_task(self._run(), name=f"sync-{self.account.account_id}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None
        await self._drop_session()

    def poke(self) -> None:
        self.wake.set()

    def update(self, account: Account) -> None:
        if account.settings != self.account.settings:
            self.reconnect = True
            self.folders = None
            self.poke()
        self.account = account

    def credential_rotated(self, version: int | None = None) -> None:
        """A new credential version: log in again with it, unless the open session already
        uses it (an OAuth2 token this watcher had refreshed after a refusal)."""
        s = self.session
        if version is not None and s is not None and s.alive and self.login_version >= version:
            return
        self.engine.credentials.forget(*self.key)
        self.reconnect = True
        self.poke()

    # --- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await self._wait()
                await self._cycle()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one account's bug stop its watching
                log.exception("sync watcher %s failed; retrying", self.account.account_id)
                await self._drop_session()
                self.next_due = asyncio.get_running_loop().time() + self.engine.policy.base_s

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.engine.settings
        while True:
            if self.wake.is_set():
                self.wake.clear()
                return
            delay = self.next_due - loop.time()
            if delay <= 0:
                return
            s = self.session
            if s is not None and s.alive and self.idle_slot:
                try:
                    got = await s.idle(min(delay, settings.idle_renew_s), self.wake)
                except SyncError:
                    await self._drop_session()
                    return  # poll at once: reconnect, or record the failure
                if got == "push":
                    return
                continue
            step = min(delay, settings.keepalive_s) if s is not None and s.alive else delay
            waits = {asyncio.ensure_future(self.wake.wait())}
            if s is not None and s.alive:
                waits.add(asyncio.ensure_future(s.lost.wait()))
            try:
                await asyncio.wait(waits, timeout=step, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in waits:
                    t.cancel()
            if s is not None and not s.alive:
                await self._drop_session()
                return
            if s is not None and not self.wake.is_set() and self.next_due - loop.time() > 0:
                try:
                    await s.noop()
                except SyncError:
                    await self._drop_session()
                    return

    async def _cycle(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result: PollResult | None = None
        async with self.engine.poll_slots:
            try:
                result = await self._poll()
                more = await self._record_success(result, loop.time() - started)
            except SyncError as exc:
                if result is not None and result.abort is not None:
                    result.abort()
                await self._failed(exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("sync poll of %s failed", self.account.account_id)
                if result is not None and result.abort is not None:
                    result.abort()
                await self._failed(SyncError("unknown", f"{type(exc).__name__}: {exc}"))
                return
            finally:
                self.polls += 1
                self.engine.stats.polls += 1
                self.engine.stats.poll_seconds += loop.time() - started
            if result.after is not None:
                try:
                    await result.after()
                except SyncError as exc:  # recorded already; deletion is retried next poll
                    log.warning("POP3 finish of %s failed: %s", self.account.account_id, exc)
        self.next_due = loop.time() + (0.0 if more else self.interval_s)

    async def _failed(self, exc: SyncError) -> None:
        self.recorded = None
        await self._drop_session()
        if exc.reason_class == "auth":
            self.engine.credentials.forget(*self.key)
        self.engine.stats.failures += 1
        retry = await self._record_failure(exc)
        loop = asyncio.get_running_loop()
        self.next_due = loop.time() + (retry if retry is not None else self.interval_s)

    # --- connections ------------------------------------------------------------------------
    async def _drop_session(self) -> None:
        s, self.session = self.session, None
        if s is not None:
            await s.close()
        if self.persistent:
            self.engine.release_connection()
            self.persistent = False
        if self.idle_slot:
            self.engine.release_idle()
            self.idle_slot = False

    async def _imap(self) -> ImapSession:
        if self.session is not None and self.session.alive and not self.reconnect:
            return self.session
        await self._drop_session()
        self.reconnect = False
        server = self.account.settings.incoming
        assert server is not None
        s = await self._logged_in(server, self._login)
        self.session = s
        self.persistent = self.engine.take_connection()
        return s

    async def _logged_in(
        self, server: Server, login: Callable[[Server, Credential], Awaitable[S]]
    ) -> S:
        """A login slot on the host, then ``login``; an OAuth2 access token the server refuses
        is refreshed and tried once more."""
        cred = await self.engine.credentials.get(*self.key)
        async with self.engine.host_slot(server.host):
            try:
                session = await login(server, cred)
            except SyncError as exc:
                if exc.reason_class != "auth" or cred.auth_mode != "oauth2":
                    raise
                cred = await self.engine.credentials.get(*self.key, refresh=True)
                session = await login(server, cred)
        self.login_version = cred.version
        return session

    async def _login(self, server: Server, cred: Credential) -> ImapSession:
        self.logins += 1
        self.engine.stats.logins += 1
        return await ImapSession.open(
            server,
            cred,
            self.engine.ssl_context,
            connect_timeout=self.engine.settings.connect_timeout_s,
            timeout=self.engine.settings.command_timeout_s,
        )

    async def _load_folders(self) -> dict[str, FolderState]:
        if self.folders is None:
            async with self.engine.db.read() as conn:
                repo = SyncRepository(conn, self.account.tenant_id)
                self.folders = await repo.folders(self.account.account_id)
        return self.folders

    async def _known(self, folder: str, uidvalidity: int) -> set[int]:
        async with self.engine.db.read() as conn:
            repo = SyncRepository(conn, self.account.tenant_id)
            return await repo.known_uids(self.account.account_id, folder, uidvalidity)

    # --- polls ------------------------------------------------------------------------------
    async def _poll(self) -> PollResult:
        server = self.account.settings.incoming
        if server is None:
            raise SyncError("protocol", "the account has no incoming server")
        if server.protocol == "pop3":
            return await self._poll_pop3()
        if server.protocol == "ews":
            return await poll_ews(self)
        return await self._poll_imap()

    async def _poll_imap(self) -> PollResult:
        s = await self._imap()
        prev = await self._load_folders()
        settings = self.engine.settings
        result = PollResult()
        for folder in dict.fromkeys(self.account.settings.folders or ["INBOX"]):
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            fr = await check_imap_folder(
                s,
                folder,
                prev.get(folder),
                added_at=self.account.added_at,
                announce_existing=settings.announce_existing == "since_added",
                fetch_batch=settings.fetch_batch,
                known_uids=lambda v, f=folder: self._known(f, v),  # type: ignore[misc]
            )
            fr.seconds = loop.time() - t0
            result.folders.append(fr)
        loop = asyncio.get_running_loop()
        if s.has_quota and loop.time() - self.last_quota > settings.quota_every_s:
            self.last_quota = loop.time()
            result.quota = await s.quota()
        if not self.persistent:
            await self._drop_session()
        elif settings.idle_enabled and s.can_idle:
            if not self.idle_slot:
                self.idle_slot = self.engine.take_idle()
            if self.idle_slot and s.selected != "INBOX":
                await s.examine("INBOX")
        return result

    async def _poll_pop3(self) -> PollResult:
        server = self.account.settings.incoming
        assert server is not None
        settings = self.engine.settings
        s = await self._logged_in(server, self._login_pop3)
        try:
            listing = await s.listing()
            async with self.engine.db.read() as conn:
                repo = SyncRepository(conn, self.account.tenant_id)
                known = await repo.known_uidls(self.account.account_id)
            prev = (await self._load_folders()).get("INBOX")
            leave = self.account.settings.leave_on_server
            new = [u for u in listing.uidls if u not in known]
            metas: list[MessageMeta] = []
            if new and (prev is not None or not leave):
                batch = new[: settings.fetch_batch]
                metas = await s.headers([listing.uidls[u] for u in batch], listing.sizes)
                for m, uidl in zip(metas, batch, strict=True):
                    m.uidl, m.uid = uidl, 0
            fr = check_pop3(listing, known, prev, metas, leave_on_server=leave)
            fr.more = bool(metas) and len(new) > len(metas)
        except BaseException:
            s.abort()
            raise
        delete: list[int] = []
        if not leave:  # what this poll records, and earlier deletions that did not happen
            delete = [listing.uidls[m.uidl] for m in metas if m.uidl]
            delete += [n for u, n in listing.uidls.items() if known.get(u, (0, False))[1]]
        return PollResult([fr], after=lambda: s.finish(sorted(delete)), abort=s.abort)

    async def _login_pop3(self, server: Server, cred: Credential) -> Pop3Session:
        self.logins += 1
        self.engine.stats.logins += 1
        return await Pop3Session.open(
            server,
            cred,
            self.engine.ssl_context,
            executor=self.engine.executor,
            connect_timeout=self.engine.settings.connect_timeout_s,
            timeout=self.engine.settings.command_timeout_s,
        )
