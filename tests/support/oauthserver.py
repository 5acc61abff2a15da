"""A local OAuth2 authorization server (authlib) on loopback for connected tests.

Endpoints (plain HTTP on 127.0.0.1, threaded, any event loop may call it):

* ``GET  /authorize``  authorization code with PKCE (S256 required); approves at once as
  ``approve_as`` (default: the ``login_hint``) and redirects to the client's redirect URI —
  the test plays the browser
* ``POST /token``      ``authorization_code`` and ``refresh_token`` grants (client secret by
  POST or Basic); ``expires_in`` seconds per access token; ``rotate_refresh`` issues a new
  refresh token on every refresh (and revokes the old one)
* ``POST /introspect`` RFC 7662 for resource servers (Dovecot's oauth2 passdb, the XOAUTH2
  aiosmtpd) authenticated with HTTP Basic: ``{"active", "username", ...}``
* ``GET  /.well-known/openid-configuration``  discovery of the above

``revoke_user(name)`` revokes every token of a user (the user removed the app's access):
introspection says inactive and refreshing answers ``invalid_grant``.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.oauthmodels import Client, Code, Request, Token, User, fingerprint
from tests.support.ports import LOOPBACK

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP on loopback, tests only

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint


@dataclass
class Stats:
    code_grants: int = 0
    refresh_grants: int = 0
    refreshed_at: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # error codes the token endpoint answered
    introspections: list[tuple[str, bool]] = field(default_factory=list)  # (fingerprint, active)
    authorize_params: list[dict[str, str]] = field(default_factory=list)
    token_forms: list[dict[str, str]] = field(default_factory=list)  # secrets blanked


class OAuthServer:
    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self.expires_in = 3600
        self.rotate_refresh = False
        self.approve_as: str | None = None
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.tokens: list[Token] = []
        self.stats = Stats()
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.server = self._authorization_server()

    # ------------------------------------------------------------ setup ---
    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() first"
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self.url

    def add_client(self, client_id: str, secret: str, redirect_uris: list[str]) -> Client:
        client = Client(client_id, secret, list(redirect_uris))
        self.clients[client_id] = client
        return client

    def add_resource_server(self, client_id: str, secret: str) -> str:
        """A client that may introspect (Basic auth); returns the introspection URL with the
        credentials in it, as Dovecot takes it."""
        self.clients[client_id] = Client(client_id, secret, [], introspect=True)
        return self.url.replace("http://", f"http://{client_id}:{secret}@") + "/introspect"

    def revoke_user(self, name: str) -> int:
        with self._lock:
            mine = [t for t in self.tokens if t.user.name == name and not t.revoked]
            for t in mine:
                t.revoked = True
            return len(mine)

    def revoke_access(self, name: str) -> int:
        """Revoke a user's access tokens only (refreshing still works)."""
        with self._lock:
            mine = [t for t in self.tokens if t.user.name == name and not t.access_revoked]
            for t in mine:
                t.access_revoked = True
            return len(mine)

    def active_user(self, access_token: str) -> str | None:
        """Introspection in process (the XOAUTH2 aiosmtpd's check): the user, if active."""
        with self._lock:
            tok = self._find(access_token, "access_token")
            active = tok is not None and tok.active
            self.stats.introspections.append((fingerprint(access_token), active))
            return tok.user.name if active and tok is not None else None

    def _find(self, value: str, hint: str | None) -> Token | None:
        for t in reversed(self.tokens):
            if hint != "refresh_token" and t.access_token == value:
                return t
            if hint != "access_token" and t.refresh_token == value:
                return t
        return None

    # ----------------------------------------------------------- authlib ---
    def _authorization_server(self) -> AuthorizationServer:
        store = self

        class Server(AuthorizationServer):  # type: ignore[misc]
            def query_client(self, client_id: str) -> Client | None:
                return store.clients.get(client_id)

            def save_token(self, token: dict[str, Any], request: Any) -> None:
                with store._lock:
                    old = request.refresh_token  # a refresh keeps the grant's refresh token
                    refresh = token.get("refresh_token") or (old.refresh_token if old else None)
                    store.tokens.append(
                        Token(
                            client_id=request.client.client_id,
                            user=request.user,
                            scope=token.get("scope", ""),
                            access_token=token["access_token"],
                            refresh_token=refresh,
                            expires_at=time.time() + token["expires_in"],
                        )
                    )

            def create_oauth2_request(self, request: Any) -> Any:
                return request

            def create_json_request(self, request: Any) -> Any:
                return request

            def handle_response(self, status: int, body: Any, headers: Any) -> Any:
                return status, body, list(headers or [])

            def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
                return None

        class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code: str, request: Any) -> None:
                data = request.payload.data
                store.codes[code] = Code(
                    code=code,
                    client_id=request.client.client_id,
                    redirect_uri=request.payload.redirect_uri,
                    scope=request.payload.scope or "",
                    user=request.user,
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    expires_at=time.time() + 300,
                )

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                c = store.codes.get(code)
                ok = c is not None and c.client_id == client.client_id
                return c if ok and c is not None and c.expires_at > time.time() else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                store.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> User:
                store.stats.code_grants += 1
                return authorization_code.user

        class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            @property
            def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:
                return store.rotate_refresh

            def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
                with store._lock:
                    tok = store._find(refresh_token, "refresh_token")
                    return tok if tok is not None and not tok.revoked else None

            def authenticate_user(self, refresh_token: Token) -> User:
                store.stats.refresh_grants += 1
                store.stats.refreshed_at.append(time.time())
                return refresh_token.user

            def revoke_old_credential(self, refresh_token: Token) -> None:
                if store.rotate_refresh:
                    with store._lock:
                        for t in store.tokens:
                            if t.refresh_token == refresh_token.refresh_token:
                                t.revoked = True

        class Introspect(IntrospectionEndpoint):  # type: ignore[misc]
            CLIENT_AUTH_METHODS = ["client_secret_basic"]

            def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
                with store._lock:
                    tok = store._find(token_string, token_type_hint)
                    active = tok is not None and tok.active
                    store.stats.introspections.append((fingerprint(token_string), active))
                    return tok

            def check_permission(self, token: Token, client: Client, request: Any) -> bool:
                return client.introspect

            def introspect_token(self, token: Token) -> dict[str, Any]:
                return {
                    "active": True,
                    "username": token.user.name,
                    "client_id": token.client_id,
                    "scope": token.scope,
                    "token_type": "Bearer",
                    "exp": int(token.expires_at),
                }

        server = Server()
        server.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **_: f"at-{secrets.token_urlsafe(24)}",
                refresh_token_generator=lambda **_: f"rt-{secrets.token_urlsafe(24)}",
                expires_generator=lambda client, grant_type: store.expires_in,
            ),
        )
        server.register_grant(CodeGrant, [CodeChallenge(required=True)])
        server.register_grant(RefreshGrant)
        server.register_endpoint(Introspect)
        return server

    # -------------------------------------------------------------- HTTP ---
    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        form = dict(parse_qsl(body.decode())) if body else {}
        req = Request(method, f"{self.url}{path}", headers, form)
        route = urlsplit(path).path
        if route == "/authorize" and method == "GET":
            self.stats.authorize_params.append(dict(req.args))
            user = User(self.approve_as or req.args.get("login_hint", "nobody"))
            try:
                grant = self.server.get_consent_grant(req, end_user=user)
            except Exception as exc:  # OAuth2Error: shown to the "browser"
                return 400, {"error": getattr(exc, "error", "invalid_request")}, []
            return self.server.create_authorization_response(req, grant_user=user, grant=grant)
        if route == "/token" and method == "POST":
            self.stats.token_forms.append(_blank(form))
            status, out, hdrs = self.server.create_token_response(req)
            if status != 200 and isinstance(out, dict):
                self.stats.refused.append(str(out.get("error")))
            return status, out, hdrs
        if route == "/introspect" and method == "POST":
            return self.server.create_endpoint_response("introspection", req)
        if route == "/.well-known/openid-configuration":
            return (
                200,
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.url}/authorize",
                    "token_endpoint": f"{self.url}/token",
                    "introspection_endpoint": f"{self.url}/introspect",
                    "code_challenge_methods_supported": ["S256"],
                },
                [],
            )
        return 404, {"error": "not_found"}, []

    def start(self) -> OAuthServer:
        if self._httpd is not None:
            return self
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                status, out, hdrs = outer.handle(self.command, self.path, headers, body)
                data = out if isinstance(out, bytes) else b""
                if isinstance(out, dict):
                    data = json.dumps(out).encode()
                    hdrs = [*hdrs, ("Content-Type", "application/json")]
                elif isinstance(out, str):
                    data = out.encode()
                self.send_response(status)
                for k, v in hdrs:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()


def _blank(form: dict[str, str]) -> dict[str, str]:
    """A token request as tests may look at it: secrets replaced by their presence."""
    hidden = ("code", "code_verifier", "refresh_token", "client_secret")
    return {k: ("<set>" if k in hidden and v else v) for k, v in form.items()}
