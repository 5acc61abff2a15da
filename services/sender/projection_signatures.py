"""Signatures as the sender needs them, from registry events (SignatureSet / SignatureRemoved
on the account, PersonalSignatureSet / PersonalSignatureRemoved on the employee): the sanitised
HTML and derived text, placeholders still in them (filled per send, ``signatures.py``)."""

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
from services.sender.tables import personal_signatures, signatures


async def apply_signature(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    s, p = signatures, personal_signatures
    on_mailbox = (s.c.tenant_id == env.tenant_id, s.c.mailbox_id == env.aggregate_id)
    on_employee = (p.c.tenant_id == env.tenant_id, p.c.employee_id == env.aggregate_id)
    match event:
        case SignatureSet() | SignatureRemoved():
            await conn.execute(delete(s).where(*on_mailbox, s.c.name == event.name))
            if isinstance(event, SignatureSet):
                await conn.execute(
                    insert(s).values(
                        tenant_id=env.tenant_id,
                        mailbox_id=env.aggregate_id,
                        name=event.name,
                        html=event.html,
                        text=event.text,
                    )
                )
        case AccountDeleted():
            await conn.execute(delete(s).where(*on_mailbox))
        case PersonalSignatureSet() | PersonalSignatureRemoved():
            await conn.execute(delete(p).where(*on_employee))
            if isinstance(event, PersonalSignatureSet):
                await conn.execute(
                    insert(p).values(
                        tenant_id=env.tenant_id,
                        employee_id=env.aggregate_id,
                        html=event.html,
                        text=event.text,
                    )
                )


async def reset_signatures(conn: AsyncConnection) -> None:
    await conn.execute(delete(signatures))
    await conn.execute(delete(personal_signatures))
