"""``mailroom-rpc.sender.send``: sending for internal services (e.g. an autoresponder).

Request (JSON)::

    {"tenant_id", "mailbox_id", "idempotency_key", "service": "sync",
     "on_behalf_of": employee id | null, "wait": true, "message": <MessageIn>}

Reply ``{"ok": true, "send": <SendOut>}`` or ``{"ok": false, "error": {"code", "message",
"details"}}`` (a failed send is ``ok: false`` with the send in ``details.send``). Only internal
services can publish on this subject (NATS permissions), so the caller is trusted as the
mailbox itself; the envelope's actor is ``service:<name>``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.common.errors import MailroomError
from libs.common.ids import new_id
from libs.common.subjects import TENANT_PATTERN, rpc_subject
from services.sender.api import render
from services.sender.handlers import SenderHandlers
from services.sender.models import MessageIn, SendOut
from services.sender.ports import Requester

SEND_SUBJECT = rpc_subject("sender", "send")


class RpcSend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    mailbox_id: str = Field(min_length=1, max_length=64)
    idempotency_key: str = Field(min_length=1, max_length=255)
    service: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9-]*$")
    on_behalf_of: str | None = Field(None, max_length=64)
    # travels as the events' ce-correlationid header: visible ASCII, no spaces or line breaks
    correlation_id: str | None = Field(None, max_length=64, pattern=r"^[\x21-\x7e]+$")
    wait: bool = True
    message: MessageIn


class RpcError(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class SendReply(BaseModel):
    """``{"ok": true, "send": …, "replayed": …}`` or ``{"ok": false, "error": …}``."""

    ok: bool
    send: SendOut | None = None
    replayed: bool | None = Field(None, description="an earlier send with this idempotency key")
    error: RpcError | None = None


# (subject, summary, request, reply) for the AsyncAPI document (libs.common.asyncapi)
CONTRACT = (SEND_SUBJECT, "Send mail for an internal service (e.g. an autoresponder).",
            RpcSend, SendReply)  # fmt: skip


def _error(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, "details": details or {}}}


async def serve_send(h: SenderHandlers, body: Any) -> dict[str, Any]:
    try:
        req = RpcSend.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _error("invalid_request", f"{where}: {first['msg']}")
    who = Requester(
        req.tenant_id, f"service:{req.service}", req.correlation_id or new_id(), req.on_behalf_of
    )
    try:
        result = await h.submit(
            who, req.mailbox_id, req.idempotency_key, req.message, wait=req.wait
        )
    except MailroomError as exc:
        return {"ok": False, **exc.body()}
    response = render(result)
    doc = json.loads(bytes(response.body))
    if "error" in doc:
        return {"ok": False, **doc}
    return {"ok": True, "send": doc, "replayed": result.replayed}
