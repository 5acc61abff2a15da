"""The in-memory index checks are answered from, kept in step with the projection.

At start each tenant is loaded from the projection tables in one snapshot (state + revision).
Afterwards the index follows each tenant's change log: after every local write at once, after
consumed registry events when poked, and by polling the tenants' revisions (which is also how a
replica learns of writes made by another replica). A change applies the same pure ops as the
SQL projection, so the index equals the projection at the same revision. A tenant whose next
change was already pruned from the log (an index further behind than the retention) is reloaded
from the projection tables in one snapshot instead.

Freshness: ``check(..., at_least_as_fresh=r)`` waits up to ``fresh_wait_s`` for the tenant to
reach revision ``r`` (catching up from the database meanwhile), else denies with ``stale``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from libs.common.auth import Principal
from libs.common.authz_client import Decision
from libs.common.events.envelope import Envelope
from libs.common.store.database import Database
from services.authz import domain
from services.authz.repository import AuthzRepository, tenant_heads

log = logging.getLogger("mailroom.authz.index")


class AuthzIndex:
    def __init__(self, db: Database, *, poll_s: float = 0.05, fresh_wait_s: float = 0.2) -> None:
        self.db = db
        self.poll_s = poll_s
        self.fresh_wait_s = fresh_wait_s
        self.tenants: dict[str, domain.TenantState] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0  # tenants reloaded from the tables because the log was pruned

    # --- reading --------------------------------------------------------------------------
    def state(self, tenant_id: str) -> domain.TenantState:
        return self.tenants.get(tenant_id) or domain.TenantState(tenant_id)

    def revision(self, tenant_id: str) -> int:
        st = self.tenants.get(tenant_id)
        return st.revision if st is not None else 0

    def check(
        self, principal: Principal, mailbox_id: str, action: str, now: datetime | None = None
    ) -> Decision:
        st = self.tenants.get(principal.tenant_id) or domain.TenantState(principal.tenant_id)
        return domain.evaluate(st, principal, mailbox_id, action, now or datetime.now(UTC))

    async def check_fresh(
        self,
        principal: Principal,
        mailbox_id: str,
        action: str,
        at_least_as_fresh: int | None = None,
        now: datetime | None = None,
    ) -> Decision:
        tenant = principal.tenant_id
        if at_least_as_fresh is not None and self.revision(tenant) < at_least_as_fresh:
            if not await self.wait_for(tenant, at_least_as_fresh):
                have = self.revision(tenant)
                detail = f"authz is at revision {have}, the check needs {at_least_as_fresh}"
                return Decision(False, "stale", detail, revision=have)
        return self.check(principal, mailbox_id, action, now)

    async def wait_for(self, tenant_id: str, revision: int) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fresh_wait_s
        while True:
            await self.catch_up(tenant_id)
            if self.revision(tenant_id) >= revision:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(0.01, left))

    def is_offboarded(self, principal: Principal) -> bool:
        """A revocation hook for the token verifier: offboarded employees are shut out."""
        st = self.tenants.get(principal.tenant_id)
        emp = st.employees.get(principal.subject) if st is not None else None
        return emp is not None and emp.offboarded and principal.role != "service"

    # --- following the projection ---------------------------------------------------------
    async def load(self) -> None:
        """Every tenant from the projection tables, each in one consistent snapshot."""
        async with self.db.read() as conn:
            tenants = list(await tenant_heads(conn))
        for tenant in tenants:
            state = await self._load_tenant(tenant)
            async with self._lock:
                self.tenants[tenant] = state

    async def _load_tenant(self, tenant_id: str) -> domain.TenantState:
        async with self.db.read() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                return await AuthzRepository(conn, tenant_id).load_state()

    async def catch_up(self, tenant_id: str | None = None) -> None:
        """Apply the change log past each tenant's revision (all tenants when None)."""
        async with self._lock:
            async with self.db.read() as conn:
                if tenant_id is None:
                    heads = await tenant_heads(conn)
                else:
                    heads = {tenant_id: await AuthzRepository(conn, tenant_id).head()}
                for tenant, head in heads.items():
                    st = self.tenants.get(tenant)
                    if st is None or st.revision < head:
                        st = st or domain.TenantState(tenant)
                        repo = AuthzRepository(conn, tenant)
                        self.tenants[tenant] = await self._follow(repo, st, head)

    async def _follow(
        self, repo: AuthzRepository, st: domain.TenantState, head: int
    ) -> domain.TenantState:
        """``st`` advanced to ``head`` along the change log, or (the log no longer holds the
        next change: pruned) the tenant reloaded from the projection tables."""
        while st.revision < head:
            batch = await repo.changes_after(st.revision)
            if not batch or batch[0][0] != st.revision + 1:
                return await self._reload(repo.t, st.revision)
            for revision, raw in batch:
                if revision != st.revision + 1:
                    return await self._reload(repo.t, st.revision)
                env = Envelope.model_validate_json(raw)
                st.apply_event(env.event(), env.aggregate_id)
                st.revision = revision
        return st

    async def _reload(self, tenant_id: str, had: int) -> domain.TenantState:
        state = await self._load_tenant(tenant_id)
        self.reloads += 1
        log.info(
            "authz index: change log pruned past revision %d of %s; reloaded at revision %d",
            had,
            tenant_id,
            state.revision,
        )
        return state

    def poke(self) -> None:
        """Something was (or is about to be) committed: look at the change log soon."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database briefly unavailable: try again next tick
                log.warning("authz index catch-up failed: %s", exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="authz-index")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
