"""The send request and the send resource, as HTTP and NATS callers see them.

Every text that ends up in a header is checked here (``domain.check_header_text`` and
``domain.check_address``): a request with CR/LF or other tricks in a name, subject, address,
file name or message id is refused with 422 before anything is built.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.sender import domain

_MSG_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,250}@[\x21-\x3b\x3d\x3f-\x7e]{1,250}>\Z")
_MIME_TYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}$"
)


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    address: str = Field(max_length=254)
    name: str = Field("", max_length=200)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return domain.check_address(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return domain.check_header_text(v, "name")

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, v: Any) -> Any:
        return {"address": v} if isinstance(v, str) else v


Recipients = Annotated[list[Address], Field(max_length=100)]


class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field("application/octet-stream", max_length=128)
    content_base64: str = Field(description="the file's bytes, base64 (RFC 4648)")

    @field_validator("filename")
    @classmethod
    def _filename(cls, v: str) -> str:
        domain.check_header_text(v, "filename")
        if "/" in v or "\\" in v:
            raise ValueError("filename must not contain a path")
        return v

    @field_validator("content_type")
    @classmethod
    def _ctype(cls, v: str) -> str:
        if not _MIME_TYPE.match(v):
            raise ValueError("content_type must be type/subtype")
        return v.lower()

    def content(self) -> bytes:
        try:
            return base64.b64decode(self.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"attachment {self.filename!r} is not valid base64") from None


class Signature(BaseModel):
    """Which signature to add: the mailbox's ``default``, a ``named`` alternate, or ``none``
    (not even the personal one); see services/sender/signatures.py."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["default", "named", "none"] = "default"
    name: str | None = Field(None, max_length=200)


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    to: Recipients = Field(default_factory=list)
    cc: Recipients = Field(default_factory=list)
    bcc: Recipients = Field(default_factory=list)
    subject: str = Field("", max_length=998)
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = Field(default_factory=list, max_length=50)
    reply_to: list[Address] = Field(default_factory=list, max_length=10)
    in_reply_to: str | None = Field(None, max_length=510)
    references: list[str] = Field(default_factory=list, max_length=100)
    signature: Signature = Field(default_factory=Signature)
    save_sent_copy: bool | None = Field(
        None, description="append a copy to the Sent folder (default: per account)"
    )

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        return domain.check_header_text(v, "subject")

    @field_validator("in_reply_to")
    @classmethod
    def _in_reply_to(cls, v: str | None) -> str | None:
        if v is not None and not _MSG_ID.match(v):
            raise ValueError("in_reply_to must be one message id like <id@host>")
        return v

    @field_validator("references")
    @classmethod
    def _references(cls, v: list[str]) -> list[str]:
        for ref in v:
            if not _MSG_ID.match(ref):
                raise ValueError("references must be message ids like <id@host>")
        return v

    @model_validator(mode="after")
    def _someone(self) -> MessageIn:
        if not (self.to or self.cc or self.bcc):
            raise ValueError("a message needs at least one recipient (to, cc or bcc)")
        return self

    def recipients(self) -> list[str]:
        seen: dict[str, None] = {}
        for a in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(a.address, None)
        return list(seen)


SendStatus = Literal["queued", "sending", "retrying", "sent", "failed"]


class SendOut(BaseModel):
    id: str
    mailbox_id: str
    idempotency_key: str
    status: SendStatus
    message_id: str
    recipients: int
    attempts: int
    next_attempt_at: datetime | None = None
    reason_class: str | None = None
    detail: str = ""
    refused: list[str] = Field(default_factory=list)
    created_at: datetime
    finished_at: datetime | None = None
    sent_copy: Literal["none", "pending", "saving", "saved", "failed"] = "none"


class SendingOut(BaseModel):
    """How a mailbox sends: its identity, server and where it stands with its daily limit."""

    mailbox_id: str
    status: str
    from_name: str
    from_address: str
    outgoing: dict[str, Any] | None
    auto_bcc: list[str]
    daily_limit: int | None
    sent_last_24h: int
    remaining: int | None
    frees_at: datetime | None = None
    sent_copy: bool
