"""Build the message (``email.message.EmailMessage``, ``policy.SMTP``: CRLF, encoded words).

Recipients given as Bcc and the mailbox's auto-BCC addresses are SMTP envelope recipients only:
the bytes every recipient receives carry no ``Bcc`` header. The copy filed in the Sent folder
shows the caller's own Bcc recipients (never the auto-BCC), as mail clients do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime

from services.sender import domain, headers
from services.sender.models import Address, MessageIn


class _Registry(HeaderRegistry):
    """The standard header classes, each made once (the stock registry builds a new class
    for every header it parses)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


POLICY = policy.SMTP.clone(max_line_length=78, raise_on_defect=True, header_factory=_Registry())


@dataclass(frozen=True, slots=True)
class Built:
    raw: bytes
    message_id: str
    mail_from: str
    recipients: list[str]
    """Envelope recipients: to, cc, bcc and auto-BCC, each once."""
    bcc: list[str]
    """The caller's Bcc addresses (for the Sent copy's header only)."""


def _addrs(name: str, items: Sequence[Address]) -> headers.Prefolded:
    return headers.addresses(name, [(a.name, a.address) for a in items])


def _person(name: str, p: domain.Person) -> headers.Prefolded:
    return headers.addresses(name, [(p.name, p.address)])


def build(
    msg_in: MessageIn,
    who: domain.Identity,
    *,
    send_id: str,
    now: datetime,
    auto_bcc: Sequence[str] = (),
    attachments: Sequence[bytes] | None = None,
) -> Built:
    """The message for ``msg_in`` from ``who``; ``attachments`` are the decoded contents (in
    ``msg_in.attachments`` order) when the caller has already decoded them."""
    # The identity comes from registry events, not from this request: check it here too.
    domain.check_address(who.author.address)
    if who.sender is not None:
        domain.check_address(who.sender.address)
    m = EmailMessage(policy=POLICY)
    mid = domain.message_id(send_id, who.author.address.rpartition("@")[2])
    m["From"] = _person("From", who.author)
    if who.sender is not None:
        m["Sender"] = _person("Sender", who.sender)
    if msg_in.to:
        m["To"] = _addrs("To", msg_in.to)
    if msg_in.cc:
        m["Cc"] = _addrs("Cc", msg_in.cc)
    if msg_in.reply_to:
        m["Reply-To"] = _addrs("Reply-To", msg_in.reply_to)
    m["Subject"] = headers.subject(msg_in.subject)
    m["Date"] = format_datetime(now)
    m["Message-ID"] = mid
    if msg_in.in_reply_to:
        m["In-Reply-To"] = msg_in.in_reply_to
    if msg_in.references:
        m["References"] = " ".join(msg_in.references)
    _body(m, msg_in.text, msg_in.html)
    contents = attachments if attachments is not None else [a.content() for a in msg_in.attachments]
    for att, data in zip(msg_in.attachments, contents, strict=True):
        maintype, _, subtype = att.content_type.partition("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=att.filename)
    for part in m.walk():
        if part is not m:
            del part["MIME-Version"]  # set on every part by add_*; only the top needs it
    envelope: dict[str, None] = dict.fromkeys(msg_in.recipients())
    for extra in auto_bcc:
        envelope.setdefault(domain.check_address(extra), None)
    return Built(
        raw=m.as_bytes(policy=POLICY),
        message_id=mid,
        mail_from=who.author.address,
        recipients=list(envelope),
        bcc=[a.address for a in msg_in.bcc],
    )


def _body(m: EmailMessage, text: str | None, html: str | None) -> None:
    if html is None:
        m.set_content(text or "", subtype="plain", charset="utf-8")
        return
    if text is None:
        m.set_content(html, subtype="html", charset="utf-8")
        return
    m.set_content(text, subtype="plain", charset="utf-8")
    m.add_alternative(html, subtype="html", charset="utf-8")


def sent_copy(raw: bytes, bcc: Sequence[str]) -> bytes:
    """The Sent folder's copy: the delivered bytes with the caller's Bcc header in front."""
    if not bcc:
        return raw
    folded = headers.addresses("Bcc", [("", domain.check_address(a)) for a in bcc]).folded
    return folded.encode("ascii") + raw
