"""OAuth2 clients per tenant: which providers a tenant may connect mailboxes with.

The operator mounts them like the KEKs — ``MAILROOM_OAUTH_CLIENTS`` (inline JSON) or
``MAILROOM_OAUTH_CLIENTS_FILE`` (a path, e.g. a Kubernetes secret; re-read when it changes).
Top-level keys are tenant ids (``"*"``: every tenant; a tenant's own entry wins per provider
name); each maps provider names (the ``{provider}`` of ``/v1/oauth/{provider}/start``) to a
client::

    {"acme": {"gmail": {"client_id": "…apps.googleusercontent.com", "client_secret": "…"},
              "o365":  {"client_id": "…", "client_secret": "…", "ms_tenant": "contoso.com"},
              "corp":  {"kind": "oidc", "issuer": "https://sso.corp.example/realms/mail",
                        "client_id": "mailroom", "client_secret": "…",
                        "scopes": ["openid", "email", "offline_access"]}}}

``kind`` defaults to the provider name when that is ``gmail`` or ``o365``, else ``oidc``. The
Gmail and Office 365 presets know their endpoints and mail scopes; an ``oidc`` provider names
its ``issuer`` (endpoints discovered from ``/.well-known/openid-configuration``) or its
``authorize_url`` and ``token_url``. Client secrets are ``SecretStr`` and never leave the
registry.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from libs.common.errors import NotFound
from libs.common.logs import remember_secret

ENV_OAUTH_CLIENTS = "MAILROOM_OAUTH_CLIENTS"
ENV_OAUTH_CLIENTS_FILE = "MAILROOM_OAUTH_CLIENTS_FILE"
ANY_TENANT = "*"
# Also a pydantic (Rust) pattern, where $ is the very end; Python code uses fullmatch.
PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
ProviderKind = Literal["gmail", "o365", "oidc"]

GMAIL_AUTHORIZE = "https://accounts.google.com/o/oauth2/v2/auth"
GMAIL_TOKEN = "https://oauth2.googleapis.com/token"  # noqa: S105 - an endpoint, not a secret
MS_LOGIN = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/{endpoint}"
PRESET_SCOPES: dict[ProviderKind, list[str]] = {
    "gmail": ["https://mail.google.com/"],
    "o365": [
        "offline_access",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/POP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
    ],
    "oidc": ["openid", "email", "offline_access"],
}
#: Google issues a refresh token only with offline access, and again only with consent.
PRESET_PARAMS: dict[ProviderKind, dict[str, str]] = {
    "gmail": {"access_type": "offline", "prompt": "consent"},
    "o365": {},
    "oidc": {},
}


class OAuthConfigError(ValueError):
    """The mounted OAuth client configuration is unreadable or invalid (no secret in it)."""


class ProviderConfig(BaseModel):
    """One OAuth2 client of a tenant at one provider."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ProviderKind = "oidc"
    client_id: str = Field(min_length=1, max_length=512)
    client_secret: SecretStr | None = None
    """None: a public client (PKCE only)."""
    issuer: str | None = None
    authorize_url: str | None = None
    token_url: str | None = None
    scopes: list[str] | None = None
    ms_tenant: str = Field("common", pattern=r"^[A-Za-z0-9.-]{1,100}$")
    """Office 365: the directory (``common``, ``organizations``, a domain or a tenant id)."""
    client_auth: Literal["client_secret_post", "client_secret_basic"] = "client_secret_post"
    authorize_params: dict[str, str] = Field(default_factory=dict)
    redirect_uri: str | None = None
    """Overrides ``MAILROOM_REGISTRY_OAUTH_REDIRECT_BASE`` for this provider."""

    @model_validator(mode="after")
    def _endpoints(self) -> ProviderConfig:
        for name in ("issuer", "authorize_url", "token_url", "redirect_uri"):
            url = getattr(self, name)
            if url is not None and not url.startswith(("https://", "http://")):
                raise ValueError(f"{name} must be an http(s) URL")
        if self.kind == "oidc" and self.issuer is None:
            if self.authorize_url is None or self.token_url is None:
                raise ValueError("an oidc provider needs issuer, or authorize_url and token_url")
        return self

    @property
    def scope_list(self) -> list[str]:
        return list(self.scopes if self.scopes is not None else PRESET_SCOPES[self.kind])

    @property
    def extra_params(self) -> dict[str, str]:
        return {**PRESET_PARAMS[self.kind], **self.authorize_params}

    def preset_endpoints(self) -> tuple[str | None, str | None]:
        """(authorize, token) URLs known without discovery (explicit ones win)."""
        if self.kind == "gmail":
            preset: tuple[str | None, str | None] = (GMAIL_AUTHORIZE, GMAIL_TOKEN)
        elif self.kind == "o365":
            preset = (
                MS_LOGIN.format(tenant=self.ms_tenant, endpoint="authorize"),
                MS_LOGIN.format(tenant=self.ms_tenant, endpoint="token"),
            )
        else:
            preset = (None, None)
        return self.authorize_url or preset[0], self.token_url or preset[1]


def _provider(name: str, raw: object) -> ProviderConfig:
    if not PROVIDER_NAME.fullmatch(name):
        raise OAuthConfigError(f"provider name {name!r}: use a-z, 0-9, - and _ (at most 40)")
    if not isinstance(raw, dict):
        raise OAuthConfigError(f"provider {name!r}: expected an object")
    doc = dict(raw)
    doc.setdefault("kind", name if name in ("gmail", "o365") else "oidc")
    try:
        cfg = ProviderConfig.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "value"
        raise OAuthConfigError(f"provider {name!r}: {where}: {err['msg']}") from None
    if cfg.client_secret is not None:
        remember_secret(cfg.client_secret.get_secret_value())
    return cfg


def parse_clients(text: str) -> dict[str, dict[str, ProviderConfig]]:
    try:
        doc = json.loads(text)
    except ValueError:
        raise OAuthConfigError("the OAuth client configuration is not valid JSON") from None
    if not isinstance(doc, dict):
        raise OAuthConfigError("the OAuth client configuration must be an object of tenants")
    out: dict[str, dict[str, ProviderConfig]] = {}
    for tenant, providers in doc.items():
        if not isinstance(providers, dict):
            raise OAuthConfigError(f"tenant {tenant!r}: expected an object of providers")
        out[str(tenant)] = {str(n): _provider(str(n), p) for n, p in providers.items()}
    return out


class OAuthClients:
    """The configured clients; a mounted file is re-read when its modification time changes."""

    def __init__(
        self, clients: dict[str, dict[str, ProviderConfig]], path: Path | None = None
    ) -> None:
        self._clients = clients
        self._path = path
        self._mtime = self._stat()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OAuthClients:
        env = os.environ if environ is None else environ
        inline = env.get(ENV_OAUTH_CLIENTS, "").strip()
        path = env.get(ENV_OAUTH_CLIENTS_FILE, "").strip()
        if inline and path:
            raise OAuthConfigError(
                f"both {ENV_OAUTH_CLIENTS} and {ENV_OAUTH_CLIENTS_FILE} are set; set only one"
            )
        if path:
            return cls(_read(Path(path)), Path(path))
        return cls(parse_clients(inline) if inline else {})

    def _stat(self) -> float | None:
        if self._path is None:
            return None
        try:
            return self._path.stat().st_mtime
        except OSError:
            return None

    def _refresh(self) -> None:
        mtime = self._stat()
        if self._path is not None and mtime is not None and mtime != self._mtime:
            self._clients, self._mtime = _read(self._path), mtime

    def providers(self, tenant_id: str) -> dict[str, ProviderConfig]:
        self._refresh()
        return {**self._clients.get(ANY_TENANT, {}), **self._clients.get(tenant_id, {})}

    def get(self, tenant_id: str, name: str) -> ProviderConfig:
        cfg = self.providers(tenant_id).get(name)
        if cfg is None:
            raise NotFound(
                f"no OAuth provider {name!r} is configured for this tenant "
                f"({ENV_OAUTH_CLIENTS} / {ENV_OAUTH_CLIENTS_FILE})",
                code="unknown_oauth_provider",
            )
        return cfg


def _read(path: Path) -> dict[str, dict[str, ProviderConfig]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
        raise OAuthConfigError(f"cannot read {path} ({ENV_OAUTH_CLIENTS_FILE}): {reason}") from None
    return parse_clients(text)
