"""Who is calling: bearer tokens (JWT) mapped to a tenant and a principal.

Embedded and self-managed installs sign tokens with a local Ed25519 key (``mailroom tokens
create``). Production may instead accept JWTs of the organisation's OIDC provider (issuer,
audience and JWKS URL in settings; keys fetched and cached by PyJWT's JWKS client).
"""

from __future__ import annotations

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


class TokenVerifier:
    def __init__(
        self,
        public_key: Ed25519PublicKey | None,
        *,
        oidc_issuer: str | None = None,
        oidc_audience: str | None = None,
        oidc_jwks_url: str | None = None,
    ) -> None:
        self._public = public_key
        self._oidc_issuer = oidc_issuer
        self._oidc_audience = oidc_audience
        self._jwks = jwt.PyJWKClient(oidc_jwks_url, lifespan=300) if oidc_jwks_url else None
        self.revoked: list[RevocationCheck] = []

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized("the bearer token is malformed", code="invalid_token") from exc
        issuer = unverified.get("iss")
        try:
            if issuer == LOCAL_ISSUER and self._public is not None:
                claims = jwt.decode(
                    token,
                    self._public,
                    algorithms=["EdDSA"],
                    audience=AUDIENCE,
                    issuer=LOCAL_ISSUER,
                    options={"require": ["exp", "sub"]},
                )
            elif self._jwks is not None and issuer == self._oidc_issuer:
                key = self._jwks.get_signing_key(header.get("kid", "")).key
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["RS256", "ES256", "EdDSA"],
                    audience=self._oidc_audience,
                    issuer=self._oidc_issuer,
                    options={"require": ["exp", "sub"]},
                )
            else:
                raise Unauthorized("the token's issuer is not trusted", code="untrusted_issuer")
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the bearer token has expired", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("the bearer token is not valid", code="invalid_token") from exc
        tenant = claims.get("mailroom_tenant")
        role = claims.get("mailroom_role", "employee")
        if (
            not isinstance(tenant, str)
            or not tenant
            or role not in ("admin", "employee", "service")
        ):
            raise Forbidden("the token names no tenant or role", code="no_tenant")
        principal = Principal(
            tenant_id=tenant,
            subject=str(claims["sub"]),
            role=role,
            token_id=str(claims.get("jti", "")),
            scopes=frozenset(str(claims.get("scope", "")).split()),
        )
        for check in self.revoked:
            if check(principal):
                raise Unauthorized("this principal's access was revoked", code="token_revoked")
        return principal


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
