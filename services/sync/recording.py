"""Recording a poll: its findings, the folder states, known UIDs, health and the events they
cause, in one transaction (a mixin of :class:`services.sync.watcher.AccountWatcher`).

New messages are deduplicated by the unique key account+folder+UIDVALIDITY+UID; POP3 messages
get sync's own UIDs (UIDVALIDITY 0). A steady poll that found nothing writes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from libs.common.events.base import Event
from libs.common.events.sync import MailMissingDetected, MessageReceived
from services.sync import domain
from services.sync.checks import FolderResult
from services.sync.domain import SyncError
from services.sync.mailmeta import MessageMeta
from services.sync.models import Account, FolderState
from services.sync.repository import SyncRepository

if TYPE_CHECKING:
    from services.sync.scheduler import SyncEngine


@dataclass(frozen=True)
class Recorded:
    """What this watcher last wrote to the status row (to skip writes that change nothing)."""

    state: str
    last_mail_at: datetime | None
    silence_reported: bool
    idle: bool
    written_at: datetime


@dataclass
class PollResult:
    folders: list[FolderResult] = field(default_factory=list)
    quota: tuple[int, int] | None = None
    after: Callable[[], Awaitable[None]] | None = None  # POP3: DELE + QUIT after the commit
    abort: Callable[[], None] | None = None


def _received(folder: str, uidvalidity: int, m: MessageMeta) -> MessageReceived:
    return MessageReceived(
        folder=folder,
        uidvalidity=uidvalidity,
        uid=m.uid,
        message_id=m.message_id,
        from_=m.from_,
        to=m.to,
        subject=m.subject,
        date=m.date,
        size=m.size,
        uidl=m.uidl,
        **m.autoreply_facts(),
    )


class Recording:
    engine: SyncEngine
    account: Account
    folders: dict[str, FolderState] | None
    idle_slot: bool
    recorded: Recorded | None
    live_success_at: datetime | None
    live_next_at: datetime | None

    @property
    def interval_s(self) -> float:
        s = self.engine.settings
        return domain.interval(
            self.account.settings.polling_interval_s, s.default_interval_s, s.min_interval_s
        )

    # --- recording --------------------------------------------------------------------------
    def _nothing_to_write(self, result: PollResult, now: datetime) -> bool:
        """A steady poll that found nothing: no write (the API shows the live times)."""
        rec, settings = self.recorded, self.engine.settings
        return (
            rec is not None
            and rec.state == "online"
            and rec.idle == self.idle_slot
            and result.quota is None
            and (now - rec.written_at).total_seconds() < settings.status_flush_s
            and not any(
                fr.changed
                or fr.new
                or fr.baseline
                or fr.vanished
                or fr.forget
                or fr.reset_from is not None
                for fr in result.folders
            )
            and not domain.silent_too_long(
                rec.last_mail_at,
                self.account.added_at,
                now,
                settings.silence_alert_s,
                rec.silence_reported,
            )
        )

    async def _record_success(self, result: PollResult, seconds: float) -> bool:
        acc, engine = self.account, self.engine
        now = datetime.now(UTC)
        self.live_success_at = now
        self.live_next_at = now + timedelta(seconds=self.interval_s)
        if self._nothing_to_write(result, now):
            return False
        async with engine.db.transaction() as tx:
            repo = SyncRepository(tx.conn, acc.tenant_id)
            row = await repo.locked_status(acc.account_id)
            if row is None or row.health.state == "disabled":
                return False  # disabled or deleted meanwhile: record nothing
            events: list[Event] = []
            mail = 0
            for fr in result.folders:
                mail += await self._record_folder(repo, fr, events, now)
            outcome = domain.succeeded(row.health, now)
            last_mail = now if mail else row.last_mail_at
            silence = row.silence_reported and not mail
            if domain.silent_too_long(
                last_mail, acc.added_at, now, engine.settings.silence_alert_s, silence
            ):
                silence = True
                quiet = now - (last_mail or acc.added_at)
                events.append(
                    MailMissingDetected(kind="silence", detail=f"no mail for {quiet}".split(".")[0])
                )
            await repo.apply_outcome(acc.account_id, outcome, now)
            extra = {}
            if result.quota is not None:
                extra = {
                    "quota_used_kb": result.quota[0],
                    "quota_limit_kb": result.quota[1],
                    "quota_at": now,
                }
            folders = {**(self.folders or {}), **{f.state.folder: f.state for f in result.folders}}
            await repo.set_status(
                acc.account_id,
                next_sync_at=now + timedelta(seconds=self.interval_s),
                last_mail_at=last_mail,
                silence_reported=silence,
                message_count=sum(f.exists for f in folders.values()),
                idle=self.idle_slot,
                **extra,
            )
            await tx.append(
                await repo.wrap(engine.db.store, acc.account_id, outcome.events + events)
            )
        self.folders = folders
        self.recorded = Recorded(outcome.health.state, last_mail, silence, self.idle_slot, now)
        engine.stats.received += sum(isinstance(e, MessageReceived) for e in events)
        return any(f.more for f in result.folders)

    async def _record_folder(
        self, repo: SyncRepository, fr: FolderResult, events: list[Event], now: datetime
    ) -> int:
        acc_id, st = self.account.account_id, fr.state
        folder, validity = st.folder, st.uidvalidity
        if fr.reset_from is not None:
            await repo.remove_uids(acc_id, folder, validity, None)
            events.append(
                MailMissingDetected(
                    kind="uidvalidity_reset",
                    folder=folder,
                    detail=f"UIDVALIDITY {fr.reset_from} -> {validity}: UIDs were reassigned",
                )
            )
        if fr.vanished:
            await repo.remove_uids(acc_id, folder, validity, fr.vanished)
            events.append(
                MailMissingDetected(
                    kind="vanished",
                    folder=folder,
                    uids=fr.vanished[:1000],
                    detail=f"{len(fr.vanished)} message(s) vanished without the hub deleting them",
                )
            )
        if fr.forget:
            await repo.remove_uids(acc_id, folder, validity, fr.forget)
        next_uid = 0
        if validity == 0 and (fr.new or fr.baseline):  # POP3: sync assigns UIDs
            next_uid = await repo.max_uid(acc_id, folder, 0)
        rows: list[tuple[int, str | None]] = []
        for uid, uidl in fr.baseline:
            if validity == 0:
                next_uid += 1
                uid = next_uid
            rows.append((uid, uidl))
        fresh: list[MessageMeta] = []
        if fr.new:
            if validity == 0:
                for m in fr.new:
                    next_uid += 1
                    m.uid = next_uid
                fresh = list(fr.new)
            else:
                seen = await repo.existing(acc_id, folder, validity, [m.uid for m in fr.new])
                fresh = [m for m in fr.new if m.uid not in seen]
            rows.extend((m.uid, m.uidl) for m in fresh)
            events.extend(_received(folder, validity, m) for m in fresh)
        if rows:
            await repo.add_messages(acc_id, folder, validity, rows, now, hub_deleted=fr.hub_deletes)
        if validity == 0:
            st.last_uid = max(st.last_uid, next_uid)
        if fr.changed or rows:
            await repo.save_folder(acc_id, st, fr.seconds)
        return len(fresh)

    async def _record_failure(self, exc: SyncError) -> float | None:
        acc, engine = self.account, self.engine
        now = datetime.now(UTC)
        async with engine.db.transaction() as tx:
            repo = SyncRepository(tx.conn, acc.tenant_id)
            row = await repo.locked_status(acc.account_id)
            if row is None or row.health.state == "disabled":
                return None
            outcome = domain.failed(row.health, exc.reason_class, exc.detail, now, engine.policy)
            await repo.apply_outcome(acc.account_id, outcome, now)
            retry = outcome.retry_in_s or self.interval_s
            await repo.set_status(
                acc.account_id, next_sync_at=now + timedelta(seconds=retry), idle=False
            )
            await tx.append(await repo.wrap(engine.db.store, acc.account_id, outcome.events))
        return outcome.retry_in_s
