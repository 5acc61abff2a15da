"""Delivery through Exchange Web Services (Exchange, Office 365) with exchangelib.

One attempt is one ``CreateItem`` with ``MessageDisposition="SendAndSaveCopy"``: the exact
bytes the sender built go up as the item's MIME content, Exchange sends them and files the copy
in the mailbox's Sent Items (so no IMAP copy is ever needed). Recipients that the MIME headers
do not name (Bcc, auto-BCC) are given as ``BccRecipients``. The credential is leased like for
SMTP; a refused cached credential is dropped and leased once more.

Failure classes, like SMTP's: a refused credential or token → ``auth_failed`` (permanent), EWS
off for the mailbox, no permission to send as the address → ``other`` (permanent),
``ErrorInvalidRecipients`` → ``recipient_refused`` (permanent), ``ErrorServerBusy``, a server
down or slow → ``server_down`` (retried from the durable queue).

Exchange has no idempotency key: an attempt whose answer was lost may have been sent. Before a
retry the Sent Items folder is searched for the message's ``Message-ID``; found, the send is
recorded as delivered instead of sending it twice.
"""

from __future__ import annotations

import asyncio
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import Any

from exchangelib.folders import Root, SentItems  # type: ignore[import-untyped]
from exchangelib.items import SEND_AND_SAVE_COPY, SEND_TO_NONE, Message  # type: ignore[import-untyped]
from exchangelib.properties import DistinguishedFolderId, Mailbox  # type: ignore[import-untyped]
from exchangelib.services import CreateItem  # type: ignore[import-untyped]

from libs.common.events.registry import Server
from libs.common.events.sender import SendFailure
from libs.common.ews import EwsClient, EwsError
from services.sender import domain
from services.sender.credentials import CredentialSource
from services.sender.repository import SendRecord
from services.sender.settings import SenderSettings
from services.sender.smtp import Credential

#: Message defaults exchangelib would send and that must not override the MIME content.
_UNSET = (
    "sensitivity",
    "importance",
    "reminder_is_set",
    "reminder_minutes_before_start",
    "is_read_receipt_requested",
    "is_delivery_receipt_requested",
    "is_response_requested",
)
_REASON: dict[str, tuple[SendFailure, bool]] = {
    "auth": ("auth_failed", True),
    "recipient": ("recipient_refused", True),
    "disabled": ("other", True),
    "mailbox": ("other", True),
    "denied": ("other", True),
    "rejected": ("other", True),
    "redirect": ("other", True),
    "tls": ("other", True),
    "network": ("server_down", False),
    "timeout": ("server_down", False),
    "throttled": ("server_down", False),
    "unavailable": ("server_down", False),
}


def failure(exc: EwsError) -> domain.DeliveryFailed:
    reason, permanent = _REASON.get(exc.kind, ("other", False))
    detail = f"EWS: {exc.message}" + (f" [{exc.detail}]" if exc.detail else "")
    return domain.DeliveryFailed(reason, detail[:1000], permanent)


def extra_bcc(raw: bytes, recipients: list[str]) -> list[str]:
    """Envelope recipients the MIME headers do not name: Exchange sends to the headers'
    recipients, so these go as BccRecipients."""
    head = BytesHeaderParser().parsebytes(raw, headersonly=True)
    named = {a.lower() for _, a in getaddresses(head.get_all("To", []) + head.get_all("Cc", []))}
    return [r for r in dict.fromkeys(recipients) if r.lower() not in named]


def _sent_items(account: Any) -> Any:
    mailbox = Mailbox(email_address=account.primary_smtp_address)
    fid = DistinguishedFolderId(id="sentitems", mailbox=mailbox)
    return SentItems(root=Root(account=account), _distinguished_id=fid)


def _already_sent(account: Any, message_id: str) -> bool:
    """FindItem in Sent Items by ``InternetMessageId``."""
    return bool(_sent_items(account).filter(message_id=message_id).exists())


def _send(account: Any, raw: bytes, bcc: list[str], message_id: str, retry: bool) -> bool:
    """Send and save a copy; False if a former attempt had sent it already."""
    if retry and _already_sent(account, message_id):
        return False
    m = Message(
        account=account,
        mime_content=raw,
        bcc_recipients=[Mailbox(email_address=a) for a in bcc] or None,
    )
    for name in _UNSET:
        setattr(m, name, None)
    m.is_read = True  # the Sent Items copy, as Outlook files it
    result = CreateItem(account=account).get(
        items=[m],
        folder=_sent_items(account),
        message_disposition=SEND_AND_SAVE_COPY,
        send_meeting_invitations=SEND_TO_NONE,
    )
    if isinstance(result, Exception):
        raise result
    return True


async def _once(
    server: Server,
    address: str,
    cred: Credential,
    record: SendRecord,
    raw: bytes,
    config: SenderSettings,
) -> domain.Delivered:
    assert server.url is not None
    try:
        client = EwsClient(
            server.url,
            address,
            cred.username,
            cred.secret,
            cred.auth_mode,
            config.tls_context,
            config.connect_timeout_s + config.command_timeout_s,
        )
    except EwsError as exc:
        raise failure(exc) from None
    bcc = extra_bcc(raw, record.recipients)
    try:
        async with asyncio.timeout(config.attempt_deadline_s):
            sent = await asyncio.to_thread(
                client.call, _send, raw, bcc, record.message_id, record.attempts > 1
            )
    except TimeoutError:
        raise domain.DeliveryFailed(
            "server_down", "EWS: the attempt took too long", False
        ) from None
    except EwsError as exc:
        raise failure(exc) from None
    finally:
        client.close()
    how = "sent" if sent else "found in Sent Items (sent by an earlier attempt)"
    reply = f"EWS CreateItem SendAndSaveCopy: {how}"
    return domain.Delivered(list(record.recipients), {}, reply, via="ews")


async def deliver(
    server: Server,
    mailbox: domain.Mailbox,
    record: SendRecord,
    raw: bytes,
    source: CredentialSource,
    config: SenderSettings,
) -> domain.Delivered:
    """Deliver ``raw`` once through the mailbox's EWS endpoint. Raises ``DeliveryFailed``."""
    if not server.url:
        raise domain.DeliveryFailed("other", "the account's EWS server has no URL", True)
    if server.security == "none" and not mailbox.settings.allow_insecure:
        raise domain.DeliveryFailed(
            "other", "the EWS server has no TLS and the account did not allow that", True
        )
    for again in (True, False):
        cred = await source.get(record.tenant_id, record.mailbox_id, "ews submission")
        if cred is None:
            raise domain.DeliveryFailed("auth_failed", "EWS needs a credential", True)
        try:
            return await _once(server, mailbox.address, cred, record, raw, config)
        except domain.DeliveryFailed as exc:
            # A refused cached credential may just be stale: once more with a fresh one.
            if not (exc.reason_class == "auth_failed" and again):
                raise
            if not source.forget(record.tenant_id, record.mailbox_id):
                raise
    raise AssertionError("unreachable")
