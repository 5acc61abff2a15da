"""The registry's signature read tables, kept by :class:`projection.RegistryProjector` in the
write transaction: a row per mailbox signature (default and alternates) and per personal
signature. A deleted account's signatures go with its read row (history stays in the events).
"""

from __future__ import annotations

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.base import Event
from libs.common.events.envelope import Envelope
from libs.common.events.registry import (
    AccountDeleted,
    PersonalSignatureRemoved,
    PersonalSignatureSet,
    SignatureRemoved,
    SignatureSet,
)
from services.registry.tables import personal_signatures, signatures


async def apply_signature(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    s, p = signatures, personal_signatures
    on_account = (s.c.tenant_id == env.tenant_id, s.c.account_id == env.aggregate_id)
    on_employee = (p.c.tenant_id == env.tenant_id, p.c.employee_id == env.aggregate_id)
    stamp = {"updated_at": env.time, "updated_by": env.actor}
    match event:
        case SignatureSet() | SignatureRemoved():
            await conn.execute(delete(s).where(*on_account, s.c.name == event.name))
            if isinstance(event, SignatureSet):
                await conn.execute(
                    insert(s).values(
                        tenant_id=env.tenant_id,
                        account_id=env.aggregate_id,
                        name=event.name,
                        html=event.html,
                        text=event.text,
                        **stamp,
                    )
                )
        case AccountDeleted():
            await conn.execute(delete(s).where(*on_account))
        case PersonalSignatureSet() | PersonalSignatureRemoved():
            await conn.execute(delete(p).where(*on_employee))
            if isinstance(event, PersonalSignatureSet):
                await conn.execute(
                    insert(p).values(
                        tenant_id=env.tenant_id,
                        employee_id=env.aggregate_id,
                        html=event.html,
                        text=event.text,
                        **stamp,
                    )
                )
