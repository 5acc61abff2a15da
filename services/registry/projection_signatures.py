"""The registry's signature read tables, kept by :class:`projection.RegistryProjector` in the
write transaction: a row per mailbox signature (default and alternates) and per personal
signature. A deleted account's signatures go with its read row (history stays in the events).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.base import Event
from libs.common.events.envelope import Envelope
from libs.common.signature_rows import apply_signature_event
from services.registry.tables import personal_signatures, signatures


async def apply_signature(conn: AsyncConnection, env: Envelope, event: Event) -> None:
    await apply_signature_event(
        conn,
        env,
        event,
        signatures=signatures,
        mailbox_column="account_id",
        personal=personal_signatures,
        extra={"updated_at": env.time, "updated_by": env.actor},
    )
