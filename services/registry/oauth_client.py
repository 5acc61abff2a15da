"""The registry as an OAuth2 client: PKCE, the authorize URL, code exchange and refresh.

Plain HTTP with httpx (form posts to the token endpoint, RFC 6749 section 4.1.3 and 6). No
response body, token or client secret is ever logged or put in an exception message; every
token read is registered with :func:`libs.common.logs.remember_secret`. Endpoints are the
operator's configuration (``oauth_config``), so they are not subject to the SSRF guard.

A connected account's credential is a :class:`TokenDoc` (JSON) sealed in ``credential_blobs``
like any password: the refresh token and the current access token with its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from pydantic import SecretStr

from libs.common.logs import remember_secret
from services.registry.oauth_config import ProviderConfig

DOC_MARKER = "mailroom_oauth2"
_DISCOVERY_TTL_S = 3600.0


class OAuthProviderError(Exception):
    """The provider could not be reached or answered nonsense (retry later)."""


class OAuthGrantError(Exception):
    """The provider refused the grant (``error``: invalid_grant, invalid_client, ...)."""

    def __init__(self, error: str, description: str = "") -> None:
        self.error = error
        self.description = description[:200]
        super().__init__(f"{error}: {self.description}" if self.description else error)


@dataclass(frozen=True, repr=False)
class TokenDoc:
    """The sealed secret of an account connected by OAuth2 (never logged: no repr)."""

    provider: str
    refresh_token: SecretStr
    access_token: SecretStr
    expires_at: float
    """Epoch seconds the access token expires at."""
    obtained_at: float
    scope: str = ""

    def __repr__(self) -> str:
        return f"TokenDoc(provider={self.provider!r}, expires_at={self.expires_at})"

    def secret(self) -> SecretStr:
        return SecretStr(
            json.dumps(
                {
                    DOC_MARKER: 1,
                    "provider": self.provider,
                    "refresh_token": self.refresh_token.get_secret_value(),
                    "access_token": self.access_token.get_secret_value(),
                    "expires_at": self.expires_at,
                    "obtained_at": self.obtained_at,
                    "scope": self.scope,
                }
            )
        )

    @classmethod
    def parse(cls, plain: str) -> TokenDoc | None:
        """The document, or None for any other secret (a password, a bare token)."""
        if not plain.startswith("{") or DOC_MARKER not in plain:
            return None
        try:
            doc = json.loads(plain)
            parsed = cls(
                provider=str(doc["provider"]),
                refresh_token=SecretStr(str(doc["refresh_token"])),
                access_token=SecretStr(str(doc["access_token"])),
                expires_at=float(doc["expires_at"]),
                obtained_at=float(doc["obtained_at"]),
                scope=str(doc.get("scope", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None
        remember_secret(parsed.refresh_token.get_secret_value())
        remember_secret(parsed.access_token.get_secret_value())
        return parsed

    def valid_for(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)


@dataclass(frozen=True)
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-] (RFC 7636: 43-128)
        return cls(verifier, s256(verifier))


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Endpoints:
    authorize: str
    token: str


class OAuthHttp:
    """Talks to providers' authorization servers."""

    def __init__(self, *, timeout_s: float = 10.0, ca_file: Path | None = None) -> None:
        self.timeout_s = timeout_s
        self.ca_file = ca_file
        self._discovered: dict[str, tuple[float, Endpoints]] = {}

    def _client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if self.ca_file is not None:
            verify = ssl.create_default_context(cafile=None)
            verify.load_verify_locations(cafile=str(self.ca_file))
        return httpx.AsyncClient(timeout=self.timeout_s, verify=verify, follow_redirects=False)

    async def endpoints(self, cfg: ProviderConfig) -> Endpoints:
        authorize, token = cfg.preset_endpoints()
        if authorize is not None and token is not None:
            return Endpoints(authorize, token)
        assert cfg.issuer is not None  # ProviderConfig checks: oidc has issuer or both URLs
        hit = self._discovered.get(cfg.issuer)
        if hit is not None and hit[0] > time.monotonic():
            found = hit[1]
        else:
            url = cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await self._get_json(url)
            try:
                found = Endpoints(str(doc["authorization_endpoint"]), str(doc["token_endpoint"]))
            except KeyError:
                raise OAuthProviderError("the discovery document lacks endpoints") from None
            self._discovered[cfg.issuer] = (time.monotonic() + _DISCOVERY_TTL_S, found)
        return Endpoints(authorize or found.authorize, token or found.token)

    async def authorize_url(
        self, cfg: ProviderConfig, *, redirect_uri: str, state: str, pkce: Pkce, login_hint: str
    ) -> str:
        ep = await self.endpoints(cfg)
        params = {
            "response_type": "code",
            "client_id": cfg.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(cfg.scope_list),
            "state": state,
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
            "login_hint": login_hint,
            **cfg.extra_params,
        }
        sep = "&" if "?" in ep.authorize else "?"
        return f"{ep.authorize}{sep}{urlencode(params)}"

    async def exchange_code(
        self, cfg: ProviderConfig, provider: str, *, code: str, redirect_uri: str, verifier: str
    ) -> TokenDoc:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        doc = await self._token_request(cfg, form)
        refresh = doc.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            raise OAuthGrantError(
                "no_refresh_token",
                "the provider issued no refresh token (offline access not granted)",
            )
        return _token_doc(provider, doc, refresh)

    async def refresh(self, cfg: ProviderConfig, current: TokenDoc) -> TokenDoc:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": current.refresh_token.get_secret_value(),
        }
        if cfg.kind == "o365":  # Microsoft's v2 endpoint wants the scopes on every refresh
            form["scope"] = " ".join(cfg.scope_list)
        doc = await self._token_request(cfg, form)
        refresh = doc.get("refresh_token")  # a provider may rotate it, or keep the old one
        keep = refresh if isinstance(refresh, str) and refresh else None
        return _token_doc(
            current.provider, doc, keep or current.refresh_token.get_secret_value(), current.scope
        )

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._client() as client:
                r = await client.get(url, headers={"Accept": "application/json"})
            doc = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            raise OAuthProviderError(f"discovery failed ({type(exc).__name__})") from None
        if not isinstance(doc, dict):
            raise OAuthProviderError(f"discovery answered {r.status_code} without a JSON object")
        return doc

    async def _token_request(self, cfg: ProviderConfig, form: dict[str, str]) -> dict[str, Any]:
        ep = await self.endpoints(cfg)
        extra: dict[str, Any] = {}
        secret = cfg.client_secret.get_secret_value() if cfg.client_secret else None
        if secret is not None and cfg.client_auth == "client_secret_basic":
            # RFC 6749 2.3.1: both form-urlencoded before the Basic encoding
            extra["auth"] = httpx.BasicAuth(quote(cfg.client_id, safe=""), quote(secret, safe=""))
        else:
            form = {**form, "client_id": cfg.client_id}
            if secret is not None:
                form["client_secret"] = secret
        try:
            async with self._client() as client:
                r = await client.post(
                    ep.token, data=form, headers={"Accept": "application/json"}, **extra
                )
        except httpx.HTTPError as exc:
            raise OAuthProviderError(f"token endpoint unreachable ({type(exc).__name__})") from None
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise OAuthProviderError(f"token endpoint answered {r.status_code} without JSON")
        if r.status_code >= 500:
            raise OAuthProviderError(f"token endpoint answered {r.status_code}")
        if r.status_code != 200 or "error" in doc:
            error = str(doc.get("error", f"http_{r.status_code}"))[:64]
            raise OAuthGrantError(error, str(doc.get("error_description", "")))
        return doc


def _token_doc(provider: str, doc: dict[str, Any], refresh: str, scope: str = "") -> TokenDoc:
    access = doc.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthProviderError("the token response has no access_token")
    remember_secret(access)
    remember_secret(refresh)
    try:
        expires_in = float(doc.get("expires_in", 3600))
    except (TypeError, ValueError):
        expires_in = 3600.0
    now = time.time()
    return TokenDoc(
        provider=provider,
        refresh_token=SecretStr(refresh),
        access_token=SecretStr(access),
        expires_at=now + expires_in,
        obtained_at=now,
        scope=str(doc.get("scope") or scope),
    )
