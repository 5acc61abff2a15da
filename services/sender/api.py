"""Sender HTTP API: send a message, look at a send, see how a mailbox sends.

``POST /v1/mailboxes/{id}/messages`` answers

* 201 with the send when the server accepted the message during the request;
* 202 when it is queued (``Prefer: respond-async``) or will be retried after a transient error;
* 422 / 502 (error body, the send in ``details.send``) when it failed for good;
* 429 ``daily_limit_reached`` with ``Retry-After`` and ``details.retry_after`` / ``frees_at``;
* 409 ``mailbox_disabled`` / ``mailbox_deleted`` / ``no_outgoing_server``.

A repeated ``Idempotency-Key`` answers the recorded send in the same way, with
``Idempotent-Replayed: true``, and never delivers again.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response
from fastapi.responses import JSONResponse

from libs.common.auth import Principal
from libs.common.authz_client import Decision
from libs.common.http import ERROR_SCHEMA, ERRORS
from libs.common.ids import new_id
from libs.common.service import Caller
from services.sender.handlers import SenderHandlers
from services.sender.models import MessageIn, SendingOut, SendOut
from services.sender.permissions import require
from services.sender.ports import Invalid, LimitReached, Requester, Submitted
from services.sender.repository import SendRecord

MailboxId = Annotated[str, Path(min_length=1, max_length=64)]
_FAILED_STATUS = {"recipient_refused": 422, "auth_failed": 502, "server_down": 502}


def send_out(r: SendRecord) -> SendOut:
    return SendOut(
        id=r.send_id,
        mailbox_id=r.mailbox_id,
        idempotency_key=r.idempotency_key,
        status=r.status,
        message_id=r.message_id,
        recipients=len(r.recipients),
        attempts=r.attempts,
        next_attempt_at=r.next_attempt_at if r.state == "queued" else None,
        reason_class=r.reason_class,
        detail=r.detail,
        refused=r.refused,
        created_at=r.created_at,
        finished_at=r.finished_at,
        sent_copy="pending" if r.copy_state == "wanted" else r.copy_state,
    )


def render(result: Submitted) -> Response:
    """The HTTP answer for a send (new or replayed)."""
    out = send_out(result.record)
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    body: dict[str, Any]
    if out.status == "failed":
        reason = out.reason_class or "other"
        body = {
            "error": {
                "code": reason if reason != "other" else "send_failed",
                "message": f"the message was not sent: {out.detail}",
                "details": {"send": out.model_dump(mode="json")},
            }
        }
        return JSONResponse(body, _FAILED_STATUS.get(reason, 502), headers=headers)
    code = 201 if out.status == "sent" else 202
    return JSONResponse(out.model_dump(mode="json"), code, headers=headers)


def requester(caller: Principal, decision: Decision) -> Requester:
    behalf = caller.subject if decision.on_behalf and caller.role == "employee" else None
    return Requester(caller.tenant_id, caller.actor, new_id(), behalf)


def build_router(h: SenderHandlers) -> APIRouter:
    errors: dict[int | str, dict[str, Any]] = {code: ERROR_SCHEMA for code in (*ERRORS, 429, 502)}
    r = APIRouter(prefix="/v1/mailboxes", tags=["sender"], responses=errors)

    async def allowed(caller: Principal, mailbox_id: str, revision: int | None) -> Decision:
        decision = await h.wiring.permissions.check_send(caller, mailbox_id, revision)
        return require(decision, mailbox_id)

    @r.post(
        "/{mailbox_id}/messages",
        status_code=201,
        response_model=SendOut,
        responses={202: {"model": SendOut, "description": "queued or retrying"}},
    )
    async def send(
        mailbox_id: MailboxId,
        body: MessageIn,
        caller: Caller,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        authz_revision: Annotated[
            int | None,
            Header(alias="Mailroom-Authz-Revision", description="answer at least this fresh"),
        ] = None,
        prefer: Annotated[str | None, Header(description="respond-async: do not wait")] = None,
    ) -> Response:
        """Send a message from the mailbox (needs Send). ``Idempotency-Key`` is required: a
        repeated request returns the recorded send and never delivers twice."""
        if not idempotency_key:
            raise Invalid("send an Idempotency-Key header", code="idempotency_key_required")
        decision = await allowed(caller, mailbox_id, authz_revision)
        wait = "respond-async" not in (prefer or "").lower()
        try:
            result = await h.submit(
                requester(caller, decision), mailbox_id, idempotency_key, body, wait=wait
            )
        except LimitReached as exc:
            return JSONResponse(
                exc.body(), exc.status, headers={"Retry-After": str(exc.retry_after)}
            )
        return render(result)

    @r.get("/{mailbox_id}/messages/{send_id}", response_model=SendOut)
    async def get_send(
        mailbox_id: MailboxId,
        send_id: Annotated[str, Path(max_length=36)],
        caller: Caller,
    ) -> SendOut:
        """One send: its status, attempts, outcome and Sent copy."""
        await allowed(caller, mailbox_id, None)
        return send_out(await h.get(caller.tenant_id, mailbox_id, send_id))

    @r.get("/{mailbox_id}/sending", response_model=SendingOut)
    async def sending(mailbox_id: MailboxId, caller: Caller) -> SendingOut:
        """How the mailbox sends: identity, server, auto-BCC and its daily limit right now."""
        await allowed(caller, mailbox_id, None)
        mailbox, who, verdict = await h.sending(caller.tenant_id, mailbox_id)
        server = mailbox.outgoing
        limit = mailbox.settings.daily_send_limit
        return SendingOut(
            mailbox_id=mailbox_id,
            status=mailbox.status,
            from_name=who.author.name,
            from_address=who.author.address,
            outgoing=server.model_dump(mode="json") if server else None,
            auto_bcc=list(mailbox.settings.auto_bcc),
            daily_limit=limit,
            sent_last_24h=verdict.used,
            remaining=None if limit is None else max(0, limit - verdict.used),
            frees_at=verdict.frees_at,
            sent_copy=mailbox.imap is not None and h.config.sent_copy,
        )

    return r
