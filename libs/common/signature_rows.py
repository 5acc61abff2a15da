"""Signature read rows from registry events, for every service that keeps them (the registry
for its API, the sender to sign mail): one row per mailbox signature (default and alternates)
and one per employee's personal signature. Each service passes its own tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, delete, insert
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


async def apply_signature_event(
    conn: AsyncConnection,
    env: Envelope,
    event: Event,
    *,
    signatures: Table,
    mailbox_column: str,
    personal: Table,
    extra: dict[str, Any] | None = None,
) -> None:
    """Apply one signature event (others are ignored). ``mailbox_column`` names the account
    column of ``signatures``; ``extra`` adds columns to every row written."""
    s, p, more = signatures, personal, extra or {}
    on_mailbox = (s.c.tenant_id == env.tenant_id, s.c[mailbox_column] == env.aggregate_id)
    on_employee = (p.c.tenant_id == env.tenant_id, p.c.employee_id == env.aggregate_id)
    match event:
        case SignatureSet() | SignatureRemoved():
            await conn.execute(delete(s).where(*on_mailbox, s.c.name == event.name))
            if isinstance(event, SignatureSet):
                row = {mailbox_column: env.aggregate_id, "name": event.name}
                await conn.execute(
                    insert(s).values(
                        tenant_id=env.tenant_id, html=event.html, text=event.text, **row, **more
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
                        **more,
                    )
                )
