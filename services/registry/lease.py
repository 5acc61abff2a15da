"""The lease RPC: the only place a plaintext secret leaves the registry.

Request ``libs.common.leases.LeaseRequest`` on ``mailroom-rpc.registry.lease``; the reply is
``{"ok": true, "lease": {...}}`` or ``{"ok": false, "error": {"code", "message"}}``. A handler
exception would leave the requester without any reply (faststream), so every error becomes a
refusal; nothing here logs the request's reply.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from libs.common.errors import MailroomError
from libs.common.leases import Lease, LeaseRequest, refusal
from libs.common.metrics import record_lease
from services.registry.oauth_lease import OAuthCredentialHandlers

log = logging.getLogger("mailroom.registry.lease")


async def serve_lease(ch: OAuthCredentialHandlers, body: Any) -> dict[str, Any]:
    reply = await _serve_lease(ch, body)
    service = body.get("service") if isinstance(body, dict) else None
    record_lease(str(service), "granted" if reply["ok"] else str(reply["error"]["code"]))
    return reply


async def _serve_lease(ch: OAuthCredentialHandlers, body: Any) -> dict[str, Any]:
    try:
        req = LeaseRequest.model_validate(body)
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "body"
        return refusal("invalid_request", f"lease request: {where}: {exc.errors()[0]['msg']}")
    try:
        grant = await ch.lease(
            req.tenant_id, req.account_id, req.service, req.purpose, refresh=req.refresh
        )
    except MailroomError as exc:
        return refusal(exc.code, exc.message)
    except Exception as exc:
        log.error("lease of account %s failed: %s", req.account_id, type(exc).__name__)
        return refusal("internal", "the registry could not lease the credential")
    s = grant.settings
    lease = Lease(
        tenant_id=req.tenant_id,
        account_id=grant.account_id,
        address=grant.address,
        service=req.service,
        purpose=req.purpose,
        auth_mode=grant.auth_mode,
        username=grant.username,
        field=grant.field,
        credential_version=grant.credential_version,
        secret=grant.secret,
        lease_expires_at=grant.lease_expires_at,
        incoming=s.incoming,
        outgoing=s.outgoing,
        custom_smtp=s.custom_smtp,
    )
    return {"ok": True, "lease": lease.wire()}
