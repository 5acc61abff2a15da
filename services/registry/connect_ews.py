"""The EWS half of a connection test (Exchange, Office 365): TLS of the endpoint on the socket
the caller connected, then a real sign-in with exchangelib — ``GetFolder`` of the Inbox — on a
worker thread under the step timeout.

``login`` fails when the server (or, for Office 365 app-only access, Microsoft Entra ID's token
endpoint) refuses the credential, forbids EWS, redirects elsewhere or throttles; it passes and
``mailbox_select`` fails when the sign-in worked but the mailbox cannot be opened (no such
mailbox, no permission, impersonation not granted). The mailbox is the username when it is an
address (Office 365, and always for app-only access), else the signed-in user's own.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from exchangelib.folders import Inbox, Root  # type: ignore[import-untyped]
from exchangelib.properties import DistinguishedFolderId, Mailbox  # type: ignore[import-untyped]

from libs.common.ews import EwsClient, EwsError
from services.registry.connect_hints import Diagnosis, Failure, StepFailed
from services.registry.connect_proto import tls_note
from services.registry.netguard import TargetRefused, check_address

if TYPE_CHECKING:
    from services.registry.connect import Credential, Probe

#: Exchange Online and 21Vianet turned Basic authentication for EWS off.
OAUTH_ONLY_HOSTS = ("outlook.office365.com", "outlook.office.com", "partner.outlook.cn")
_NO_MAILBOX = "probe@mailroom.invalid"  # exchangelib wants an address; not sent without one


async def probe(p: Probe, sock: socket.socket, credential: Credential | None) -> None:
    transport: Any = None
    try:
        if p.security == "ssl":
            _, writer = await p.step(
                "tls",
                lambda: asyncio.open_connection(sock=sock, ssl=p.tls, server_hostname=p.sni),
            )
            transport = writer.transport
            p.note(tls_note(transport))
        else:
            p.skip("tls", "plain http: nothing is encrypted")
    finally:
        if transport is not None:
            transport.abort()
        else:
            sock.close()
    if credential is None or credential.secret is None:
        p.skip("login", "no password given: login not tried")
        p.skip("mailbox_select", "no password given: login not tried")
        return
    url = p.server.url or f"https://{p.host}/EWS/Exchange.asmx"
    mailbox = credential.username if "@" in credential.username else None
    outcome: list[int | EwsError] = []
    app_only: list[bool] = []

    async def login() -> None:
        assert credential is not None and credential.secret is not None
        try:
            client = EwsClient(
                url,
                mailbox or _NO_MAILBOX,
                credential.username,
                credential.secret,
                credential.auth_mode,
                p.tls,
                p.timeout,
                # exchangelib resolves the URL's host itself (and the URL may name another
                # host than the one checked): every connection it makes is checked too.
                peer_check=lambda host, address: _guard(p, host, address),
            )
        except EwsError as exc:
            raise StepFailed(_diagnose(exc, p, credential), exc.detail) from None
        if client.app is not None:
            p.secrets.append(client.app.client_secret.get_secret_value())
        app_only.append(client.app is not None)
        try:
            count = await asyncio.to_thread(client.call, _inbox_count, mailbox is not None)
        except EwsError as exc:
            if exc.kind not in ("mailbox", "denied"):
                raise StepFailed(_diagnose(exc, p, credential), exc.detail) from None
            outcome.append(exc)
            return
        finally:
            client.close()
        outcome.append(count)

    await p.step("login", login)
    how = "app-only (client credentials)" if app_only[0] else credential.auth_mode
    p.note(f"signed in as {credential.username} ({how})")
    found = outcome[0]
    if isinstance(found, EwsError):

        async def refused() -> None:
            raise StepFailed(_diagnose(found, p, credential), found.detail)

        await p.step("mailbox_select", refused)
    else:
        p.ok("mailbox_select", f"Inbox opened ({found} messages)")


class _OwnFolder(DistinguishedFolderId):  # type: ignore[misc]
    """A distinguished folder of the signed-in user's own mailbox (no ``t:Mailbox``)."""

    def clean(self, version: Any = None) -> None:
        self.mailbox = None


def _inbox_count(account: Any, named: bool) -> int:
    """``GetFolder`` of the Inbox (the named mailbox's, or the signed-in user's own)."""
    if named:
        fid = DistinguishedFolderId(
            id="inbox", mailbox=Mailbox(email_address=account.primary_smtp_address)
        )
    else:
        fid = _OwnFolder(id="inbox")
    folder = Inbox(root=Root(account=account), _distinguished_id=fid)
    found = Inbox.resolve(account=account, folder=folder)
    return int(found.total_count or 0)


def _guard(p: Probe, host: str, address: str) -> None:
    try:
        check_address(host, address, p.reach)
    except TargetRefused as exc:
        raise EwsError("not_allowed", str(exc)) from None


def _diagnose(exc: EwsError, p: Probe, credential: Credential) -> Diagnosis:
    host = (urlsplit(p.server.url or "").hostname or p.host).lower()
    failure: Failure
    message = exc.message
    if exc.kind == "auth":
        failure = "auth_failed"
        if credential.auth_mode != "oauth2" and host in OAUTH_ONLY_HOSTS:
            failure = "oauth_required"
            message = (
                "Exchange Online accepts only OAuth2 for EWS (Basic authentication is off): "
                "use auth_mode oauth2 — connect the mailbox through OAuth, or store the app's "
                "client credentials for a shared mailbox"
            )
        elif "locked" in message:
            failure = "account_blocked"
    elif exc.kind == "tls":
        failure = "tls_failed"
        if "expired" in message:
            failure = "cert_expired"
        elif "another host name" in message:
            failure = "cert_hostname"
        elif "trusted authority" in message:
            failure = "cert_untrusted"
    elif exc.kind == "timeout":
        failure = "timeout"
    elif exc.kind == "network":
        failure = "connection_refused" if "refused" in message else "unreachable"
    elif exc.kind in ("throttled", "unavailable"):
        failure = "server_unavailable"
    elif exc.kind == "disabled":
        failure = "protocol_disabled"
    elif exc.kind == "not_allowed":
        failure = "target_not_allowed"
    elif exc.kind in ("mailbox", "denied"):
        failure = "mailbox_unavailable"
    else:
        failure = "protocol_error"
    return Diagnosis(failure, message)
