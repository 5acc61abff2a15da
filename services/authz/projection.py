"""The authz projection, built from authz's own events and the registry's.

Own events (grants, revocations, expiries) are applied by the write transaction that appends
them (``AuthzProjector``); registry events arrive through a durable consumer
(``registry_projection``). Each applied event takes the tenant's next revision and is kept in
the change log under it. Reactions: an ``EmployeeOffboarded`` revokes every grant the leaver
holds, an ``AccountDeleted`` every grant on the mailbox; one ``AccessRevoked`` per grant is
appended to authz's own store in the consumer's transaction (so exactly once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import Projection
from libs.common.events.base import Event
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.registry import AccountDeleted, EmployeeOffboarded
from libs.common.store.eventstore import EventStore
from libs.common.subjects import PREFIX
from services.authz import domain
from services.authz.repository import AuthzRepository

DURABLE = "authz-registry"
REGISTRY_FILTER = f"{PREFIX}.*.registry.>"
ACTOR = "service:authz"


class RevisionMismatch(RuntimeError):
    """An event names a revision other than the one the projection gives it (a lost race)."""


async def apply_events(conn: AsyncConnection, events: Sequence[Envelope]) -> None:
    """Apply events in order: next revision, change log row, projection rows."""
    heads: dict[str, int] = {}
    for env in events:
        event = env.event()
        repo = AuthzRepository(conn, env.tenant_id)
        if env.tenant_id not in heads:
            heads[env.tenant_id] = await repo.head(lock=True)
        revision = heads[env.tenant_id] + 1
        ops = domain.effects(event, env.aggregate_id, revision)
        if ops is None:
            continue
        declared = getattr(event, "revision", None)
        if declared is not None and declared != revision:
            raise RevisionMismatch(f"{env.type} names revision {declared}, next is {revision}")
        await repo.log_change(revision, env)
        for op in ops:
            await repo.apply_op(op)
        heads[env.tenant_id] = revision
    for tenant, revision in heads.items():
        await AuthzRepository(conn, tenant).set_head(revision)


class AuthzProjector:
    """The write path's projector: authz's own events, in the transaction that appends them."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        await apply_events(conn, events)


async def wrap(
    conn: AsyncConnection,
    store: EventStore,
    ctx: CommandContext,
    pairs: Sequence[tuple[str, Event]],
) -> list[Envelope]:
    """Envelopes for (mailbox_id, event) pairs, each continuing its mailbox's history."""
    versions: dict[str, int] = {}
    out = []
    for mailbox_id, event in pairs:
        if mailbox_id not in versions:
            versions[mailbox_id] = await store.version(conn, mailbox_id)
        versions[mailbox_id] += 1
        out.append(
            Envelope.wrap(
                event, ctx, aggregate_id=mailbox_id, aggregate_version=versions[mailbox_id]
            )
        )
    return out


def registry_projection(store: EventStore, poke: Callable[[], None] = lambda: None) -> Projection:
    """The consumer of registry events; ``poke`` is called after each applied batch."""

    async def apply(conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        for env in events:
            event = env.event()
            repo = AuthzRepository(conn, env.tenant_id)
            held: list[domain.Grant] = []
            if isinstance(event, EmployeeOffboarded):
                held, reason = await repo.grants_held("employee", env.aggregate_id), "offboarded"
            elif isinstance(event, AccountDeleted):
                held, reason = await repo.grants_on(env.aggregate_id), "mailbox_deleted"
            await apply_events(conn, [env])
            if held:
                pairs = domain.revocations(held, reason, await repo.head() + 1)
                ctx = CommandContext(env.tenant_id, ACTOR, env.correlation_id, env.id)
                revokes = await wrap(conn, store, ctx, pairs)
                await store.append(conn, revokes)
                await apply_events(conn, revokes)
        poke()

    return Projection(DURABLE, REGISTRY_FILTER, apply)


class ChangeLogPruned(RuntimeError):
    """The change log no longer starts at revision 1: it cannot rebuild the projection."""


async def rebuild(conn: AsyncConnection, tenant_id: str) -> int:
    """Rebuild a tenant's projection from scratch out of its change log; return the revision.

    Only while the log is whole: once old changes were pruned (``AuthzSettings
    .change_retention_s``) this raises :class:`ChangeLogPruned` and changes nothing.
    """
    repo = AuthzRepository(conn, tenant_id)
    first = await repo.first_change()
    if first is not None and first != 1:
        raise ChangeLogPruned(
            f"the change log of {tenant_id} starts at revision {first} (older ones were pruned)"
        )
    await repo.reset()
    revision = 0
    while batch := await repo.changes_after(revision):
        for revision, raw in batch:
            env = Envelope.model_validate_json(raw)
            for op in domain.effects(env.event(), env.aggregate_id, revision) or []:
                await repo.apply_op(op)
    await repo.set_head(revision)
    return revision
