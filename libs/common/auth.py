"""Who is calling: bearer tokens (JWT) mapped to a tenant and a principal.

Embedded and self-managed installs sign tokens with a local Ed25519 key (``mailroom tokens
create``). Production may instead accept JWTs of the organisation's OIDC provider (issuer,
audience and JWKS URL in settings; keys cached and rotated, claims mapped to tenant, role and
subject as configured: ``libs.common.oidc``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import Request

from libs.common.errors import Forbidden, Unauthorized
from libs.common.ids import new_id
from libs.common.oidc import JwksCache, OidcConfig, check_algorithm, check_key

Role = Literal["admin", "employee", "service"]
LOCAL_ISSUER = "mailroom-local"
AUDIENCE = "mailroom"


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    subject: str
    role: Role
    token_id: str = ""
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.subject}"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this needs a tenant admin", code="admin_required")


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)
    return key


class TokenIssuer:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def issue(
        self,
        tenant_id: str,
        subject: str,
        role: Role,
        *,
        ttl_s: int = 12 * 3600,
        scopes: list[str] | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": LOCAL_ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "mailroom_tenant": tenant_id,
            "mailroom_role": role,
            "iat": now,
            "exp": now + ttl_s,
            "jti": new_id(),
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        return jwt.encode(claims, self._key, algorithm="EdDSA")


RevocationCheck = Callable[[Principal], bool]
TENANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
ROLES_BY_RANK: tuple[Role, ...] = ("admin", "employee", "service")


@dataclass(frozen=True)
class ClaimMap:
    """Which claims name the tenant, role and subject (and how role values map to roles)."""

    tenant_claim: str = "mailroom_tenant"
    role_claim: str = "mailroom_role"
    subject_claim: str = "sub"
    tenant: str | None = None
    role_map: dict[str, str] = field(default_factory=dict)
    default_role: str = "employee"

    @classmethod
    def of(cls, cfg: OidcConfig) -> ClaimMap:
        return cls(
            cfg.tenant_claim,
            cfg.role_claim,
            cfg.subject_claim,
            cfg.tenant,
            cfg.role_map,
            cfg.default_role,
        )

    def principal(self, claims: dict[str, Any]) -> Principal:
        tenant = claims.get(self.tenant_claim)
        if self.tenant is not None and tenant is None:
            tenant = self.tenant
        if not isinstance(tenant, str) or not tenant:
            raise Forbidden("the token names no tenant", code="no_tenant")
        if self.tenant is not None and tenant != self.tenant:
            raise Forbidden("the token belongs to another tenant", code="wrong_tenant")
        if not TENANT_ID.match(tenant):
            raise Forbidden("the token's tenant is not a valid tenant id", code="invalid_tenant")
        subject = claims.get(self.subject_claim)
        # The subject becomes the actor of events, which travels as a NATS header: no control
        # characters (line breaks), no surrounding whitespace.
        if (
            not isinstance(subject, str)
            or not subject
            or len(subject) > 128
            or not subject.isprintable()
            or subject != subject.strip()
        ):
            raise Unauthorized(
                f"the token's {self.subject_claim!r} claim is missing or invalid",
                code="invalid_token",
            )
        return Principal(
            tenant_id=tenant,
            subject=subject,
            role=self._role(claims.get(self.role_claim)),
            token_id=str(claims.get("jti", "")),
            scopes=_scopes(claims),
        )

    def _role(self, value: Any) -> Role:
        if value is None:  # no role claim: the default (a Mailroom role name, not mapped)
            roles = {self.default_role}
        else:
            values = value if isinstance(value, list) else [value]
            # With a role map only mapped values count (an IdP group that happens to be called
            # "admin" grants nothing); without one the values are Mailroom's role names.
            names = [v for v in values if isinstance(v, str)]
            roles = {self.role_map.get(v, "") for v in names} if self.role_map else set(names)
        for role in ROLES_BY_RANK:  # admin over employee over service
            if role in roles:
                return role
        raise Forbidden("the token's role is not a Mailroom role", code="unknown_role")


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    scope, scp = claims.get("scope"), claims.get("scp")
    out = set(scope.split()) if isinstance(scope, str) else set()
    if isinstance(scp, list):
        out.update(s for s in scp if isinstance(s, str))
    elif isinstance(scp, str):
        out.update(scp.split())
    return frozenset(out)


LOCAL_CLAIMS = ClaimMap()


class TokenVerifier:
    """Local tokens (Ed25519, issuer ``mailroom-local``) and, when configured, the OIDC
    provider's (``libs.common.oidc``). Errors: 401 ``invalid_token``, ``token_expired``,
    ``token_not_yet_valid``, ``untrusted_issuer``, ``wrong_audience``, ``bad_signature``,
    ``unsupported_algorithm``, ``unknown_key``, ``token_revoked``; 403 ``no_tenant``,
    ``wrong_tenant``, ``invalid_tenant``, ``unknown_role``; 503 ``jwks_unavailable``."""

    def __init__(
        self,
        public_key: Ed25519PublicKey | None,
        *,
        oidc: OidcConfig | None = None,
        oidc_issuer: str | None = None,
        oidc_audience: str | None = None,
        oidc_jwks_url: str | None = None,
    ) -> None:
        if oidc is None and (oidc_issuer or oidc_audience or oidc_jwks_url):
            if not (oidc_issuer and oidc_audience and oidc_jwks_url):
                raise ValueError("OIDC needs an issuer, an audience and a JWKS URL")
            oidc = OidcConfig(oidc_issuer, oidc_audience, oidc_jwks_url)
        self._public = public_key
        self.oidc = oidc
        self.jwks = JwksCache(oidc) if oidc is not None else None
        self._oidc_claims = ClaimMap.of(oidc) if oidc is not None else None
        self.revoked: list[RevocationCheck] = []

    @classmethod
    def from_settings(cls, public_key: Ed25519PublicKey | None, settings: Any) -> TokenVerifier:
        return cls(public_key, oidc=OidcConfig.from_settings(settings))

    async def verify_async(self, token: str) -> Principal:
        """:meth:`verify` for request handlers: a token of our own issuer is checked right here
        (CPU only, ~0.1 ms); an identity provider's may have to fetch its keys (blocking HTTP),
        so it is checked on a worker thread."""
        header, issuer = _unverified(token)
        if issuer == LOCAL_ISSUER and self._public is not None:
            return self._verified(token, header, issuer)
        return await asyncio.to_thread(self._verified, token, header, issuer)

    def is_local(self, token: str) -> bool:
        """Issued by this deployment (checked without any network call)."""
        try:
            return _unverified(token)[1] == LOCAL_ISSUER and self._public is not None
        except Unauthorized:
            return False

    def verify(self, token: str) -> Principal:
        header, issuer = _unverified(token)
        return self._verified(token, header, issuer)

    def _verified(self, token: str, header: dict[str, Any], issuer: Any) -> Principal:
        if issuer == LOCAL_ISSUER and self._public is not None:
            alg = check_algorithm(header.get("alg"), ("EdDSA",))
            claims = _decode(token, self._public, alg, AUDIENCE, LOCAL_ISSUER, 0.0)
            principal = LOCAL_CLAIMS.principal(claims)
        elif self.oidc is not None and self.jwks is not None and issuer == self.oidc.issuer:
            cfg = self.oidc
            alg = check_algorithm(header.get("alg"), cfg.algorithms)
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise Unauthorized("the token's kid is not a string", code="invalid_token")
            key = self.jwks.key_for(kid)
            check_key(alg, key)
            claims = _decode(token, key.jwk.key, alg, cfg.audience, cfg.issuer, cfg.leeway_s)
            assert self._oidc_claims is not None
            principal = self._oidc_claims.principal(claims)
        else:
            raise Unauthorized("the token's issuer is not trusted", code="untrusted_issuer")
        for check in self.revoked:
            if check(principal):
                raise Unauthorized("this principal's access was revoked", code="token_revoked")
        return principal


def _unverified(token: str) -> tuple[dict[str, Any], Any]:
    """The token's header and issuer, before any check (which key to check it with)."""
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Unauthorized("the bearer token is malformed", code="invalid_token") from exc
    return header, unverified.get("iss")


_DECODE_ERRORS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "token_expired", "the bearer token has expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "the bearer token is not valid yet"),
    (jwt.InvalidAudienceError, "wrong_audience", "the token was issued for another audience"),
    (jwt.InvalidIssuerError, "untrusted_issuer", "the token's issuer is not trusted"),
    (jwt.InvalidSignatureError, "bad_signature", "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "unsupported_algorithm", "the token's algorithm is refused"),
)


def _decode(
    token: str, key: Any, alg: str, audience: str, issuer: str, leeway: float
) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["exp"]},
        )
    except jwt.PyJWTError as exc:
        for kind, code, message in _DECODE_ERRORS:
            if isinstance(exc, kind):
                raise Unauthorized(message, code=code) from exc
        raise Unauthorized(f"the bearer token is not valid: {exc}", code="invalid_token") from exc
    return claims


def bearer(request: Request) -> str:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>'", code="missing_token")
    return token.strip()


def principal_dependency(
    get_verifier: Callable[[], TokenVerifier],
) -> Callable[[Request], Principal]:
    def _principal(request: Request) -> Principal:
        return get_verifier().verify(bearer(request))

    return _principal
