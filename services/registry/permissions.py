"""Who may do what to a mailbox: the ``Permissions`` protocol and the registry's default.

The registry asks before every change (action ``configure``) and every single-account read
(``read``). The default, :class:`OwnerOrAdmin`, allows tenant admins everything and an employee
what concerns the accounts they own (per the registry's read table). The authz service will
provide a NATS-backed implementation with grants; it is plugged in through
``services.registry.app.create_app(settings, permissions=...)`` or ``permissions_factory=...``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, Protocol

from libs.common.auth import Principal
from libs.common.authz_client import AuthzClient
from libs.common.errors import Forbidden, NotFound
from libs.common.events.registry import OrgMailSettings
from libs.common.service import Runtime
from libs.common.store.database import Database
from services.registry.domain_org import covers
from services.registry.repository import RegistryRepository

Action = Literal["read", "write", "send", "configure"]


class Permissions(Protocol):
    async def require(
        self,
        principal: Principal,
        mailbox_id: str | None,
        action: Action,
        *,
        at_least_as_fresh: int | None = None,
    ) -> None:
        """Return if ``principal`` may do ``action`` on ``mailbox_id``; raise ``Forbidden``.

        ``mailbox_id`` None means the tenant as a whole (adding an account). An implementation
        backed by another service's read model answers only once it has reached the revision
        ``at_least_as_fresh`` (authz's per-tenant revision), so a just-granted right counts.
        """
        ...


PermissionsFactory = Callable[[Runtime], Permissions]


class OwnerOrAdmin:
    """Default: tenant admins may do everything; employees may read and configure the
    accounts they own; anyone else (other employees, service tokens) is refused."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def require(
        self,
        principal: Principal,
        mailbox_id: str | None,
        action: Action,
        *,
        at_least_as_fresh: int | None = None,
    ) -> None:
        if principal.is_admin:
            return
        if mailbox_id is None or principal.role != "employee":
            raise Forbidden(f"{action} needs a tenant admin", code="not_permitted")
        async with self.db.read() as conn:
            row = await RegistryRepository(conn, principal.tenant_id).account(mailbox_id)
        if row is None:
            raise NotFound(f"no account {mailbox_id}")
        if row.owner_id != principal.subject:
            raise Forbidden(
                f"{action} on this account needs its owner or an admin", code="not_permitted"
            )


def self_service_owner(
    principal: Principal,
    org: OrgMailSettings | None,
    address: str,
    ownership: str | None,
    owner_id: str | None,
) -> str:
    """An employee adding a mailbox for themselves (no ``configure`` on the tenant): allowed by
    the organisation's ``employee_self_service`` (default: addresses of its own domains), for a
    personal mailbox they own. Returns the owner id (the employee); raises ``Forbidden``."""
    if principal.role != "employee":
        raise Forbidden("adding a mailbox needs a tenant admin", code="not_permitted")
    policy = org.employee_self_service if org is not None else "off"
    if policy == "off" or (policy == "org_domains" and not covers(org, address)):
        where = "" if policy == "off" else " outside the organisation's domains"
        raise Forbidden(f"adding a mailbox{where} needs a tenant admin", code="not_permitted")
    if ownership == "shared" or owner_id not in (None, principal.subject):
        raise Forbidden(
            "an employee may add only a personal mailbox they own themselves",
            code="not_permitted",
        )
    return principal.subject


class PermissionsRef:
    """The implementation in use; a factory may replace it once the runtime is up."""

    def __init__(self, impl: Permissions) -> None:
        self.impl = impl

    async def require(
        self,
        principal: Principal,
        mailbox_id: str | None,
        action: Action,
        *,
        at_least_as_fresh: int | None = None,
    ) -> None:
        await self.impl.require(principal, mailbox_id, action, at_least_as_fresh=at_least_as_fresh)


#: authz reasons that mean "no such mailbox for you": answered 404 like every cross-tenant probe.
_NOT_FOUND = frozenset({"unknown_mailbox", "other_tenant", "mailbox_deleted"})


class AuthzPermissions:
    """The authz service's grants (``libs.common.authz_client``) as registry ``Permissions``.

    Adding an account (``mailbox_id`` None) has no mailbox to check and stays admin-only.
    Plug in with ``create_app(settings, permissions_factory=authz_permissions)``.
    """

    def __init__(self, client: AuthzClient) -> None:
        self.client = client

    async def require(
        self,
        principal: Principal,
        mailbox_id: str | None,
        action: Action,
        *,
        at_least_as_fresh: int | None = None,
    ) -> None:
        if principal.is_admin:
            # Tenant admins manage everything and cannot be excluded (authz answers the same);
            # deciding here spares a round trip and the wait for authz to learn a new mailbox.
            return
        if mailbox_id is None:
            raise Forbidden(f"{action} needs a tenant admin", code="not_permitted")
        fresh = at_least_as_fresh or self.client.latest_revision(principal.tenant_id)
        decision = await self.client.check(principal, mailbox_id, action, fresh)
        for _ in range(20):  # a mailbox added a moment ago may not have reached authz yet
            if decision.allowed or decision.reason != "unknown_mailbox":
                break
            await asyncio.sleep(0.05)
            decision = await self.client.check(principal, mailbox_id, action, fresh)
        if decision.allowed:
            return
        if decision.reason in _NOT_FOUND:
            raise NotFound(f"no account {mailbox_id}")
        raise Forbidden(
            f"{action} on this account is not allowed ({decision.reason})",
            code="not_permitted",
            details={"reason": decision.reason},
        )


def authz_permissions(runtime: Runtime) -> Permissions:
    return AuthzPermissions(AuthzClient(runtime.nc))
