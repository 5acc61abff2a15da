"""Tokens of the organisation's OIDC identity provider: keys from its JWKS, claims to principals.

Settings (``MAILROOM_OIDC_*``): ``issuer``, ``audience`` and ``jwks_url`` switch it on (all three
are needed: a verifier that does not check the audience would accept tokens minted for any other
application of the same provider). How claims map to a principal:

- tenant: the claim ``tenant_claim`` (default ``mailroom_tenant``); with ``tenant`` set, the
  provider serves that one tenant: a token without the claim belongs to it, one naming another
  tenant is refused 403 ``wrong_tenant``. Tenant ids are ``[A-Za-z0-9_-]{1,64}``.
- role: the claim ``role_claim`` (default ``mailroom_role``), a string or a list of strings, each
  mapped through ``role_map`` (e.g. ``{"mailroom-admins": "admin"}``; only mapped values count;
  with no map the values must be ``admin``, ``employee`` or ``service``); admin wins over
  employee, employee over service. Without the claim: ``default_role``. A claim that maps to no
  role is refused 403 ``unknown_role``.
- subject: the claim ``subject_claim`` (default ``sub``): the employee id (or the service
  account's name) that grants name; providers whose ``sub`` is opaque put the employee id in a
  custom claim and name it here.
- scopes: ``scope`` (space separated) or ``scp`` (a list).

Keys (:class:`JwksCache`): the JWKS document is fetched on first use and cached for
``jwks_ttl_s``. A token naming an unknown ``kid`` (the provider rotated its keys) makes the cache
refetch at once, but never more often than every ``jwks_refresh_min_s`` (so random kids cannot
make us hammer the provider). When the provider is unreachable, keys fetched within
``jwks_max_stale_s`` keep working; a token that needs a key we do not have then gets 503
``jwks_unavailable`` (retry), not a 401. Only asymmetric signing keys (RSA, EC, OKP) are used,
with the algorithms in ``algorithms``; ``alg: none`` and HMAC never verify anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from libs.common.errors import Unauthorized, Unavailable

log = logging.getLogger("mailroom.oidc")

KEY_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks_url: str
    tenant_claim: str = "mailroom_tenant"
    role_claim: str = "mailroom_role"
    subject_claim: str = "sub"
    tenant: str | None = None
    role_map: dict[str, str] = field(default_factory=dict)
    default_role: str = "employee"
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_s: float = 30.0
    jwks_ttl_s: float = 300.0
    jwks_refresh_min_s: float = 30.0
    jwks_max_stale_s: float = 24 * 3600.0
    jwks_timeout_s: float = 3.0

    @classmethod
    def from_settings(cls, settings: Any) -> OidcConfig | None:
        """The configuration in ``Settings`` (None when OIDC is off)."""
        issuer, audience, url = settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url
        if not (issuer or audience or url):
            return None
        if not (issuer and audience and url):
            raise ValueError(
                "OIDC needs MAILROOM_OIDC_ISSUER, MAILROOM_OIDC_AUDIENCE and MAILROOM_OIDC_JWKS_URL"
            )
        return cls(
            issuer=issuer,
            audience=audience,
            jwks_url=url,
            tenant_claim=settings.oidc_tenant_claim,
            role_claim=settings.oidc_role_claim,
            subject_claim=settings.oidc_subject_claim,
            tenant=settings.oidc_tenant,
            role_map=dict(settings.oidc_role_map),
            default_role=settings.oidc_default_role,
            algorithms=tuple(settings.oidc_algorithms),
            leeway_s=settings.oidc_leeway_s,
            jwks_ttl_s=settings.oidc_jwks_ttl_s,
            jwks_refresh_min_s=settings.oidc_jwks_refresh_min_s,
            jwks_max_stale_s=settings.oidc_jwks_max_stale_s,
            jwks_timeout_s=settings.oidc_jwks_timeout_s,
        )


@dataclass(frozen=True)
class SigningKey:
    jwk: jwt.PyJWK
    kty: str
    alg: str | None  # as the JWKS declares it (None: any algorithm of the key's type)


def parse_jwks(doc: Any) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS document by ``kid`` (keys without one under "")."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: dict[str, SigningKey] = {}
    for raw in doc["keys"]:
        if not isinstance(raw, dict) or raw.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # HMAC ("oct") keys never verify provider tokens
        if raw.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(raw)
        except jwt.PyJWTError as exc:
            log.warning("JWKS key %r skipped: %s", raw.get("kid"), exc)
            continue
        alg = raw.get("alg")
        keys[str(raw.get("kid", ""))] = SigningKey(jwk, raw["kty"], alg if alg else None)
    return keys


class JwksCache:
    """The provider's keys, cached with a TTL, refetched (rate-limited) on an unknown kid.

    Thread-safe: token verification runs in FastAPI's worker threads.
    """

    def __init__(self, config: OidcConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.fetches = 0  # attempts, successful or not
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error: str | None = None
        self._lock = threading.Lock()

    def _fetch(self) -> None:
        self.fetches += 1
        try:
            r = httpx.get(
                self.config.jwks_url, timeout=self.config.jwks_timeout_s, follow_redirects=False
            )
            r.raise_for_status()
            keys = parse_jwks(r.json())
        except (httpx.HTTPError, ValueError) as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.warning("JWKS fetch from %s failed: %s", self.config.jwks_url, self._last_error)
            return
        self._keys = keys
        self._fetched_at = self.clock()
        self._last_error = None

    def key_for(self, kid: str | None) -> SigningKey:
        cfg = self.config
        with self._lock:
            now = self.clock()
            fresh = self._fetched_at is not None and now - self._fetched_at < cfg.jwks_ttl_s
            known = self._find(kid) is not None
            may_fetch = (
                self._attempted_at is None or now - self._attempted_at >= cfg.jwks_refresh_min_s
            )
            if (not fresh or not known) and may_fetch:
                self._attempted_at = now
                self._fetch()
            key = self._find(kid)
            usable = self._fetched_at is not None and now - self._fetched_at <= cfg.jwks_max_stale_s
            if key is not None and usable:
                return key
            if self._last_error is not None or not usable:
                raise Unavailable(
                    "the identity provider's signing keys cannot be fetched; retry later",
                    code="jwks_unavailable",
                )
            raise Unauthorized(
                "the token is signed with a key the identity provider does not publish",
                code="unknown_key",
            )

    def _find(self, kid: str | None) -> SigningKey | None:
        if kid is not None:
            return self._keys.get(kid)
        if len(self._keys) == 1:  # a token without kid: only an unambiguous key will do
            return next(iter(self._keys.values()))
        return None


def check_algorithm(alg: Any, allowed: tuple[str, ...]) -> str:
    """The token's ``alg`` if it is one we accept (never ``none``, never HMAC), else 401."""
    if not isinstance(alg, str) or alg not in allowed or alg[:2] not in KEY_FAMILY:
        raise Unauthorized(
            f"the token's algorithm {alg!r} is not accepted", code="unsupported_algorithm"
        )
    return alg


def check_key(alg: str, key: SigningKey) -> None:
    """The key must be of the algorithm's type (and its declared algorithm, if any)."""
    if KEY_FAMILY[alg[:2]] != key.kty or (key.alg is not None and key.alg != alg):
        raise Unauthorized(
            "the token's algorithm does not match its signing key", code="invalid_token"
        )
