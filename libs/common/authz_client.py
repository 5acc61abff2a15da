"""Ask the authz service whether a principal may act on a mailbox (NATS request-reply).

    client = AuthzClient(runtime.nc)
    await client.require(caller, mailbox_id, "send", at_least_as_fresh=client.latest_revision(t))

Contract on ``mailroom-rpc.authz.check`` (JSON both ways):

    request  {"principal": {"tenant_id", "subject", "role", "scopes": [..]},
              "mailbox_id": str, "action": str, "at_least_as_fresh": int | null}
    reply    {"allowed": bool, "reason": str, "detail": str, "level": str | null,
              "source": str | null, "grantee": str | null, "on_behalf": bool,
              "revision": int, "tenant_id": str}

``revision`` is the tenant's authz revision the answer was computed at: a per-tenant counter that
grows by one with every change the authz projection applies (grant, revoke, expiry, and registry
changes that matter to access). Every permission write returns the revision it created; a check
with ``at_least_as_fresh=r`` is answered only from a projection that has reached ``r`` (else it
is denied with reason ``stale``). Deny by default: no answer (timeout, no responder, garbage)
is a denial with reason ``unavailable``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

from libs.common.auth import Principal
from libs.common.errors import Forbidden
from libs.common.events.envelope import Envelope
from libs.common.subjects import rpc_subject

log = logging.getLogger("mailroom.authz_client")

CHECK_SUBJECT = rpc_subject("authz", "check")


class Decision(NamedTuple):
    """The answer to a check: allowed or not, and why.

    ``reason`` is a machine code: allowed by ``admin``, ``owner``, ``grant``, ``department`` or
    ``service_scope``; denied by ``no_access``, ``insufficient_level``, ``expired``,
    ``offboarded``, ``mailbox_disabled``, ``mailbox_deleted``, ``unknown_mailbox``,
    ``unknown_action``, ``other_tenant``, ``stale``, ``bad_request`` or ``unavailable``.
    ``level`` is the highest level the principal holds on the mailbox (also when denied),
    ``source``/``grantee`` name what gave it (``grantee`` e.g. ``department:sales``) and
    ``on_behalf`` tells a sender to set a ``Sender`` header. (A named tuple: immutable and
    cheap to make, as checks are the hot path.)
    """

    allowed: bool
    reason: str
    detail: str = ""
    level: str | None = None
    source: str | None = None
    grantee: str | None = None
    on_behalf: bool = False
    revision: int = 0

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, doc: Any) -> Decision:
        if not isinstance(doc, dict) or not isinstance(doc.get("allowed"), bool):
            return cls(False, "unavailable", "the authz reply is not a decision")
        rev = doc.get("revision")
        return cls(
            allowed=doc["allowed"],
            reason=str(doc.get("reason", "")),
            detail=str(doc.get("detail", "")),
            level=doc.get("level"),
            source=doc.get("source"),
            grantee=doc.get("grantee"),
            on_behalf=bool(doc.get("on_behalf", False)),
            revision=rev if isinstance(rev, int) else 0,
        )


def principal_json(p: Principal) -> dict[str, Any]:
    return {
        "tenant_id": p.tenant_id,
        "subject": p.subject,
        "role": p.role,
        "scopes": sorted(p.scopes),
    }


class AuthzClient:
    """Checks over NATS request-reply; remembers the newest authz revision seen per tenant."""

    def __init__(self, nc: Any, *, timeout: float = 1.0, subject: str = CHECK_SUBJECT) -> None:
        self._nc = nc
        self.timeout = timeout
        self.subject = subject
        self._latest: dict[str, int] = {}

    # --- revisions ------------------------------------------------------------------------
    def latest_revision(self, tenant_id: str) -> int | None:
        """The highest authz revision seen for the tenant (in replies, writes or events)."""
        return self._latest.get(tenant_id)

    def observe(self, tenant_id: str, revision: int | None) -> None:
        if revision is not None and revision > self._latest.get(tenant_id, 0):
            self._latest[tenant_id] = revision

    def observe_envelope(self, env: Envelope) -> None:
        """Feed an event seen on the bus: authz events carry the revision they created."""
        if env.service == "authz":
            rev = env.data.get("revision")
            if isinstance(rev, int):
                self.observe(env.tenant_id, rev)

    # --- checks ---------------------------------------------------------------------------
    async def check(
        self,
        principal: Principal,
        mailbox_id: str,
        action: str,
        at_least_as_fresh: int | None = None,
    ) -> Decision:
        request = {
            "principal": principal_json(principal),
            "mailbox_id": mailbox_id,
            "action": action,
            "at_least_as_fresh": at_least_as_fresh,
        }
        try:
            msg = await self._nc.request(
                self.subject, json.dumps(request).encode(), timeout=self.timeout
            )
            decision = Decision.from_json(json.loads(msg.data))
        except Exception as exc:  # timeout, no responders, garbage: deny by default
            log.warning("authz check failed: %s: %s", type(exc).__name__, exc)
            return Decision(False, "unavailable", f"authz did not answer: {type(exc).__name__}")
        self.observe(principal.tenant_id, decision.revision or None)
        return decision

    async def require(
        self,
        principal: Principal,
        mailbox_id: str,
        action: str,
        at_least_as_fresh: int | None = None,
    ) -> Decision:
        """Like :meth:`check` but raise ``Forbidden(code="forbidden")`` with the reason."""
        decision = await self.check(principal, mailbox_id, action, at_least_as_fresh)
        if not decision.allowed:
            raise Forbidden(
                f"{action} on mailbox {mailbox_id} is not allowed: {decision.reason}",
                code="forbidden",
                details={"reason": decision.reason, "detail": decision.detail},
            )
        return decision
