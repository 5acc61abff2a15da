"""The registry's read tables, applied in the write transaction (``Database(projector=...)``).

Accounts, employees and departments are rebuilt from events alone; a deleted account's row is
removed (its history stays in the event store and the audit trail).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.base import Event
from libs.common.events.envelope import Envelope
from libs.common.events.registry import (
    AccountAdded,
    AccountDeleted,
    AccountDisabled,
    AccountReactivated,
    AccountUpdated,
    CredentialAccessed,
    CredentialRotated,
    EmployeeAdded,
    EmployeeOffboarded,
    EmployeeReinstated,
    EmployeeUpdated,
    MailboxHandedOver,
)
from services.registry.domain_employees import department_key
from services.registry.tables import accounts, departments, employees
from services.registry.validation import address_key


class RegistryProjector:
    """Keeps ``accounts``, ``employees`` and ``departments`` in step with the events."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        for env in events:
            if env.service != "registry":
                continue
            event = env.event()
            if env.aggregate == "account":
                await _account(conn, env, event)
            elif env.aggregate == "employee":
                await _employee(conn, env, event)


async def _account(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    t = accounts
    where = (t.c.tenant_id == env.tenant_id, t.c.account_id == env.aggregate_id)
    values: dict[str, Any] = {"version": env.aggregate_version, "updated_at": env.time}
    match event:
        case AccountAdded():
            cred = event.credential
            await conn.execute(
                insert(t).values(
                    account_id=env.aggregate_id,
                    tenant_id=env.tenant_id,
                    address=event.address,
                    address_key=address_key(event.address),
                    display_name=event.settings.display_name,
                    protocol=event.protocol,
                    status="active",
                    ownership=event.ownership,
                    owner_id=event.owner_id,
                    preset_id=event.preset_id,
                    settings=event.settings.model_dump_json(),
                    has_credential=cred is not None,
                    credential_blob_id=cred.blob_id if cred else None,
                    credential_field=cred.field if cred else None,
                    credential_version=cred.version if cred else None,
                    kek_version=cred.kek_version if cred else None,
                    created_at=env.time,
                    **values,
                )
            )
            return
        case AccountDeleted():
            await conn.execute(delete(t).where(*where))
            return
        case AccountUpdated():
            values.update(
                settings=event.settings.model_dump_json(),
                display_name=event.settings.display_name,
                owner_id=event.owner_id,
                ownership=event.ownership,
            )
        case AccountDisabled():
            values["status"] = "disabled"
        case AccountReactivated():
            values["status"] = "active"
        case CredentialRotated():
            cred = event.credential
            values.update(
                has_credential=True,
                credential_blob_id=cred.blob_id,
                credential_field=cred.field,
                credential_version=cred.version,
                kek_version=cred.kek_version,
            )
        case CredentialAccessed():
            values["last_leased_at"] = env.time
            del values["updated_at"]
        case MailboxHandedOver():
            values["owner_id"] = event.to_owner_id
    await conn.execute(update(t).where(*where).values(**values))


async def _employee(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    t = employees
    where = (t.c.tenant_id == env.tenant_id, t.c.employee_id == env.aggregate_id)
    values: dict[str, Any] = {"version": env.aggregate_version, "updated_at": env.time}
    before = (await conn.execute(select(t.c.department_key).where(*where))).scalar()
    match event:
        case EmployeeAdded() | EmployeeUpdated():
            values.update(
                name=event.name,
                email=event.email,
                email_key=address_key(event.email),
                title=event.title,
                department=event.department,
                department_key=department_key(event.department) if event.department else None,
            )
            if isinstance(event, EmployeeAdded):
                await conn.execute(
                    insert(t).values(
                        employee_id=env.aggregate_id,
                        tenant_id=env.tenant_id,
                        status="active",
                        created_at=env.time,
                        **values,
                    )
                )
                await _departments(conn, env.tenant_id, None, event.department)
                return
            await conn.execute(update(t).where(*where).values(**values))
            await _departments(conn, env.tenant_id, before, event.department)
            return
        case EmployeeOffboarded():
            values["status"] = "offboarded"
        case EmployeeReinstated():
            values["status"] = "active"
    await conn.execute(update(t).where(*where).values(**values))


async def _departments(
    conn: AsyncConnection, tenant_id: str, old_key: str | None, new_name: str | None
) -> None:
    """Recount the departments an employee left and joined; drop the empty ones."""
    keys = {k for k in (old_key, department_key(new_name) if new_name else None) if k}
    d, e = departments, employees
    for key in keys:
        n = int(
            (
                await conn.execute(
                    select(func.count())
                    .select_from(e)
                    .where(e.c.tenant_id == tenant_id, e.c.department_key == key)
                )
            ).scalar()
            or 0
        )
        where = (d.c.tenant_id == tenant_id, d.c.key == key)
        exists = (await conn.execute(select(d.c.key).where(*where))).first() is not None
        if n == 0:
            await conn.execute(delete(d).where(*where))
        elif exists:  # the first spelling of a department's name stays
            await conn.execute(update(d).where(*where).values(member_count=n))
        else:
            await conn.execute(
                insert(d).values(tenant_id=tenant_id, key=key, name=new_name or key, member_count=n)
            )
