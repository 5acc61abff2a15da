"""The registry's read tables, applied in the write transaction (``Database(projector=...)``).

Accounts, employees, departments and the organisation's settings are rebuilt from events
alone; a deleted account's row is removed (its history stays in the event store and the
audit trail).
"""

from __future__ import annotations

import json
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
    OrgMailSettingsChanged,
)
from services.registry.domain_employees import department_key
from services.registry.projection_signatures import apply_signature
from services.registry.tables import accounts, departments, employees, org_settings
from services.registry.validation import address_key

#: Current versions of the events a bulk import writes many of: inserted from their data as is.
_BULK = {AccountAdded.ce_type(): "account", EmployeeAdded.ce_type(): "employee"}


class RegistryProjector:
    """Keeps ``accounts``, ``employees``, ``departments`` and ``org_settings`` in step with the
    events. Runs of AccountAdded or EmployeeAdded (a bulk import) are inserted with one
    statement each."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        run: list[Envelope] = []
        kind: str | None = None
        for env in events:
            if env.service != "registry":
                continue
            bulk = _BULK.get(env.type)
            if run and bulk != kind:
                await _flush(conn, kind, run)
                run = []
            kind = bulk
            if bulk is not None:
                run.append(env)
                continue
            event = env.event()
            if isinstance(event, AccountAdded | EmployeeAdded):  # an older version, upcast
                row = _account_row if isinstance(event, AccountAdded) else _employee_row
                table = accounts if isinstance(event, AccountAdded) else employees
                await conn.execute(insert(table).values(**row(env, event.model_dump(mode="json"))))
                if isinstance(event, EmployeeAdded) and event.department:
                    await _departments(conn, env.tenant_id, None, event.department)
            elif env.aggregate == "account":
                await _account(conn, env, event)
                await apply_signature(conn, env, event)
            elif env.aggregate == "employee":
                await _employee(conn, env, event)
                await apply_signature(conn, env, event)
            elif env.aggregate == "org":
                await _org(conn, env, event)
        if run:
            await _flush(conn, kind, run)


async def _flush(conn: AsyncConnection, kind: str | None, run: list[Envelope]) -> None:
    if kind == "account":
        await conn.execute(insert(accounts), [_account_row(env, env.data) for env in run])
        return
    rows = [_employee_row(env, env.data) for env in run]
    await conn.execute(insert(employees), rows)
    names: dict[tuple[str, str], str] = {}
    for row in rows:
        if row["department_key"]:
            names.setdefault((row["tenant_id"], row["department_key"]), row["department"])
    for (tenant_id, key), name in names.items():
        await _recount(conn, tenant_id, key, name)


def _account_row(env: Envelope, d: dict[str, Any]) -> dict[str, Any]:
    """The read row of an AccountAdded, from its data (JSON mode)."""
    cred = d.get("credential")
    settings = d["settings"]
    return {
        "account_id": env.aggregate_id,
        "tenant_id": env.tenant_id,
        "address": d["address"],
        "address_key": address_key(d["address"]),
        "display_name": settings.get("display_name", ""),
        "protocol": d["protocol"],
        "status": "active",
        "ownership": d.get("ownership", "personal"),
        "owner_id": d.get("owner_id"),
        "preset_id": d.get("preset_id"),
        "settings": json.dumps(settings, separators=(",", ":"), ensure_ascii=False),
        "has_credential": cred is not None,
        "credential_blob_id": cred["blob_id"] if cred else None,
        "credential_field": cred.get("field", "password") if cred else None,
        "credential_version": cred["version"] if cred else None,
        "kek_version": cred["kek_version"] if cred else None,
        "created_at": env.time,
        "updated_at": env.time,
        "last_leased_at": None,
        "version": env.aggregate_version,
    }


def _employee_row(env: Envelope, d: dict[str, Any]) -> dict[str, Any]:
    """The read row of an EmployeeAdded, from its data (JSON mode)."""
    department = d.get("department")
    return {
        "employee_id": env.aggregate_id,
        "tenant_id": env.tenant_id,
        "status": "active",
        "created_at": env.time,
        "updated_at": env.time,
        "version": env.aggregate_version,
        "name": d["name"],
        "email": d["email"],
        "email_key": address_key(d["email"]),
        "title": d.get("title", ""),
        "department": department,
        "department_key": department_key(department) if department else None,
    }


async def _org(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    if not isinstance(event, OrgMailSettingsChanged):
        return
    t = org_settings
    values = {
        "settings": event.settings.model_dump_json(),
        "version": env.aggregate_version,
        "updated_at": env.time,
    }
    done = await conn.execute(update(t).where(t.c.tenant_id == env.tenant_id).values(**values))
    if not done.rowcount:
        await conn.execute(insert(t).values(tenant_id=env.tenant_id, **values))


async def _account(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    t = accounts
    where = (t.c.tenant_id == env.tenant_id, t.c.account_id == env.aggregate_id)
    values: dict[str, Any] = {"version": env.aggregate_version, "updated_at": env.time}
    match event:
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
        case EmployeeUpdated():
            values.update(
                name=event.name,
                email=event.email,
                email_key=address_key(event.email),
                title=event.title,
                department=event.department,
                department_key=department_key(event.department) if event.department else None,
            )
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
    new_key = department_key(new_name) if new_name else None
    for key in {k for k in (old_key, new_key) if k}:
        await _recount(conn, tenant_id, key, new_name if key == new_key and new_name else key)


async def _recount(conn: AsyncConnection, tenant_id: str, key: str, name: str) -> None:
    """Recount one department; drop it when empty. The first spelling of its name stays."""
    d, e = departments, employees
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
    elif exists:
        await conn.execute(update(d).where(*where).values(member_count=n))
    else:
        await conn.execute(
            insert(d).values(tenant_id=tenant_id, key=key, name=name, member_count=n)
        )
