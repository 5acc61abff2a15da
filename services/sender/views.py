"""Mailboxes as the request path reads them, cached briefly.

A send reads its mailbox (identity, server, limit) and the owner's name on every request; the
cache keeps them for ``mailbox_cache_s`` and drops an entry as soon as this replica's consumer
applies a registry event about it (``forget``). Whether the mailbox may send at all is checked
again, exactly, in the transaction that records the send (``commit.intent_writer``), so a stale
entry can at most delay an identity change by ``mailbox_cache_s`` on another replica.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from libs.common.events.envelope import Envelope
from libs.common.store.database import Database
from services.sender import domain
from services.sender.repository import SenderRepository

View = tuple[domain.Mailbox, str | None]  # the mailbox and its owner's name
MAX_ENTRIES = 10_000


class MailboxViews:
    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[float, View]] = {}

    async def get(self, tenant_id: str, mailbox_id: str) -> View | None:
        key = (tenant_id, mailbox_id)
        hit = self._entries.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        async with self.db.read() as conn:
            repo = SenderRepository(conn, tenant_id)
            mailbox = await repo.mailbox(mailbox_id)
            if mailbox is None:
                return None
            owner = await repo.employee(mailbox.owner_id) if mailbox.owner_id else None
        view: View = (mailbox, owner[0].name if owner else None)
        if self.ttl_s > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl_s, view)
        return view

    def forget(self, events: Sequence[Envelope]) -> None:
        """Registry events were applied: drop what they may have changed."""
        for env in events:
            if env.aggregate == "account":
                self._entries.pop((env.tenant_id, env.aggregate_id), None)
            elif env.aggregate == "employee":  # an owner's name: drop the tenant's entries
                for key in [k for k in self._entries if k[0] == env.tenant_id]:
                    del self._entries[key]
