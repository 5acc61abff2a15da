"""Mailboxes and employees as the sender needs them, from registry events.

Consumed by a durable consumer (``mailroom.*.registry.>``), exactly once per event: the
outgoing server, send-as identity, auto-BCC, daily limit and status of every account, and
employees' names (for ``From`` fallbacks and ``Sender`` headers). Deleted accounts stay as
``deleted`` rows so a send is refused with a clear 409 rather than a 404.

Offboarding: EmployeeOffboarded names the leaver's mailboxes; the personal ones among them get
``sending_stopped_by`` = the leaver (sends refused, 409 ``mailbox_sending_stopped``). It is lifted
when the leaver is reinstated, or when the mailbox moves to someone else (MailboxHandedOver, or
an AccountUpdated that changes the owner or makes it shared). Signatures and the employees'
titles and departments feed ``signatures.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, or_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import Projection
from libs.common.events.base import Event
from libs.common.events.envelope import Envelope
from libs.common.events.registry import (
    AccountAdded,
    AccountDeleted,
    AccountDisabled,
    AccountReactivated,
    AccountUpdated,
    EmployeeAdded,
    EmployeeOffboarded,
    EmployeeReinstated,
    EmployeeUpdated,
    MailboxHandedOver,
)
from libs.common.subjects import PREFIX
from services.sender.projection_signatures import apply_signature, reset_signatures
from services.sender.tables import employees, mailboxes

DURABLE = "sender-registry"
REGISTRY_FILTER = f"{PREFIX}.*.registry.>"


async def apply(conn: AsyncConnection, events: Sequence[Envelope]) -> None:
    for env in events:
        event = env.event()
        if env.aggregate == "account":
            await _account(conn, env, event)
        elif env.aggregate == "employee":
            await _employee(conn, env, event)
        await apply_signature(conn, env, event)


async def _account(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    t = mailboxes
    key = (t.c.tenant_id == env.tenant_id, t.c.mailbox_id == env.aggregate_id)
    values: dict[str, Any] = {"version": env.aggregate_version}
    match event:
        case AccountAdded():
            await conn.execute(delete(t).where(*key))
            await conn.execute(
                insert(t).values(
                    tenant_id=env.tenant_id,
                    mailbox_id=env.aggregate_id,
                    address=event.address,
                    protocol=event.protocol,
                    owner_id=event.owner_id,
                    status="active",
                    settings=event.settings.model_dump_json(),
                    ownership=event.ownership,
                    sending_stopped_by=None,
                    **values,
                )
            )
            return
        case AccountUpdated():
            values.update(
                settings=event.settings.model_dump_json(),
                owner_id=event.owner_id,
                ownership=event.ownership,
            )
        case AccountDisabled():
            values["status"] = "disabled"
        case AccountReactivated():
            values["status"] = "active"
        case AccountDeleted():
            values["status"] = "deleted"
        case MailboxHandedOver():
            values["owner_id"] = event.to_owner_id
        case _:
            return
    await conn.execute(update(t).where(*key).values(**values))
    if isinstance(event, AccountUpdated | MailboxHandedOver):
        await _lift_when_moved(conn, env)


async def _lift_when_moved(conn: AsyncConnection, env: Envelope) -> None:
    """A stopped mailbox that is no longer the leaver's personal one sends again."""
    t = mailboxes
    await conn.execute(
        update(t)
        .where(
            t.c.tenant_id == env.tenant_id,
            t.c.mailbox_id == env.aggregate_id,
            t.c.sending_stopped_by.is_not(None),
            or_(
                t.c.ownership != "personal",
                t.c.owner_id.is_(None),
                t.c.owner_id != t.c.sending_stopped_by,
            ),
        )
        .values(sending_stopped_by=None)
    )


async def _stop(conn: AsyncConnection, env: Envelope, event: EmployeeOffboarded) -> None:
    """The leaver's personal mailboxes (named by the event, still theirs) stop sending."""
    t = mailboxes
    if event.mailbox_ids:
        await conn.execute(
            update(t)
            .where(
                t.c.tenant_id == env.tenant_id,
                t.c.mailbox_id.in_(event.mailbox_ids),
                t.c.ownership == "personal",
                t.c.owner_id == env.aggregate_id,
            )
            .values(sending_stopped_by=env.aggregate_id)
        )


async def _resume(conn: AsyncConnection, env: Envelope) -> None:
    t = mailboxes
    await conn.execute(
        update(t)
        .where(t.c.tenant_id == env.tenant_id, t.c.sending_stopped_by == env.aggregate_id)
        .values(sending_stopped_by=None)
    )


async def _employee(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    t = employees
    key = (t.c.tenant_id == env.tenant_id, t.c.employee_id == env.aggregate_id)
    match event:
        case EmployeeUpdated():
            done = await conn.execute(
                update(t)
                .where(*key)
                .values(
                    name=event.name,
                    email=event.email,
                    title=event.title,
                    department=event.department,
                )
            )
            if done.rowcount == 0:
                await conn.execute(
                    insert(t).values(
                        tenant_id=env.tenant_id,
                        employee_id=env.aggregate_id,
                        name=event.name,
                        email=event.email,
                        offboarded=False,
                        title=event.title,
                        department=event.department,
                    )
                )
        case EmployeeAdded():
            await conn.execute(delete(t).where(*key))
            await conn.execute(
                insert(t).values(
                    tenant_id=env.tenant_id,
                    employee_id=env.aggregate_id,
                    name=event.name,
                    email=event.email,
                    offboarded=False,
                    title=event.title,
                    department=event.department,
                )
            )
        case EmployeeOffboarded():
            await conn.execute(update(t).where(*key).values(offboarded=True))
            await _stop(conn, env, event)
        case EmployeeReinstated():
            await conn.execute(update(t).where(*key).values(offboarded=False))
            await _resume(conn, env)


async def reset(conn: AsyncConnection) -> None:
    await conn.execute(delete(mailboxes))
    await conn.execute(delete(employees))
    await reset_signatures(conn)


def registry_projection() -> Projection:
    return Projection(DURABLE, REGISTRY_FILTER, apply, reset=reset)
