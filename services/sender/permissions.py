"""Who may send from a mailbox: the ``Permissions`` protocol and its two implementations.

The answer is an ``authz_client.Decision``: besides allowed or not, it says ``on_behalf``
(the principal sends for the mailbox, so the message gets a ``Sender`` header naming them).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from libs.common.auth import Principal
from libs.common.authz_client import AuthzClient, Decision
from libs.common.errors import Conflict, Forbidden, NotFound

_NOT_FOUND = frozenset({"unknown_mailbox", "other_tenant"})
_CONFLICT = {"mailbox_disabled": "mailbox_disabled", "mailbox_deleted": "mailbox_deleted"}


class Permissions(Protocol):
    async def check_send(
        self, principal: Principal, mailbox_id: str, at_least_as_fresh: int | None = None
    ) -> Decision:
        """May ``principal`` send from ``mailbox_id``? Answered from a read model at least as
        fresh as the authz revision ``at_least_as_fresh`` when it is given."""
        ...


class AdminOnly:
    """The default until authz is wired: tenant admins may send from any mailbox of their
    tenant (as the mailbox, no Sender header); nobody else may."""

    async def check_send(
        self, principal: Principal, mailbox_id: str, at_least_as_fresh: int | None = None
    ) -> Decision:
        if principal.is_admin:
            return Decision(True, "admin")
        return Decision(False, "no_access", "sending needs a tenant admin until grants apply")

    async def check_configure(
        self, principal: Principal, mailbox_id: str, at_least_as_fresh: int | None = None
    ) -> Decision:
        if principal.is_admin:
            return Decision(True, "admin")
        return Decision(False, "no_access", "configuring needs a tenant admin until grants apply")


class AuthzPermissions:
    """The authz service's Send grants (``mailroom-rpc.authz.check``)."""

    def __init__(self, client: AuthzClient) -> None:
        self.client = client

    async def check_send(
        self, principal: Principal, mailbox_id: str, at_least_as_fresh: int | None = None
    ) -> Decision:
        fresh = at_least_as_fresh or self.client.latest_revision(principal.tenant_id)
        return await self.client.check(principal, mailbox_id, "send", fresh)

    async def check_configure(
        self, principal: Principal, mailbox_id: str, at_least_as_fresh: int | None = None
    ) -> Decision:
        fresh = at_least_as_fresh or self.client.latest_revision(principal.tenant_id)
        return await self.client.check(principal, mailbox_id, "configure", fresh)


@runtime_checkable
class ConfigurePermissions(Protocol):
    """Who may configure a mailbox (its autoreply): Configure in authz, admins otherwise."""

    async def check_configure(
        self, principal: Principal, mailbox_id: str, at_least_as_fresh: int | None = None
    ) -> Decision: ...


async def check_configure(
    permissions: object, principal: Principal, mailbox_id: str, at_least_as_fresh: int | None = None
) -> Decision:
    """Ask ``permissions`` for Configure; one that only answers Send (a test's, say) leaves
    configuring to tenant admins."""
    if isinstance(permissions, ConfigurePermissions):
        return await permissions.check_configure(principal, mailbox_id, at_least_as_fresh)
    return await AdminOnly().check_configure(principal, mailbox_id, at_least_as_fresh)


def require(decision: Decision, mailbox_id: str) -> Decision:
    """Raise the HTTP error a denial means: 404 for a mailbox the caller cannot know, 409 for
    a disabled or deleted one, 403 otherwise."""
    if decision.allowed:
        return decision
    if decision.reason in _NOT_FOUND:
        raise NotFound(f"no mailbox {mailbox_id}")
    if decision.reason in _CONFLICT:
        raise Conflict(
            f"mailbox {mailbox_id} is {decision.reason.split('_')[1]}",
            code=_CONFLICT[decision.reason],
        )
    raise Forbidden(
        f"sending from mailbox {mailbox_id} is not allowed ({decision.reason})",
        code="forbidden",
        details={"reason": decision.reason, "detail": decision.detail},
    )
