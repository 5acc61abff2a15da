"""The accounts to watch, projected from registry events (``mailroom.*.registry.>``).

Applied exactly once by a durable consumer, in its transaction: the ``sync_accounts`` row, the
status row and the status events it causes (``AccountStatusChanged`` to syncing on add and
reactivation, to disabled on disable) commit together. ``AccountDeleted`` forgets everything
sync holds about the mailbox. A change only emits when the state really changes, so a rebuild
(which replays every registry event) adds no event.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import Projection
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.registry import (
    AccountAdded,
    AccountDeleted,
    AccountDisabled,
    AccountReactivated,
    AccountUpdated,
    CredentialRotated,
)
from libs.common.store.eventstore import EventStore
from libs.common.subjects import PREFIX
from services.sync import domain
from services.sync.models import Account
from services.sync.repository import ACTOR, SyncRepository
from services.sync.tables import accounts

DURABLE = "sync-registry"
REGISTRY_FILTER = f"{PREFIX}.*.registry.>"


async def apply_registry_event(conn: AsyncConnection, store: EventStore, env: Envelope) -> None:
    if env.aggregate != "account":
        return
    event = env.event()
    repo = SyncRepository(conn, env.tenant_id)
    account_id, now = env.aggregate_id, env.time
    outcome: domain.Outcome | None = None
    create = False
    current = await repo.account(account_id)
    health = await repo.health(account_id)
    if isinstance(event, AccountAdded):
        current = Account(
            env.tenant_id,
            account_id,
            event.address,
            event.protocol,
            event.settings,
            True,
            event.credential.version if event.credential else 0,
            now,
        )
        await repo.put_account(current)
    elif current is None:
        return  # an event about an account sync never saw added (other tenant's replay etc.)
    elif isinstance(event, AccountUpdated):
        current = Account(
            current.tenant_id,
            account_id,
            current.address,
            current.protocol,
            event.settings,
            current.enabled,
            current.credential_version,
            current.added_at,
        )
        await repo.put_account(current)
    elif isinstance(event, AccountDisabled):
        current = _with_enabled(current, False)
        await repo.put_account(current)
        if health is not None:
            outcome = domain.disabled(health, now, event.reason)
    elif isinstance(event, AccountReactivated):
        current = _with_enabled(current, True)
        await repo.put_account(current)
        if health is not None:
            outcome = domain.reactivated(health, now)
    elif isinstance(event, AccountDeleted):
        await repo.forget(account_id)
        return
    elif isinstance(event, CredentialRotated):
        current = Account(
            current.tenant_id,
            account_id,
            current.address,
            current.protocol,
            current.settings,
            current.enabled,
            event.credential.version,
            current.added_at,
        )
        await repo.put_account(current)
        if health is not None:
            await repo.apply_outcome(
                account_id, domain.Outcome(domain.credential_rotated(health)), now
            )
        return
    else:
        return
    if outcome is None and health is None and current.watchable:
        outcome, create = domain.added(now), True
    if outcome is None:
        return
    await repo.apply_outcome(account_id, outcome, now, create=create)
    ctx = CommandContext(env.tenant_id, ACTOR, env.correlation_id, env.id)
    envs = await repo.wrap(store, account_id, outcome.events, ctx)
    if envs:
        await store.append(conn, envs)


def _with_enabled(a: Account, enabled: bool) -> Account:
    return Account(
        a.tenant_id,
        a.account_id,
        a.address,
        a.protocol,
        a.settings,
        enabled,
        a.credential_version,
        a.added_at,
    )


def registry_projection(store: EventStore) -> Projection:
    async def apply(conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        for env in events:
            await apply_registry_event(conn, store, env)

    async def reset(conn: AsyncConnection) -> None:
        # Only the projected accounts: health, folders and known UIDs are sync's own state.
        await conn.execute(delete(accounts))

    return Projection(DURABLE, REGISTRY_FILTER, apply, reset=reset)
