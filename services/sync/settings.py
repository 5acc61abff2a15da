"""Sync-only settings (environment variables prefixed ``MAILROOM_SYNC_``)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class SyncSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILROOM_SYNC_", extra="ignore")

    default_interval_s: float = 60.0
    """Polling interval of an account whose settings name none."""
    min_interval_s: float = 5.0
    """Floor for an account's polling interval."""
    max_concurrent_polls: int = 64
    """Polls (connect, check, fetch) running at once in this worker."""
    per_host_logins: int = 8
    """Logins (connect + TLS + authenticate) running at once against one server host."""
    max_connections: int = 800
    """Connections kept open between polls; accounts beyond it log in for each poll."""
    idle_connections: int = 200
    """Of those, how many idle on INBOX (IMAP IDLE) for near-real-time mail."""
    idle_enabled: bool = True
    idle_renew_s: float = 25 * 60
    """IDLE is re-issued at least this often (servers drop it after 30 minutes)."""
    keepalive_s: float = 600.0
    """NOOP on an open, non-idling connection at least this often."""
    connect_timeout_s: float = 15.0
    command_timeout_s: float = 60.0
    fetch_batch: int = 500
    """New messages fetched (and committed) per folder per poll; more follow at once."""
    backoff_base_s: float = 5.0
    backoff_max_s: float = 900.0
    auth_backoff_s: float = 1800.0
    auth_backoff_max_s: float = 6 * 3600.0
    tls_backoff_s: float = 600.0
    tls_backoff_max_s: float = 6 * 3600.0
    silence_alert_s: float | None = None
    """Report ``MailMissingDetected(kind="silence")`` when no mail arrived for this long."""
    startup_spread_s: float = 10.0
    """First polls after a start are spread over this many seconds (at most the interval)."""
    status_flush_s: float = 300.0
    """A poll that finds nothing new writes nothing; the status row's last success and next
    sync are refreshed at least this often (the API shows this worker's live values)."""
    quota_every_s: float = 600.0
    """How often IMAP QUOTA is asked (when the server offers it)."""
    announce_existing: Literal["since_added", "none"] = "since_added"
    """On first sight of a folder: announce messages that arrived after the account was added
    (``since_added``), or only those that arrive later (``none``)."""
    ca_file: Path | None = None
    """Extra CA certificates to trust (PEM), besides the system's (tests, private CAs)."""
    pop3_threads: int = 16
    permissions: Literal["authz", "admin_only"] = "authz"
    """Who may read a mailbox's status besides tenant admins: ask authz, or nobody."""

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.ca_file))
        return ctx
