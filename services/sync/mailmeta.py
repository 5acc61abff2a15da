"""Message metadata from header bytes (never bodies): Message-ID, From, To, Subject, Date."""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parsedate_to_datetime

_MAX = 998
_PARSER = BytesHeaderParser(policy=email.policy.default)
_COMPAT = BytesHeaderParser(policy=email.policy.compat32)


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
            values = {k: msg.get(k) for k in ("message-id", "from", "subject", "date")}
            to_values = [str(v) for v in msg.get_all("to") or []]
            break
        except Exception:  # noqa: S112 -- malformed under the strict policy: try compat32
            continue
    meta.message_id = _clean(values.get("message-id"))
    meta.from_ = _clean(values.get("from"))
    meta.subject = _clean(values.get("subject"))
    meta.to = [addr for _, addr in getaddresses(to_values) if addr][:100]
    raw_date = _clean(values.get("date"))
    if raw_date:
        try:
            meta.date = parsedate_to_datetime(raw_date).isoformat()
        except (TypeError, ValueError, IndexError):
            meta.date = raw_date
    return meta


def parse_internaldate(value: str) -> datetime | None:
    """IMAP INTERNALDATE, e.g. `` 7-Jul-2024 10:00:00 +0200``."""
    try:
        return datetime.strptime(value.strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None
