"""Signatures as the sender needs them, from registry events (SignatureSet / SignatureRemoved
on the account, PersonalSignatureSet / PersonalSignatureRemoved on the employee): the sanitised
HTML and derived text, placeholders still in them (filled per send, ``signatures.py``)."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.base import Event
from libs.common.events.envelope import Envelope
from libs.common.signature_rows import apply_signature_event
from services.sender.tables import personal_signatures, signatures


async def apply_signature(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    await apply_signature_event(
        conn,
        env,
        event,
        signatures=signatures,
        mailbox_column="mailbox_id",
        personal=personal_signatures,
        extra=None,
    )


async def reset_signatures(conn: AsyncConnection) -> None:
    await conn.execute(delete(signatures))
    await conn.execute(delete(personal_signatures))
