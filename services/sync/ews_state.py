"""The queries of EWS watching, each scoped to one tenant: the folder ids and SyncFolderItems
sync states per account and folder (``sync_ews_folders``), and the EWS items sync knows
(``sync_messages`` rows with UIDVALIDITY 0 whose ``uidl`` is the item key)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.sync.models import utc
from services.sync.tables import ews_folders, messages

MAX_KEY = 255


def item_key(item_id: str) -> str:
    """The dedup key of an EWS item: its id, or a digest of an id too long for the column."""
    if len(item_id) <= MAX_KEY:
        return item_id
    return "sha256:" + hashlib.sha256(item_id.encode()).hexdigest()


@dataclass(frozen=True)
class EwsFolder:
    folder: str
    folder_id: str | None
    sync_state: str | None
    baseline_before: datetime | None = None
    """While a sync from scratch runs: items received before this are recorded as known
    without announcing them (mail that was there before the account was watched)."""


class EwsStateRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    def _acc(self, account_id: str) -> Any:
        return and_(
            ews_folders.c.tenant_id == self.tenant_id, ews_folders.c.account_id == account_id
        )

    async def folders(self, account_id: str) -> dict[str, EwsFolder]:
        q = select(ews_folders).where(self._acc(account_id))
        return {
            r.folder: EwsFolder(r.folder, r.folder_id, r.sync_state, utc(r.baseline_before))
            for r in await self.conn.execute(q)
        }

    async def save(self, account_id: str, states: Sequence[EwsFolder], now: datetime) -> None:
        for s in states:
            key = and_(self._acc(account_id), ews_folders.c.folder == s.folder)
            values = {
                "folder_id": s.folder_id,
                "sync_state": s.sync_state,
                "baseline_before": s.baseline_before,
                "updated_at": now,
            }
            if not (await self.conn.execute(update(ews_folders).where(key), values)).rowcount:
                await self.conn.execute(
                    insert(ews_folders).values(
                        tenant_id=self.tenant_id, account_id=account_id, folder=s.folder, **values
                    )
                )

    # --- known items ------------------------------------------------------------------------
    def _items(self, account_id: str, folder: str) -> Any:
        return and_(
            messages.c.tenant_id == self.tenant_id,
            messages.c.account_id == account_id,
            messages.c.folder == folder,
            messages.c.uidvalidity == 0,
        )

    async def known(self, account_id: str, folder: str, keys: Sequence[str]) -> dict[str, int]:
        """Which of ``keys`` sync has recorded in ``folder``: key -> sync's uid."""
        found: dict[str, int] = {}
        for i in range(0, len(keys), 500):
            q = select(messages.c.uidl, messages.c.uid).where(
                self._items(account_id, folder),
                messages.c.uidl.in_(list(keys[i : i + 500])),
            )
            found.update({str(r.uidl): int(r.uid) for r in await self.conn.execute(q)})
        return found
