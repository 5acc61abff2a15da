"""Commands of the authz service: grant, revoke, the sweep of expired grants, and the pruning
of the change log.

A command runs in one transaction: lock the tenant's revision, load the mailbox slice, decide,
append the events (the projector applies them in the same transaction). A refused change is
appended as ``AccessDenied`` (so it is in the audit trail) and then answered 403 ``forbidden``.
After commit the local index catches up, so the returned revision is already checkable here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError

from libs.common.auth import Principal
from libs.common.errors import Forbidden
from libs.common.events.authz import AccessDenied
from libs.common.events.envelope import CommandContext
from libs.common.store.database import Database
from libs.common.store.eventstore import ConcurrencyError
from services.authz import domain
from services.authz.index import AuthzIndex
from services.authz.projection import ACTOR, wrap
from services.authz.repository import AuthzRepository, tenant_heads

Clock = Callable[[], datetime]
ATTEMPTS = 5


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class WriteResult:
    changed: bool
    revision: int


class AuthzHandlers:
    def __init__(self, db: Database, index: AuthzIndex, clock: Clock = utcnow) -> None:
        self.db = db
        self.index = index
        self.clock = clock

    async def grant(self, actor: Principal, cmd: domain.GrantAccess) -> WriteResult:
        return await self._execute(actor, cmd, "grant")

    async def revoke(self, actor: Principal, cmd: domain.RevokeAccess) -> WriteResult:
        return await self._execute(actor, cmd, "revoke")

    async def _execute(
        self, actor: Principal, cmd: domain.GrantAccess | domain.RevokeAccess, verb: str
    ) -> WriteResult:
        for attempt in range(ATTEMPTS):
            try:
                outcome = await self._once(actor, cmd, verb)
                break
            except (ConcurrencyError, IntegrityError):  # another replica wrote first: retry
                if attempt == ATTEMPTS - 1:
                    raise
        if outcome.refused is not None:
            raise Forbidden(
                f"{verb} on mailbox {cmd.mailbox_id} refused: {outcome.refused}",
                code="forbidden",
                details={"reason": outcome.refused},
            )
        if not outcome.events:
            return WriteResult(False, outcome.revision or 0)
        await self.index.catch_up(actor.tenant_id)
        last = outcome.events[-1]
        return WriteResult(True, int(getattr(last, "revision", 0) or 0))

    async def _once(
        self, actor: Principal, cmd: domain.GrantAccess | domain.RevokeAccess, verb: str
    ) -> domain.Outcome:
        async with self.db.transaction() as tx:
            repo = AuthzRepository(tx.conn, actor.tenant_id)
            head = await repo.head(lock=True)
            people = [actor.subject]
            if cmd.grantee_kind == "employee":
                people.append(cmd.grantee_id)
            state = await repo.load_slice(cmd.mailbox_id, people, head)
            outcome = domain.decide(cmd, state, actor, self.clock())
            ctx = CommandContext(actor.tenant_id, actor.actor)
            if outcome.refused is not None:
                denied = AccessDenied(principal=actor.actor, action=verb, reason=outcome.refused)
                await tx.append(await wrap(tx.conn, self.db.store, ctx, [(cmd.mailbox_id, denied)]))
            elif outcome.events:
                pairs = [(cmd.mailbox_id, e) for e in outcome.events]
                await tx.append(await wrap(tx.conn, self.db.store, ctx, pairs))
        return outcome

    async def sweep_expired(self, now: datetime | None = None) -> int:
        """Append ``AccessExpired`` for grants past their expiry (checks never wait for this)."""
        now = now or self.clock()
        done = 0
        for tenant, state in list(self.index.tenants.items()):
            if not any(
                g.expires_at is not None and not g.active(now)
                for on_mb in state.grants.values()
                for g in on_mb.values()
            ):
                continue  # the index sees nothing expired: no write transaction
            try:
                async with self.db.transaction() as tx:
                    repo = AuthzRepository(tx.conn, tenant)
                    head = await repo.head(lock=True)  # before reading: no renewal slips in
                    expired = await repo.expired_grants(now)
                    if not expired:
                        continue
                    pairs = domain.expiries(expired, head + 1)
                    ctx = CommandContext(tenant, ACTOR)
                    await tx.append(await wrap(tx.conn, self.db.store, ctx, pairs))
                    done += len(pairs)
            except (ConcurrencyError, IntegrityError):  # raced another writer: next sweep
                continue
            await self.index.catch_up(tenant)
        return done

    async def prune_changes(self, retention_s: float, now: datetime | None = None) -> int:
        """Delete change-log rows recorded more than ``retention_s`` ago (each tenant's newest
        kept); return how many went. Revisions and freshness checks do not depend on them."""
        before = (now or self.clock()) - timedelta(seconds=retention_s)
        async with self.db.read() as conn:
            tenants = sorted(await tenant_heads(conn))
        done = 0
        for tenant in tenants:
            async with self.db.write() as conn:
                done += await AuthzRepository(conn, tenant).prune_changes(before)
        return done
