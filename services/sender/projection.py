"""Mailboxes and employees as the sender needs them, from registry events.

Consumed by a durable consumer (``mailroom.*.registry.>``), exactly once per event: the
outgoing server, send-as identity, auto-BCC, daily limit and status of every account, and
employees' names (for ``From`` fallbacks and ``Sender`` headers). Deleted accounts stay as
``deleted`` rows so a send is refused with a clear 409 rather than a 404.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, update
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
                    **values,
                )
            )
            return
        case AccountUpdated():
            values.update(settings=event.settings.model_dump_json(), owner_id=event.owner_id)
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


async def _employee(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    t = employees
    key = (t.c.tenant_id == env.tenant_id, t.c.employee_id == env.aggregate_id)
    match event:
        case EmployeeUpdated():
            done = await conn.execute(
                update(t).where(*key).values(name=event.name, email=event.email)
            )
            if done.rowcount == 0:
                await conn.execute(
                    insert(t).values(
                        tenant_id=env.tenant_id,
                        employee_id=env.aggregate_id,
                        name=event.name,
                        email=event.email,
                        offboarded=False,
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
                )
            )
        case EmployeeOffboarded():
            await conn.execute(update(t).where(*key).values(offboarded=True))
        case EmployeeReinstated():
            await conn.execute(update(t).where(*key).values(offboarded=False))


async def reset(conn: AsyncConnection) -> None:
    await conn.execute(delete(mailboxes))
    await conn.execute(delete(employees))


def registry_projection() -> Projection:
    return Projection(DURABLE, REGISTRY_FILTER, apply, reset=reset)
