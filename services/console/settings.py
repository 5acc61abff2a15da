"""Console settings (environment variables prefixed ``MAILROOM_CONSOLE_``).

The console owns no data: it needs to know where the other services' APIs are, how to keep
the signed-in user's token (a cookie), and — in production — the OIDC provider to sign in with.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("registry", "authz", "sync", "sender", "audit")


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILROOM_CONSOLE_", extra="ignore")

    api_url: str | None = None
    """Base URL of every service's API (``http://mailroom:8080``). Unset: this host's own
    HTTP server (the embedded stack serves every API and the console on one port)."""
    registry_url: str | None = None
    authz_url: str | None = None
    sync_url: str | None = None
    sender_url: str | None = None
    audit_url: str | None = None
    """One service's base URL when the services run apart (Kubernetes); wins over api_url."""
    timeout_s: float = 30.0
    """Per call to a service's API (connection tests may take several seconds)."""
    connection_test_timeout_s: float = 8.0
    """Per step of a connection test started from the console."""
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    """``auto``: Secure cookies when the request came over https (or X-Forwarded-Proto)."""
    session_max_age_s: int = 12 * 3600
    status_poll_s: int = Field(5, ge=1, le=300)
    """How often the account library refreshes the status column."""
    page_size: int = Field(50, ge=1, le=200)
    import_max_bytes: int = 10 * 1024 * 1024
    """Largest CSV the console passes to the registry (the registry has its own limit)."""
    demo_sign_in: bool = True
    """Offer pasting a token (the embedded stack's demo token) on the sign-in page."""

    # --- OIDC (authorization code with PKCE) ------------------------------------------------
    oidc_authorize_url: str | None = None
    oidc_token_url: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_scopes: str = "openid profile email"
    oidc_redirect_url: str | None = None
    """``https://console.example.com/console/auth/callback``; unset: derived from the request."""
    oidc_token_field: Literal["access_token", "id_token"] = "access_token"  # noqa: S105
    """Which token of the provider's answer the services accept as a bearer (its audience
    must be ``MAILROOM_OIDC_AUDIENCE``)."""

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_authorize_url and self.oidc_token_url and self.oidc_client_id)

    def oidc_missing(self) -> list[str]:
        names = {
            "MAILROOM_CONSOLE_OIDC_AUTHORIZE_URL": self.oidc_authorize_url,
            "MAILROOM_CONSOLE_OIDC_TOKEN_URL": self.oidc_token_url,
            "MAILROOM_CONSOLE_OIDC_CLIENT_ID": self.oidc_client_id,
        }
        return [name for name, value in names.items() if not value]

    def base_url(self, service: str, fallback: str) -> str:
        specific = getattr(self, f"{service}_url", None)
        return str(specific or self.api_url or fallback).rstrip("/")
