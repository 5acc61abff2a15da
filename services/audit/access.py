"""Who may read which audit entries.

A tenant admin reads the tenant's whole trail (query, verify, export, replay). Anyone else —
an employee or a service account — reads only the entries of one mailbox (``aggregate_id`` of
an ``account`` or ``mailbox`` aggregate), and only with Read on that mailbox, as the authz
service answers (``mailroom-rpc.authz.check``, action ``read``; deny by default). A non-admin
query without a mailbox is refused 403 ``mailbox_required``; a mailbox the caller cannot know
(another tenant's, deleted, unknown) is 404 ``mailbox_not_found``; one the caller may not read
is 403 ``forbidden`` with authz's reason.

Checks pass ``at_least_as_fresh``: the newest authz revision the audit consumer has stored (authz
events carry it), so a revocation already in the trail is never answered from older state.
Without an authz service (``MAILROOM_AUTHZ_MODE=local``) only admins read the trail.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.auth import Principal
from libs.common.authz_client import AuthzClient
from libs.common.consumer import Apply
from libs.common.errors import Forbidden, NotFound
from libs.common.events.envelope import Envelope
from services.audit.projection import append_to_chain

#: Aggregates whose id is a mailbox id: a non-admin's query is restricted to them.
MAILBOX_AGGREGATES = ("account", "mailbox")
#: authz reasons meaning "no such mailbox for you": 404, as for any cross-tenant probe.
NOT_FOUND = frozenset({"unknown_mailbox", "other_tenant", "mailbox_deleted"})


class AuditAccess:
    """Decides reads of the trail; ``client`` is set when the service starts (authz mode)."""

    def __init__(self) -> None:
        self.client: AuthzClient | None = None
        self._latest: dict[str, int] = {}

    def observe(self, events: Sequence[Envelope]) -> None:
        """Remember the newest authz revision per tenant seen in consumed events."""
        for env in events:
            if env.service == "authz":
                rev = env.data.get("revision")
                if isinstance(rev, int) and rev > self._latest.get(env.tenant_id, 0):
                    self._latest[env.tenant_id] = rev

    def latest_revision(self, tenant_id: str) -> int | None:
        known = [self._latest.get(tenant_id)]
        if self.client is not None:
            known.append(self.client.latest_revision(tenant_id))
        revisions = [r for r in known if r is not None]
        return max(revisions) if revisions else None

    async def require_mailbox_read(self, caller: Principal, mailbox_id: str | None) -> None:
        """Return if the caller may read the entries of ``mailbox_id`` (None: the whole trail)."""
        if caller.is_admin:
            return
        if self.client is None:
            raise Forbidden("reading the audit trail needs a tenant admin", code="admin_required")
        if mailbox_id is None:
            raise Forbidden(
                "only a tenant admin reads the whole trail: name a mailbox you may read "
                "(aggregate_id)",
                code="mailbox_required",
            )
        fresh = self.latest_revision(caller.tenant_id)
        decision = await self.client.check(caller, mailbox_id, "read", fresh)
        if decision.allowed:
            return
        if decision.reason in NOT_FOUND:
            raise NotFound(f"no mailbox {mailbox_id}", code="mailbox_not_found")
        raise Forbidden(
            f"reading the trail of mailbox {mailbox_id} needs read on it ({decision.reason})",
            code="forbidden",
            details={"reason": decision.reason},
        )

    def projection(self) -> Apply:
        """The audit consumer's apply: append to the chain, then note authz revisions."""

        async def apply(conn: AsyncConnection, events: Sequence[Envelope]) -> None:
            await append_to_chain(conn, events)
            self.observe(events)

        return apply
