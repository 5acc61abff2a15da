"""Message metadata from header bytes (never bodies): Message-ID, From, To, Subject, Date, and
the facts an autoresponder needs (RFC 3834): Return-Path, Auto-Submitted, Precedence, List-Id /
List-Unsubscribe, X-Auto-Response-Suppress."""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

_MAX = 998
_PARSER = BytesHeaderParser(policy=email.policy.default)
_COMPAT = BytesHeaderParser(policy=email.policy.compat32)
_SINGLE = (
    "message-id",
    "from",
    "subject",
    "date",
    "return-path",
    "auto-submitted",
    "precedence",
    "list-id",
    "list-unsubscribe",
    "x-auto-response-suppress",
)
_TOKEN = 64


@dataclass
class MessageMeta:
    uid: int
    size: int | None = None
    internaldate: datetime | None = None
    message_id: str | None = None
    from_: str | None = None
    to: list[str] = field(default_factory=list)
    subject: str | None = None
    date: str | None = None
    uidl: str | None = None
    return_path: str | None = None
    auto_submitted: str | None = None
    precedence: str | None = None
    mailing_list: bool = False
    auto_response_suppress: str | None = None

    def autoreply_facts(self) -> dict[str, Any]:
        """The RFC 3834 header facts, as ``MessageReceived`` fields."""
        return {
            "return_path": self.return_path,
            "auto_submitted": self.auto_submitted,
            "precedence": self.precedence,
            "mailing_list": self.mailing_list,
            "auto_response_suppress": self.auto_response_suppress,
        }


def _clean(value: object) -> str | None:
    if value is None:
        return None
    text = re.sub(r"\s+", " ", str(value)).strip()
    return text[:_MAX] or None


def parse_headers(meta: MessageMeta, raw: bytes) -> MessageMeta:
    """Fill ``meta`` from raw header lines; malformed headers never raise."""
    values: dict[str, object] = {}
    to_values: list[str] = []
    for parser in (_PARSER, _COMPAT):
        try:
            msg = parser.parsebytes(raw)
            values = {k: msg.get(k) for k in _SINGLE}
            to_values = [str(v) for v in msg.get_all("to") or []]
            break
        except Exception:  # noqa: S112 -- malformed under the strict policy: try compat32
            continue
    meta.message_id = _clean(values.get("message-id"))
    meta.from_ = _clean(values.get("from"))
    meta.subject = _clean(values.get("subject"))
    meta.to = [addr for _, addr in getaddresses(to_values) if addr][:100]
    _autoreply_facts(meta, values)
    raw_date = _clean(values.get("date"))
    if raw_date:
        try:
            meta.date = parsedate_to_datetime(raw_date).isoformat()
        except (TypeError, ValueError, IndexError):
            meta.date = raw_date
    return meta


def _token(value: object) -> str | None:
    text = _clean(value)
    return text.lower()[:_TOKEN] if text else None


def _autoreply_facts(meta: MessageMeta, values: dict[str, object]) -> None:
    """Return-Path as a bare address (``""`` for the null path ``<>``), the other facts as
    short lower-case tokens."""
    path = _clean(values.get("return-path"))
    if path is not None:
        found = [addr for _, addr in getaddresses([path]) if "@" in addr]
        meta.return_path = found[0][:320] if found else ""
    meta.auto_submitted = _token(values.get("auto-submitted"))
    meta.precedence = _token(values.get("precedence"))
    meta.mailing_list = any(values.get(k) is not None for k in ("list-id", "list-unsubscribe"))
    meta.auto_response_suppress = _token(values.get("x-auto-response-suppress"))


def parse_internaldate(value: str) -> datetime | None:
    """IMAP INTERNALDATE, e.g. `` 7-Jul-2024 10:00:00 +0200``."""
    try:
        return datetime.strptime(value.strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None
