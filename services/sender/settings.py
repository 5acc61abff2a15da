"""Sender settings (environment variables prefixed ``MAILROOM_SENDER_``)."""

from __future__ import annotations

import socket
import ssl
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SenderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILROOM_SENDER_", extra="ignore")

    ca_file: Path | None = None
    """Extra CA bundle to trust for SMTP/IMAP TLS (e.g. an internal CA); system CAs otherwise."""
    ehlo_name: str = Field(default_factory=socket.gethostname)
    """The name this host gives in EHLO (looked up once, not on every connection)."""
    connect_timeout_s: float = 15.0
    command_timeout_s: float = 60.0
    """Per SMTP command, including the reply to the end of DATA."""
    attempt_deadline_s: float = 240.0
    """Upper bound of one delivery attempt (connect to QUIT). Must stay below ``claim_s``."""
    claim_s: float = 300.0
    """A claimed send whose claimant has not recorded an outcome after this long (it crashed)
    is delivered again by any replica."""
    retry_backoff_s: list[float] = Field(
        default_factory=lambda: [30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0]
    )
    max_attempts: int = Field(8, ge=1)
    poll_s: float = 1.0
    """How often the dispatcher looks for due retries (it is also woken directly)."""
    concurrency: int = Field(32, ge=1)
    """Deliveries the dispatcher runs at once (per replica)."""
    smtp_pool_per_mailbox: int = Field(8, ge=0)
    """Idle authenticated SMTP sessions kept per mailbox for the next sends (0: a new
    connection for every message; ``smtp_pool.py``)."""
    smtp_pool_idle_s: float = 15.0
    """How long such a session may wait idle for the next message."""
    smtp_pool_max_uses: int = Field(100, ge=1)
    """Messages per pooled session before a new connection is opened."""
    max_attachment_bytes: int = 10 * 1024 * 1024
    max_message_bytes: int = 25 * 1024 * 1024
    max_recipients: int = 100
    sent_copy: bool = True
    """Default for accounts with an IMAP incoming server: append a copy to the Sent folder.
    Providers that file sent mail themselves (gmail, office365, exchange) never get one."""
    copy_max_attempts: int = 5
    imap_timeout_s: float = 30.0
    mailbox_cache_s: float = 5.0
    """How long a replica reuses a mailbox it read (its own consumer's updates apply at once;
    whether the mailbox may send is always checked in the transaction that records a send)."""
    keep_s: float = 7 * 24 * 3600.0
    """How long a send (and so its Idempotency-Key) is remembered."""
    permissions: Literal["admin_only", "authz"] | None = None
    """Who may send: authz grants, or tenant admins only. Unset: authz, unless the deployment
    runs without the authz service (``MAILROOM_AUTHZ_MODE=local``)."""

    @cached_property
    def tls_context(self) -> ssl.SSLContext:
        """A verifying client context: system CAs plus ``ca_file`` (hostname checks on)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.ca_file))
        return ctx

    def backoff(self, attempts: int) -> float:
        """Delay before the next try after ``attempts`` failed attempts (1-based)."""
        steps = self.retry_backoff_s or [60.0]
        return steps[min(max(attempts, 1) - 1, len(steps) - 1)]
