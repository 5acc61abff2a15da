"""Signature commands: load the aggregate (account or employee), decide, append.

Each runs in one transaction (events, signature read rows, outbox rows). Setting the same
signature again appends nothing and answers ``changed: False``.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.events.envelope import CommandContext
from libs.common.store.database import Database
from services.registry import domain_signatures as sig
from services.registry.domain import accounts, employees
from services.registry.handlers import wrap
from services.registry.repository import RegistryRepository


@dataclass(frozen=True, slots=True)
class Outcome:
    stored: sig.Stored | None
    changed: bool


class SignatureHandlers:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def mailbox(
        self, ctx: CommandContext, account_id: str, command: sig.SetSignature | sig.RemoveSignature
    ) -> Outcome:
        async with self.db.transaction() as tx:
            await RegistryRepository(tx.conn, ctx.tenant_id).lock("account", account_id)
            history = [e.event() for e in await tx.load(ctx.tenant_id, account_id)]
            account = accounts.fold(account_id, history)
            state = sig.fold_mailbox(history)
            events = sig.decide_mailbox(command, account, state)
            if events:
                await tx.append(
                    wrap(ctx, account_id, account.version, events),
                    expected_version=account.version,
                )
        for e in events:
            state = sig.evolve_mailbox(state, e)
        return Outcome(state.by_name.get(command.name), bool(events))

    async def personal(
        self, ctx: CommandContext, employee_id: str, command: sig.SetPersonal | sig.RemovePersonal
    ) -> Outcome:
        async with self.db.transaction() as tx:
            await RegistryRepository(tx.conn, ctx.tenant_id).lock("employee", employee_id)
            history = [e.event() for e in await tx.load(ctx.tenant_id, employee_id)]
            employee = employees.fold(employee_id, history)
            current = sig.fold_personal(history)
            events = sig.decide_personal(command, employee, current)
            if events:
                await tx.append(
                    wrap(ctx, employee_id, employee.version, events),
                    expected_version=employee.version,
                )
        for e in events:
            current = sig.evolve_personal(current, e)
        return Outcome(current, bool(events))
