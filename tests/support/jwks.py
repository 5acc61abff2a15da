"""A stand-in OIDC identity provider: a real HTTP server on loopback serving a JWKS document.

An identity provider cannot run here, so this one is played by the test: it generates real RSA,
EC and Ed25519 keys (cryptography), publishes their public halves as a JWKS document over HTTP
(``http.server`` on 127.0.0.1, a random port), and signs tokens with them (PyJWT). It can
rotate keys, go down (the server stops: connection refused) and come back on the same port,
and counts the JWKS requests it served.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from libs.common.ids import new_id

KeyKind = Literal["rsa", "ec", "ed25519"]
ALG: dict[KeyKind, str] = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}
JWKS_PATH = "/.well-known/jwks.json"


class _Handler(BaseHTTPRequestHandler):
    idp: IdentityProvider

    def do_GET(self) -> None:
        idp = self.server.idp  # type: ignore[attr-defined]
        idp.requests += 1
        if idp.delay_s:
            time.sleep(idp.delay_s)  # a slow provider (this handler's own thread)
        if self.path != JWKS_PATH:
            self.send_error(404)
            return
        status, body = idp.status, idp.body()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # quiet
        return


class IdentityProvider:
    def __init__(self, audience: str = "mailroom-api") -> None:
        self.audience = audience
        self.private: dict[str, tuple[KeyKind, Any]] = {}
        self.published: list[str] = []
        self.requests = 0
        self.status = 200
        self.delay_s = 0.0
        self.raw: bytes | None = None  # serve this instead of the JWKS (garbage tests)
        self.extra_jwks: list[dict[str, Any]] = []  # more entries in the document
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- the server -----------------------------------------------------------------------
    def start(self) -> None:
        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.idp = self  # type: ignore[attr-defined]
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return self.issuer + JWKS_PATH

    def settings(self, **extra: Any) -> dict[str, Any]:
        """``Settings`` overrides that point Mailroom at this provider."""
        return {
            "oidc_issuer": self.issuer,
            "oidc_audience": self.audience,
            "oidc_jwks_url": self.jwks_url,
            **extra,
        }

    # --- keys -----------------------------------------------------------------------------
    def add_key(self, kind: KeyKind = "rsa", *, publish: bool = True) -> str:
        kid = f"{kind}-{secrets.token_hex(6)}"
        key: Any
        if kind == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "ec":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        self.private[kid] = (kind, key)
        if publish:
            self.published.append(kid)
        return kid

    def rotate(self, kind: KeyKind = "rsa") -> str:
        """Publish a new key and withdraw every other one."""
        kid = self.add_key(kind)
        self.published = [kid]
        return kid

    def public_jwk(self, kid: str) -> dict[str, Any]:
        kind, key = self.private[kid]
        algo: Any = {"rsa": RSAAlgorithm, "ec": ECAlgorithm, "ed25519": OKPAlgorithm}[kind]
        jwk: dict[str, Any] = algo.to_jwk(key.public_key(), as_dict=True)
        return {**jwk, "kid": kid, "use": "sig", "alg": ALG[kind]}

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        keys = [self.public_jwk(k) for k in self.published] + self.extra_jwks
        return json.dumps({"keys": keys}).encode()

    # --- tokens ---------------------------------------------------------------------------
    def token(
        self,
        kid: str,
        *,
        ttl_s: int = 600,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,  # a None value leaves the header out
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        kind, key = self.private[kid]
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": f"idp|{secrets.token_hex(8)}",
            "iat": now,
            "exp": now + ttl_s,
            "jti": new_id(),
            **claims,
        }
        for name in drop:
            body.pop(name, None)
        head = {k: v for k, v in {"kid": kid, **(headers or {})}.items() if v is not None}
        return jwt.encode(body, key, algorithm=alg or ALG[kind], headers=head)


class Clock:
    """A monotonic clock the test moves (the JWKS cache's TTL and rate limit)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()
