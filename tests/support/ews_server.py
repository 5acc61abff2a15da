"""A local Exchange Web Services server for connected tests — Exchange and Microsoft Graph
cannot run here, so this one replays recorded EWS responses (tests/support/ews_xml.py) over
HTTPS on loopback (the session test CA) and checks every request it gets:

* ``POST /EWS/Exchange.asmx``: the SOAP operation (GetFolder, FindFolder, SyncFolderItems,
  GetItem, FindItem by Message-ID, CreateItem: tests/support/ews_store.py),
  ``RequestServerVersion``, the mailbox asked for (``t:Mailbox`` in folder
  ids for delegate access; ``ExchangeImpersonation``/``PrimarySmtpAddress`` and
  ``X-AnchorMailbox`` for app-only tokens) and the authentication: no ``Authorization`` header
  answers 401 with ``WWW-Authenticate: Basic`` (how exchangelib learns the auth type), Basic
  checks the user's password, Bearer a token this server issued.
* ``POST /<tenant>/oauth2/v2.0/token``: Microsoft Entra ID's client-credentials grant, with its
  error documents (``invalid_client`` / AADSTS7000215, AADSTS90002 for an unknown tenant).

A small item store per mailbox backs FindFolder/SyncFolderItems/GetItem: ``deliver()`` puts a
message in a folder (what Exchange's transport would), ``delete()`` removes one, and sends
(CreateItem SendAndSaveCopy, MIME content) land in ``sent`` and the Sent Items folder. Sync
states are opaque tokens (base64 of gzip, as Exchange's) naming a position in the folder's
change log, so SyncFolderItems reports exactly the changes after it.

Faults on demand: ``busy`` (the next N requests get the ``ErrorServerBusy`` fault, HTTP 500),
``ews_disabled`` (mailboxes that get HTTP 403), ``refuse_recipients`` (CreateItem answers
``ErrorInvalidRecipients``), ``lose_answers`` (CreateItem sends, then the connection drops before
the answer). ``violations`` lists requests that broke the rules above.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest
from lxml import etree  # type: ignore[import-untyped]

from tests.support import ews_store as store
from tests.support import ews_xml as x
from tests.support.ews_store import NS, Item, Mailbox, new_id
from tests.support.ports import LOOPBACK
from tests.support.tlsca import session_pki

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


@dataclass
class Request:
    op: str
    auth: str  # "basic:<user>", "bearer:app:<client>", "bearer:user"
    mailbox: str | None
    version: str | None


class EwsServer:
    def __init__(self, flavour: str = "exchange2016") -> None:
        self.flavour = flavour
        self.mailboxes: dict[str, Mailbox] = {}
        self.users: dict[str, tuple[str, set[str]]] = {}  # user -> (password, mailboxes)
        self.apps: dict[tuple[str, str], str] = {}  # (tenant, client id) -> secret
        self.tokens: dict[str, str] = {}  # token -> "app:<client>" or "user:<name>"
        self.requests: list[Request] = []
        self.token_requests: list[dict[str, str]] = []
        self.sent: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.busy = 0
        self.epoch = 0  # bump (invalidate_sync_states) and older sync states are refused
        self.busy_back_off_ms = 500
        self.ews_disabled: set[str] = set()
        self.refuse_recipients: set[str] = set()
        self.lose_answers = 0  # CreateItem: send, then drop the connection before answering
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- set-up -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/EWS/Exchange.asmx"

    @property
    def authority(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def add_mailbox(
        self, address: str, user: str | None = None, password: str | None = None
    ) -> str:
        """A mailbox, and (with ``password``) a user who owns it; returns the password."""
        with self.lock:
            self.mailboxes.setdefault(address.lower(), Mailbox(address.lower()))
            password = password or secrets.token_urlsafe(12)
            if user is not None or password is not None:
                name = user or address
                _, boxes = self.users.get(name, ("", set()))
                self.users[name] = (password, boxes | {address.lower()})
        return password

    def add_app(self, tenant: str, client_id: str) -> str:
        secret = "s~" + secrets.token_urlsafe(24)
        self.apps[(tenant, client_id)] = secret
        return secret

    def app_secret(self, tenant: str, client_id: str, address: str) -> str:
        """The account secret an admin stores for app-only access to ``address``."""
        secret = self.apps.get((tenant, client_id)) or self.add_app(tenant, client_id)
        doc = {"type": "client_credentials", "tenant_id": tenant, "client_id": client_id}
        return json.dumps({**doc, "client_secret": secret, "authority": self.authority})

    def add_folder(self, address: str, name: str) -> None:
        with self.lock:
            self.mailboxes[address.lower()].add_folder(name, name)

    def deliver(
        self, address: str, raw: bytes, folder: str = "inbox", received: datetime | None = None
    ) -> str:
        with self.lock:
            box = self.mailboxes[address.lower()]
            fid = box.well_known.get(folder) or next(
                k for k, v in box.folders.items() if v == folder
            )
            when = received or datetime.now(UTC)
            item = Item(new_id(), "CQAAABYAAAB" + secrets.token_urlsafe(6), fid, raw, when)
            box.items[item.id] = item
            box.changes[fid].append(("Create", item.id, item.change_key))
            return item.id

    def delete(self, address: str, item_id: str) -> None:
        with self.lock:
            box = self.mailboxes[address.lower()]
            item = box.items.pop(item_id)
            box.changes[item.folder].append(("Delete", item.id, item.change_key))

    def invalidate_sync_states(self) -> None:
        """As after a mailbox move: every sync state issued so far is refused."""
        self.epoch += 1

    def ops(self, mailbox: str | None = None) -> list[str]:
        return [r.op for r in self.requests if mailbox is None or r.mailbox == mailbox]

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> EwsServer:
        server = self

        class Handler(_Handler):
            ews = server

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = (
            session_pki().server_context().wrap_socket(self._httpd.socket, server_side=True)
        )
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    ews: EwsServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(
        self, status: int, body: bytes, ctype: str = "text/xml; charset=utf-8", **hdr: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in hdr.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            if self.path.endswith("/oauth2/v2.0/token"):
                self._token(self.path.split("/")[1], dict(parse_qsl(body.decode())))
            elif self.path.lower() == "/ews/exchange.asmx":
                self._ews(body)
            else:
                self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")
        except Exception as exc:  # a bug here must show up in the test, not hang the client
            self.ews.violations.append(f"server error: {type(exc).__name__}: {exc}")
            self._send(500, b"", "text/plain")

    # --- Entra ID token endpoint ------------------------------------------------------------
    def _token(self, tenant: str, form: dict[str, str]) -> None:
        ews = self.ews
        ews.token_requests.append({k: v for k, v in form.items() if k != "client_secret"})
        if form.get("grant_type") != "client_credentials":
            return self._aad(400, "unsupported_grant_type", "AADSTS70003: grant type unsupported")
        if not any(t == tenant for t, _ in ews.apps):
            return self._aad(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
        secret = ews.apps.get((tenant, form.get("client_id", "")))
        if secret is None or secret != form.get("client_secret"):
            return self._aad(
                401, "invalid_client", "AADSTS7000215: Invalid client secret provided."
            )
        if not form.get("scope", "").endswith("/.default"):
            ews.violations.append(f"token scope {form.get('scope')!r}")
        token = "eyJ0eXAiOiJKV1Qi." + secrets.token_urlsafe(32)
        ews.tokens[token] = f"app:{form['client_id']}"
        doc = {
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }
        self._send(200, json.dumps(doc).encode(), "application/json; charset=utf-8")

    def _aad(self, status: int, error: str, description: str) -> None:
        doc = {
            "error": error,
            "error_description": f"{description}\r\nTrace ID: 0",
            "error_codes": [0],
        }
        self._send(status, json.dumps(doc).encode(), "application/json; charset=utf-8")

    # --- EWS --------------------------------------------------------------------------------
    def _who(self) -> str | None:
        value = self.headers.get("Authorization", "")
        scheme, _, cred = value.partition(" ")
        if scheme.lower() == "basic":
            user, _, password = base64.b64decode(cred).decode().partition(":")
            known = self.ews.users.get(user)
            return f"basic:{user}" if known and known[0] == password else None
        if scheme.lower() == "bearer":
            who = self.ews.tokens.get(cred)
            return f"bearer:{who}" if who else None
        return None

    def _ews(self, body: bytes) -> None:
        ews = self.ews
        who = self._who()
        if who is None:
            basic = 'Basic realm="mail.example.test"'
            if self.headers.get("Authorization", "").lower().startswith("bearer"):
                basic = 'Bearer error="invalid_token", ' + basic
            return self._send(401, b"", "text/html", WWW_Authenticate=basic)
        doc = etree.fromstring(body, _PARSER)
        op_el = doc.find("s:Body", NS)[0]
        op = etree.QName(op_el).localname
        version = doc.find("s:Header/t:RequestServerVersion", NS)
        imp = doc.findtext(
            "s:Header/t:ExchangeImpersonation/t:ConnectingSID/t:PrimarySmtpAddress", None, NS
        )
        target = self._mailbox(who, op_el, imp)
        ews.requests.append(
            Request(op, who, target, version.get("Version") if version is not None else None)
        )
        if version is None or not str(version.get("Version", "")).startswith(("Exchange20", "V20")):
            ews.violations.append(f"{op}: RequestServerVersion missing or wrong")
        if ews.busy > 0:
            ews.busy -= 1
            fault = x.fault(
                "ErrorServerBusy",
                "The server cannot service this request right now. Try again later.",
                ews.busy_back_off_ms,
            )
            return self._send(500, x.envelope(fault, ews.flavour))
        if target in ews.ews_disabled:
            return self._send(403, b"<html><body>403 Forbidden</body></html>", "text/html")
        allowed = who.startswith("bearer:app:") or (
            who.startswith("basic:") and target in ews.users[who[6:]][1]
        )
        handler = getattr(store, f"op_{op}", None)
        if handler is None:
            ews.violations.append(f"unexpected operation {op}")
            return self._send(
                500, x.envelope(x.fault("ErrorInvalidRequest", "The request is invalid."))
            )
        box = ews.mailboxes.get(target or "")
        if box is None or not allowed:
            code = "ErrorNonExistentMailbox" if box is None else "ErrorAccessDenied"
            return self._reply(op, [x.error(op, code)])
        with ews.lock:
            messages = handler(ews, box, op_el)
        if op == "CreateItem" and ews.lose_answers > 0:
            ews.lose_answers -= 1
            self.close_connection = True  # the answer is lost on the way back
            return
        self._reply(op, messages)

    def _reply(self, op: str, messages: list[str]) -> None:
        self._send(200, x.envelope(x.response(op, messages), self.ews.flavour))

    def _mailbox(self, who: str, op: Any, impersonated: str | None) -> str | None:
        named = {m.lower() for m in op.xpath(".//t:Mailbox/t:EmailAddress/text()", namespaces=NS)}
        if who.startswith("bearer:app:"):
            anchor = self.headers.get("X-AnchorMailbox", "").lower()
            if not impersonated:
                self.ews.violations.append("app-only request without ExchangeImpersonation")
                return None
            if anchor != impersonated.lower():
                self.ews.violations.append(f"X-AnchorMailbox {anchor!r} != {impersonated!r}")
            return impersonated.lower()
        if len(named) > 1 and etree.QName(op).localname != "CreateItem":
            self.ews.violations.append(f"several mailboxes in one request: {named}")
        folders = op.xpath(
            ".//t:DistinguishedFolderId/t:Mailbox/t:EmailAddress/text()", namespaces=NS
        )
        if folders:
            return str(folders[0]).lower()
        user = who.split(":", 1)[1]
        return sorted(self.ews.users[user][1])[0] if user in self.ews.users else None


@pytest.fixture
def ews_server() -> Iterator[EwsServer]:
    server = EwsServer().start()
    try:
        yield server
    finally:
        server.stop()
