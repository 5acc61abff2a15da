"""The organisation's mail settings: one aggregate per tenant (``domain_org``)."""

from __future__ import annotations

from libs.common.events.envelope import CommandContext
from libs.common.events.registry import OrgMailSettings
from libs.common.store.database import Database
from services.registry import domain_org
from services.registry.handlers import wrap
from services.registry.repository_bulk import BulkRepository


class OrgHandlers:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set_mail_settings(
        self, ctx: CommandContext, cmd: domain_org.SetMailSettings
    ) -> tuple[OrgMailSettings, bool]:
        """Store the settings; returns them and whether anything changed."""
        aggregate_id = domain_org.org_id(ctx.tenant_id)
        async with self.db.transaction() as tx:
            history = await tx.load(ctx.tenant_id, aggregate_id)
            state = domain_org.fold(aggregate_id, (e.event() for e in history))
            events = domain_org.decide(cmd, state)
            await tx.append(
                wrap(ctx, aggregate_id, state.version, events), expected_version=state.version
            )
        for e in events:
            state = domain_org.evolve(state, e)
        return domain_org.require(state), bool(events)

    async def mail_settings(self, tenant_id: str) -> OrgMailSettings | None:
        async with self.db.read() as conn:
            return await BulkRepository(conn, tenant_id).org_settings()
