"""Settings shared by every service (environment variables prefixed ``MAILROOM_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILROOM_", extra="ignore")

    nats_url: str | None = None
    """NATS server; unset in the embedded stack, which then starts its own."""
    data_dir: Path = Path(".mailroom")
    database_url: str | None = None
    """Database URL for every service; ``{service}`` in it is replaced by the service name.
    A per-service ``MAILROOM_<SERVICE>_DATABASE_URL`` wins. Default: SQLite in ``data_dir``."""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    stream_replicas: int = 1
    consumer_batch: int = 256
    consumer_max_deliver: int = 5
    consumer_backoff_s: list[float] = Field(default_factory=lambda: [0.2, 1.0, 5.0, 15.0])
    relay_batch: int = 512
    authz_mode: Literal["service", "local"] = "service"
    """``service``: every service asks the authz service (grants, departments, revocations).
    ``local``: owner-or-admin rules inside each service, for a service tested on its own."""
    log_level: str = "INFO"
    gil_switch_interval_s: float = 0.001
    gc_gen0_threshold: int = 20_000
    """Allocations between young garbage collections (0 keeps Python's default; host.py)."""
    otel_enabled: bool = False

    def database_url_for(self, service: str) -> str:
        specific = os.environ.get(f"MAILROOM_{service.upper()}_DATABASE_URL")
        if specific:
            return specific
        if self.database_url:
            return self.database_url.replace("{service}", service)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    # --- authentication -------------------------------------------------------------------
    auth_key_file: Path | None = None
    """Ed25519 key that signs local tokens (default: ``data_dir/auth_ed25519.pem``)."""
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    """OIDC is on when issuer, audience and JWKS URL are set (all three); libs/common/oidc.py
    documents the claim mapping and the key cache below."""
    oidc_tenant_claim: str = "mailroom_tenant"
    oidc_role_claim: str = "mailroom_role"
    oidc_subject_claim: str = "sub"
    oidc_tenant: str | None = None
    """The one tenant this provider serves (tokens naming another: 403 ``wrong_tenant``)."""
    oidc_role_map: dict[str, str] = Field(default_factory=dict)
    oidc_default_role: str = "employee"
    oidc_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
    )
    oidc_leeway_s: float = 30.0
    oidc_jwks_ttl_s: float = 300.0
    oidc_jwks_refresh_min_s: float = 30.0
    oidc_jwks_max_stale_s: float = 24 * 3600.0
    oidc_jwks_timeout_s: float = 3.0

    def auth_key_path(self) -> Path:
        return self.auth_key_file or self.data_dir / "auth_ed25519.pem"
