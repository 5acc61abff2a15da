"""Exchange Web Services through exchangelib, shared by registry (connection test), sync
(watching) and sender (delivery). Blocking: call every method of :class:`EwsClient` on a worker
thread (``asyncio.to_thread`` / an executor) under a timeout.

Authentication, from the credential a lease (or the connection test) holds:

* a password (``auth_mode`` password / app_password): HTTP Basic or NTLM, whichever the server
  offers (exchangelib asks it once per client), delegate access to ``address``;
* an OAuth2 access token (``auth_mode`` oauth2, e.g. from the registry's authorization-code
  flow): ``Authorization: Bearer``, delegate access;
* Office 365 app-only (client credentials) for shared mailboxes: the secret is a JSON document
  ``{"type": "client_credentials", "tenant_id", "client_id", "client_secret"}`` (optionally
  ``"authority"``, default ``https://login.microsoftonline.com``, or the 21Vianet one for
  ``partner.outlook.cn``). The token comes from ``<authority>/<tenant>/oauth2/v2.0/token``
  (scope ``https://<EWS host>/.default``), is cached in memory until shortly before it expires,
  and the mailbox is reached by impersonation (``ExchangeImpersonation`` + ``X-AnchorMailbox``).

TLS uses the caller's ``ssl.SSLContext`` (system CAs plus the service's CA file), never the
``requests``/certifi defaults. exchangelib's own loggers are silenced: its error records carry
request XML (message bodies) and headers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
from exchangelib import (  # type: ignore[import-untyped]
    DELEGATE,
    IMPERSONATION,
    Account,
    Configuration,
    Credentials,
    FailFast,
    OAuth2AuthorizationCodeCredentials,
    Version,
)
from exchangelib.protocol import BaseProtocol, CachingProtocol, Protocol  # type: ignore[import-untyped]
from exchangelib.version import EXCHANGE_2013_SP1  # type: ignore[import-untyped]
from oauthlib.oauth2 import OAuth2Token  # type: ignore[import-untyped]
from pydantic import SecretStr
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from libs.common.ews_errors import EwsError, classify
from libs.common.logs import remember_secret

logging.getLogger("exchangelib").setLevel(logging.CRITICAL)
log = logging.getLogger("mailroom.ews")
AUTHORITY = "https://login.microsoftonline.com"
AUTHORITIES = {"partner.outlook.cn": "https://login.chinacloudapi.cn"}
#: Microsoft Entra ID token hosts (global, 21Vianet, US Government); any other authority must be
#: the EWS server's own host, so a stored secret cannot send the client secret elsewhere.
MICROSOFT_LOGIN = frozenset(
    {
        "login.microsoftonline.com",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.us",
    }
)
TOKEN_MARGIN_S = 120.0

__all__ = ["AppCredentials", "EwsClient", "EwsError", "classify", "parse_app_credentials"]


@dataclass(frozen=True)
class AppCredentials:
    """Office 365 client credentials (app-only access). No repr of the secret."""

    tenant_id: str
    client_id: str
    client_secret: SecretStr
    authority: str = AUTHORITY

    def token_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}/oauth2/v2.0/token"


def parse_app_credentials(secret: str, ews_url: str = "") -> AppCredentials | None:
    """The client credentials in ``secret``, or None for a password or a token."""
    if not secret.lstrip().startswith("{"):
        return None
    try:
        doc = json.loads(secret)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("type") != "client_credentials":
        return None
    try:
        tenant, client, value = (
            str(doc[k]).strip() for k in ("tenant_id", "client_id", "client_secret")
        )
    except KeyError as exc:
        raise EwsError("auth", f"client credentials without {exc.args[0]}") from None
    if not (tenant and client and value):
        raise EwsError("auth", "client credentials need tenant_id, client_id and client_secret")
    host = (urlsplit(ews_url).hostname or "").lower()
    authority = str(doc.get("authority") or AUTHORITIES.get(host, AUTHORITY))
    where = urlsplit(authority)
    if where.scheme != "https" or not where.hostname:
        raise EwsError("auth", "the client credentials' authority must be an https URL")
    if where.hostname.lower() not in MICROSOFT_LOGIN | {host}:
        raise EwsError(
            "auth",
            f"the client credentials' authority {where.hostname} is neither Microsoft Entra ID "
            "nor the EWS server",
        )
    remember_secret(value)
    return AppCredentials(tenant, client, SecretStr(value), authority)


PeerCheck = Callable[[str, str], None]
"""``check(host, address)`` raises if the connected peer ``address`` may not be reached."""


def _checked_pools(check: PeerCheck) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose sockets are checked right after connecting (before TLS and
    before any byte of HTTP): the address requests connected to, not one resolved earlier,
    so DNS rebinding cannot slip a private address past the registry's network guard."""

    def verified(sock: socket.socket, host: str) -> socket.socket:
        try:
            check(host, sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
        return sock

    class Conn(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return verified(super()._new_conn(), self.host)

    class TlsConn(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return verified(super()._new_conn(), self.host)

    class Pool(HTTPConnectionPool):
        ConnectionCls = Conn

    class TlsPool(HTTPSConnectionPool):
        ConnectionCls = TlsConn

    return {"http": Pool, "https": TlsPool}


class _ContextAdapter(requests.adapters.HTTPAdapter):
    """An adapter that verifies with the given SSL context only (no certifi bundle added),
    and checks every peer it connects to when given a ``peer_check``."""

    context: ssl.SSLContext | None = None
    peer_check: PeerCheck | None = None

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self.context is not None:
            kwargs["ssl_context"] = self.context
        super().init_poolmanager(*args, **kwargs)
        check = type(self).peer_check
        if check is not None:
            self.poolmanager.pool_classes_by_scheme = _checked_pools(check)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if self.context is None:
            super().cert_verify(conn, url, verify, cert)
        # else: the context verifies (CERT_REQUIRED, hostname check); nothing to load


def _adapter_class(
    context: ssl.SSLContext, peer_check: PeerCheck | None = None
) -> type[_ContextAdapter]:
    attrs = {"context": context, "peer_check": staticmethod(peer_check) if peer_check else None}
    return type("EwsAdapter", (_ContextAdapter,), attrs)


class _Protocol(Protocol):  # type: ignore[misc]
    """exchangelib's protocol, with our TLS context and timeout, never shared across clients."""

    HTTP_ADAPTER_CLS: Any = requests.adapters.HTTPAdapter

    @classmethod
    def private(
        cls,
        config: Configuration,
        context: ssl.SSLContext,
        timeout: float,
        peer_check: PeerCheck | None = None,
    ) -> _Protocol:
        adapter = _adapter_class(context, peer_check)
        sub = type("EwsProtocol", (cls,), {"HTTP_ADAPTER_CLS": adapter})
        proto: _Protocol = object.__new__(sub)  # bypass the process-wide protocol cache
        proto.__init__(config=config)  # type: ignore[misc]
        proto.TIMEOUT = timeout
        return proto


class _AppTokens:
    """Access tokens of client credentials, in memory until shortly before they expire."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, str]] = {}

    @staticmethod
    def _key(app: AppCredentials, scope: str) -> str:
        raw = "\n".join(
            (app.token_url(), app.client_id, scope, app.client_secret.get_secret_value())
        )
        return hashlib.sha256(raw.encode()).hexdigest()

    def forget(self, app: AppCredentials, scope: str) -> None:
        with self._lock:
            self._tokens.pop(self._key(app, scope), None)

    def get(
        self,
        app: AppCredentials,
        scope: str,
        context: ssl.SSLContext,
        timeout: float,
        peer_check: PeerCheck | None = None,
    ) -> tuple[str, float]:
        """A token and until when (``time.monotonic()``) to use it."""
        key = self._key(app, scope)
        with self._lock:
            hit = self._tokens.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1], hit[0]
        token, ttl = self._fetch(app, scope, context, timeout, peer_check)
        until = time.monotonic() + max(0.0, ttl - TOKEN_MARGIN_S)
        with self._lock:
            self._tokens[key] = (until, token)
        return token, until

    @staticmethod
    def _fetch(
        app: AppCredentials,
        scope: str,
        context: ssl.SSLContext,
        timeout: float,
        peer_check: PeerCheck | None,
    ) -> tuple[str, float]:
        url = app.token_url()
        with requests.Session() as s:
            adapter = _adapter_class(context, peer_check)(max_retries=0)
            s.mount("https://", adapter)
            s.mount("http://", adapter)
            try:
                r = s.post(
                    url,
                    data={
                        "grant_type": "client_credentials",
                        "client_id": app.client_id,
                        "client_secret": app.client_secret.get_secret_value(),
                        "scope": scope,
                    },
                    timeout=timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                raise classify(exc, where=f"the token endpoint {urlsplit(url).netloc}") from None
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        if r.status_code == 200 and isinstance(doc, dict) and doc.get("access_token"):
            token = str(doc["access_token"])
            remember_secret(token)
            return token, float(doc.get("expires_in") or 3600)
        error = str(doc.get("error", "")) if isinstance(doc, dict) else ""
        said = (
            str(doc.get("error_description", "")).split("\r")[0].split("\n")[0][:200]
            if isinstance(doc, dict)
            else ""
        )
        if r.status_code >= 500 or r.status_code == 429:
            raise EwsError(
                "unavailable", f"the token endpoint answered {r.status_code}: try again later"
            )
        if error in ("invalid_client", "unauthorized_client"):
            raise EwsError(
                "auth",
                "Microsoft Entra ID refused the app's client id or secret (expired or wrong "
                "secret?): create a new client secret in the app registration",
                said,
            )
        if "AADSTS90002" in said or "AADSTS900023" in said or error == "invalid_request":
            raise EwsError(
                "auth", "the tenant id is wrong: use the Directory (tenant) ID of the app", said
            )
        if error == "invalid_scope":
            raise EwsError("auth", f"the token endpoint refused the scope {scope}", said)
        raise EwsError(
            "auth", f"the token endpoint refused the app ({error or r.status_code})", said
        )


TOKENS = _AppTokens()


class EwsClient:
    """One mailbox over EWS: ``url`` is the EWS endpoint, ``address`` the mailbox."""

    def __init__(
        self,
        url: str,
        address: str,
        username: str,
        secret: SecretStr,
        auth_mode: str,
        context: ssl.SSLContext,
        timeout: float,
        peer_check: PeerCheck | None = None,
    ) -> None:
        """``peer_check``: called with (host, address) for every connection (the registry's
        network guard); None where the account's servers are trusted (sync, sender)."""
        self.url = url
        self.address = address
        self.context = context
        self.timeout = timeout
        self.peer_check = peer_check
        plain = secret.get_secret_value()
        remember_secret(plain)
        self.app = parse_app_credentials(plain, url)
        self.scope = f"https://{urlsplit(url).netloc}/.default"
        self._username = username
        self._secret = secret
        self._auth_mode = auth_mode
        self._account: Account | None = None
        self._token_until = float("inf")

    def _credentials(self) -> Any:
        if self.app is not None:
            token, self._token_until = TOKENS.get(
                self.app, self.scope, self.context, self.timeout, self.peer_check
            )
            return self._bearer(token)
        if self._auth_mode == "oauth2":
            return self._bearer(self._secret.get_secret_value())
        # A password: Basic or NTLM, as the server's 401 offers (asked once per client).
        return Credentials(self._username, self._secret.get_secret_value())

    @staticmethod
    def _bearer(token: str) -> OAuth2AuthorizationCodeCredentials:
        # No expiry in the token: oauthlib would otherwise "refresh" it in a loop; the caller
        # renews tokens (a lease, or the client-credentials cache) and rebuilds the client.
        return OAuth2AuthorizationCodeCredentials(
            access_token=OAuth2Token({"access_token": token, "token_type": "Bearer"})
        )

    def account(self) -> Account:
        """The exchangelib account (built on first use, and again when an app token is due;
        a token fetch happens here)."""
        if self._account is not None and time.monotonic() < self._token_until:
            return self._account
        self.close()
        try:
            config = Configuration(
                service_endpoint=self.url,
                credentials=self._credentials(),
                version=Version(build=EXCHANGE_2013_SP1),
                retry_policy=FailFast(),
                max_connections=1,
            )
            account = Account(
                primary_smtp_address=self.address,
                config=config,
                autodiscover=False,
                access_type=IMPERSONATION if self.app is not None else DELEGATE,
                locale="en_US",
                default_timezone=_utc(),
            )
        except EwsError:
            raise
        except Exception as exc:
            raise classify(exc) from None
        with CachingProtocol._protocol_cache_lock:  # Account() cached a shared one: not ours
            CachingProtocol._protocol_cache.pop(CachingProtocol._cache_key(config), None)
        account.protocol = _Protocol.private(config, self.context, self.timeout, self.peer_check)
        self._account = account
        return account

    def refused(self) -> None:
        """The server refused the token: drop it so the next client fetches a new one."""
        if self.app is not None:
            TOKENS.forget(self.app, self.scope)

    def close(self) -> None:
        account, self._account = self._account, None
        if account is not None:
            try:
                BaseProtocol.close(account.protocol)
            except Exception as exc:  # closing a broken session must not hide the real error
                log.debug("closing an EWS session failed: %s", type(exc).__name__)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(account, ...)``; exchangelib's exceptions become :class:`EwsError`. An
        app-only token the server refuses is replaced once (it may have been revoked)."""
        for again in (self.app is not None, False):
            account = self.account()
            try:
                return fn(account, *args, **kwargs)
            except EwsError:
                raise
            except Exception as exc:
                err = classify(exc)
                self.close()
                if err.kind != "auth":
                    raise err from None
                self.refused()
                if not again:
                    raise err from None
        raise AssertionError("unreachable")


def _utc() -> Any:
    from exchangelib import UTC

    return UTC
