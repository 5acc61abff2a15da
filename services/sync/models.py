"""Rows of the sync store as values: accounts, folder states, status rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from libs.common.events.registry import AccountSettings
from services.sync.domain import Health


@dataclass(frozen=True)
class Account:
    tenant_id: str
    account_id: str
    address: str
    protocol: str
    settings: AccountSettings
    enabled: bool
    credential_version: int
    added_at: datetime

    @property
    def key(self) -> tuple[str, str]:
        return self.tenant_id, self.account_id

    @property
    def incoming_protocol(self) -> str | None:
        return self.settings.incoming.protocol if self.settings.incoming else None

    @property
    def watchable(self) -> bool:
        return self.enabled and self.incoming_protocol in ("imap", "pop3", "ews")


@dataclass
class FolderState:
    folder: str
    uidvalidity: int
    uidnext: int | None
    last_uid: int
    exists: int
    known: int
    last_synced_at: datetime


@dataclass(frozen=True)
class StatusRow:
    tenant_id: str
    account_id: str
    address: str | None
    protocol: str | None
    health: Health
    next_sync_at: datetime | None
    last_mail_at: datetime | None
    silence_reported: bool
    message_count: int | None
    quota_used_kb: int | None
    quota_limit_kb: int | None
    idle: bool


def utc(value: datetime | None) -> datetime | None:
    """Datetimes as stored are UTC; SQLite hands them back naive."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def account_of(r: Any) -> Account:
    return Account(
        r.tenant_id,
        r.account_id,
        r.address,
        r.protocol,
        AccountSettings.model_validate_json(r.settings),
        bool(r.enabled),
        int(r.credential_version or 0),
        as_utc(r.added_at),
    )


def health_of(r: Any) -> Health:
    return Health(
        state=r.state,
        since=as_utc(r.since),
        failures=int(r.failures or 0),
        failure_class=r.failure_class,
        last_error=r.last_error,
        down_since=utc(r.down_since),
        last_success_at=utc(r.last_success_at),
    )


def status_of(r: Any) -> StatusRow:
    return StatusRow(
        r.tenant_id,
        r.account_id,
        r.address,
        r.protocol,
        health_of(r),
        utc(r.next_sync_at),
        utc(r.last_mail_at),
        bool(r.silence_reported),
        r.message_count,
        r.quota_used_kb,
        r.quota_limit_kb,
        bool(r.idle),
    )


def health_values(h: Health) -> dict[str, Any]:
    return {
        "state": h.state,
        "since": h.since,
        "failures": h.failures,
        "failure_class": h.failure_class,
        "last_error": h.last_error,
        "down_since": h.down_since,
        "last_success_at": h.last_success_at,
    }
