"""Sync-only settings (environment variables prefixed ``MAILROOM_SYNC_``)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import SecretStr
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
    per_host_logins_total: int | None = None
    """Logins at once against one host over all sync workers: each worker takes its share
    (this / live workers, at least 1; needs ``ownership = kv``). None: no cluster-wide cap."""
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

    # --- several workers (services/sync/ownership.py) ---------------------------------------
    ownership: Literal["kv", "none"] = "kv"
    """``kv``: workers share the accounts through leases in JetStream KV (each account watched
    by one worker); ``none``: this worker watches every account (only ever run one)."""
    lease_ttl_s: float = 15.0
    """A worker's heartbeat, and with it the leases of its accounts, expires after this long
    without renewal: a dead worker's accounts move to the others within about this time."""
    lease_renew_s: float = 3.0
    """Heartbeat and rebalancing period (well below ``lease_ttl_s``)."""
    lease_bucket: str = "mailroom_sync"
    """Prefix of the KV buckets (``<prefix>_workers``, ``<prefix>_accounts``)."""
    worker_id: str | None = None
    """This worker's name in the buckets (default: host name, pid and a random suffix)."""

    # --- alerts (services/sync/alerts_*.py) -------------------------------------------------
    alert_poll_s: float = 5.0
    """How often the alert dispatcher looks for due deliveries and outage timers (it is
    also woken by the alert consumer)."""
    alert_max_attempts: int = 8
    """Delivery attempts before an alert is dead-lettered (kept, listed, retried by hand)."""
    alert_backoff_base_s: float = 10.0
    alert_backoff_max_s: float = 3600.0
    alert_webhook_timeout_s: float = 10.0
    alert_send_timeout_s: float = 30.0
    """How long to wait for the sender's answer to an alert email."""
    alert_webhook_allow_http: bool = False
    """Accept ``http://`` webhook URLs (never in production: the body leaves in clear)."""
    alert_key: SecretStr | None = None
    """Base64 of 32 bytes sealing webhook secrets (AES-256-GCM); every worker needs the same.
    Default: ``alert_key_file``, else ``<data_dir>/sync-alert.key`` (made on first start)."""
    alert_key_file: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.ca_file))
        return ctx
