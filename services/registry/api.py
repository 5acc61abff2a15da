"""Registry HTTP API under /v1: accounts, their credentials, KEK administration, presets.

Every change asks :class:`Permissions` for ``configure`` first; handlers then run the command
in one transaction. Responses never carry a secret (``has_credential``/``credential_version``).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from libs.common.auth import Principal
from libs.common.errors import Forbidden, MailroomError, NotFound
from libs.common.events.envelope import CommandContext
from libs.common.events.registry import Ownership, Protocol
from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database
from services.registry.api_models import (
    AccountIn,
    AccountOut,
    AccountPage,
    AccountPatch,
    CredentialIn,
    DeletedOut,
    DisableIn,
    KeyStatusOut,
    PresetList,
    PresetOut,
    RetireIn,
    RetireOut,
    RotateIn,
    RotateOut,
)
from services.registry.autofill import Autofill
from services.registry.domain import accounts
from services.registry.handlers import Handlers, Idempotency
from services.registry.handlers_credentials import CredentialHandlers
from services.registry.handlers_org import OrgHandlers
from services.registry.netguard import Network
from services.registry.permissions import Permissions, self_service_owner
from services.registry.presets import list_presets
from services.registry.repository import AccountFilter, RegistryRepository

_CURSOR = re.compile(r"^[0-9A-Za-z-]{1,64}\Z")
_ETAG = re.compile(r'^(?:W/)?"?([0-9]{1,10})"?$')

IfMatch = Annotated[str | None, Header(description="the account's version (optimistic lock)")]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]


def context(caller: Caller) -> CommandContext:
    return CommandContext(tenant_id=caller.tenant_id, actor=caller.actor)


def cursor_of(value: str | None) -> str | None:
    if value is not None and not _CURSOR.match(value):
        raise MailroomError("cursor must come from next_cursor", code="invalid_cursor")
    return value


def expected_version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    m = _ETAG.match(if_match.strip())
    if not m:
        raise MailroomError("If-Match must be the version from ETag", code="invalid_if_match")
    return int(m.group(1))


def build_router(
    h: Handlers,
    ch: CredentialHandlers,
    perms: Permissions,
    db: Database,
    org_h: OrgHandlers,
    network: Network,
) -> APIRouter:
    r = APIRouter(prefix="/v1", responses=ERRORS)  # type: ignore[arg-type]

    async def view(
        tenant_id: str,
        account_id: str,
        response: Response | None = None,
    ) -> AccountOut:
        async with db.read() as conn:
            row = await RegistryRepository(conn, tenant_id).account(account_id)
        if row is None:
            raise NotFound(f"no account {account_id}")
        if response is not None:
            response.headers["ETag"] = f'"{row.version}"'
        return AccountOut.of(row)

    # --- accounts ---------------------------------------------------------------------------
    @r.post(
        "/accounts",
        response_model=AccountOut,
        status_code=status.HTTP_201_CREATED,
        tags=["accounts"],
    )
    async def add_account(
        caller: Caller, body: AccountIn, response: Response, idempotency_key: IdempotencyKey = None
    ) -> AccountOut:
        """Add an account. Repeating the request with the same ``Idempotency-Key`` and body
        returns the same account instead of adding a second one.

        Without ``preset_id`` and ``incoming`` the servers are filled in from the organisation's
        mail settings (an address in its domains), a built-in preset, or discovery (header
        ``Mailroom-Servers-From``): address and password are enough. An employee may add a
        personal mailbox they own when the organisation's ``employee_self_service`` allows."""
        org = await org_h.mail_settings(caller.tenant_id)
        owner_id = body.owner_id
        try:
            await perms.require(caller, None, "configure")
        except Forbidden:
            owner_id = self_service_owner(caller, org, body.address, body.ownership, owner_id)
        values = body.values()
        values.pop("owner_id", None)
        values.pop("ownership", None)
        fill = await Autofill(network, org).fill(
            body.address, body.protocol, body.preset_id, values
        )
        response.headers["Mailroom-Servers-From"] = fill.source
        cmd = accounts.AddAccount(
            address=body.address,
            protocol=fill.protocol,
            preset_id=fill.preset_id,
            ownership=body.ownership or "personal",
            owner_id=owner_id,
            values=fill.values,
        )
        idem = Idempotency(idempotency_key, body.fingerprint()) if idempotency_key else None
        account_id, replayed = await h.add_account(context(caller), cmd, body.password, idem)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return await view(caller.tenant_id, account_id, response)

    @r.get("/accounts", response_model=AccountPage, tags=["accounts"])
    async def list_accounts(
        caller: Caller,
        status: Annotated[str | None, Query(pattern="^(active|disabled)$")] = None,
        owner: Annotated[str | None, Query(max_length=64)] = None,
        ownership: Ownership | None = None,
        protocol: Protocol | None = None,
        q: Annotated[str | None, Query(max_length=200, description="address or name")] = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> AccountPage:
        """Accounts of the tenant; an employee sees the accounts they own."""
        if not caller.is_admin:
            owner = caller.subject
        f = AccountFilter(
            status=status, owner_id=owner, ownership=ownership, protocol=protocol, q=q
        )
        async with db.read() as conn:
            rows = await RegistryRepository(conn, caller.tenant_id).accounts(
                f, cursor_of(cursor), limit
            )
        nxt = rows[-1].id if len(rows) == limit else None
        return AccountPage(items=[AccountOut.of(row) for row in rows], next_cursor=nxt)

    @r.get("/accounts/{account_id}", response_model=AccountOut, tags=["accounts"])
    async def get_account(caller: Caller, account_id: str, response: Response) -> AccountOut:
        await perms.require(caller, account_id, "read")
        return await view(caller.tenant_id, account_id, response)

    @r.patch("/accounts/{account_id}", response_model=AccountOut, tags=["accounts"])
    async def update_account(
        caller: Caller,
        account_id: str,
        body: AccountPatch,
        response: Response,
        if_match: IfMatch = None,
    ) -> AccountOut:
        """Change settings; refused (409 ``account_disabled``) while the account is disabled."""
        await perms.require(caller, account_id, "configure")
        await h.update_account(
            context(caller), account_id, body.values(), expected_version(if_match)
        )
        return await view(caller.tenant_id, account_id, response)

    @r.post("/accounts/{account_id}/disable", response_model=AccountOut, tags=["accounts"])
    async def disable_account(
        caller: Caller,
        account_id: str,
        response: Response,
        body: DisableIn | None = None,
        if_match: IfMatch = None,
    ) -> AccountOut:
        """No sync, no send, no edits until reactivated; history is kept."""
        await perms.require(caller, account_id, "configure")
        reason = body.reason if body else ""
        await h.disable_account(context(caller), account_id, reason, expected_version(if_match))
        return await view(caller.tenant_id, account_id, response)

    @r.post("/accounts/{account_id}/reactivate", response_model=AccountOut, tags=["accounts"])
    async def reactivate_account(
        caller: Caller, account_id: str, response: Response, if_match: IfMatch = None
    ) -> AccountOut:
        await perms.require(caller, account_id, "configure")
        await h.reactivate_account(context(caller), account_id, expected_version(if_match))
        return await view(caller.tenant_id, account_id, response)

    @r.delete("/accounts/{account_id}", response_model=DeletedOut, tags=["accounts"])
    async def delete_account(
        caller: Caller, account_id: str, if_match: IfMatch = None
    ) -> DeletedOut:
        """Irreversible: the stored credential is crypto-shredded (its blob row deleted)."""
        await perms.require(caller, account_id, "configure")
        deleted = await h.delete_account(context(caller), account_id, expected_version(if_match))
        return DeletedOut(
            id=account_id, address=deleted.address, credential_shredded=deleted.credential_shredded
        )

    @r.put("/accounts/{account_id}/credential", response_model=AccountOut, tags=["accounts"])
    async def replace_credential(
        caller: Caller,
        account_id: str,
        body: CredentialIn,
        response: Response,
        if_match: IfMatch = None,
    ) -> AccountOut:
        """Replace the password or token (CredentialRotated, cause ``replaced``)."""
        await perms.require(caller, account_id, "configure")
        await ch.replace_credential(
            context(caller), account_id, body.password, expected_version(if_match)
        )
        return await view(caller.tenant_id, account_id, response)

    # --- key administration -----------------------------------------------------------------
    async def usage(tenant_id: str) -> dict[str, int]:
        return {str(k): n for k, n in sorted((await ch.key_usage(tenant_id)).items())}

    def key_admin(caller: Principal) -> bool:
        return caller.tenant_id in ch.settings.key_admin_tenants

    @r.get("/admin/keys", response_model=KeyStatusOut, tags=["keys"])
    async def key_status(caller: Caller) -> KeyStatusOut:
        caller.require_admin()
        ring = ch.keys.ring
        return KeyStatusOut(
            active_version=ring.active_version,
            versions=list(ring.versions),
            managed=ch.keys.managed,
            blobs_by_version=await usage(caller.tenant_id),
        )

    @r.post("/admin/keys/rotate", response_model=RotateOut, tags=["keys"])
    async def rotate_keys(caller: Caller, body: RotateIn | None = None) -> RotateOut:
        """Re-wrap every credential of the tenant under the active KEK (no plaintext is
        decrypted). With the embedded key file a new KEK version is generated first."""
        caller.require_admin()
        generate = body.generate if body else None
        if not key_admin(caller):
            if generate:
                raise Forbidden(
                    "adding a KEK version changes the key ring of every tenant: it needs an "
                    "admin of a key-admin tenant (MAILROOM_REGISTRY_KEY_ADMIN_TENANTS)",
                    code="key_admin_required",
                )
            generate = False  # re-wrap this tenant's credentials under the active KEK only
        res = await ch.rotate_keys(context(caller), generate)
        return RotateOut(
            generated=res.generated,
            active_version=res.active_version,
            versions=list(res.versions),
            rewrapped=res.rewrapped,
            failed=res.failed,
            blobs_by_version=await usage(caller.tenant_id),
        )

    @r.post("/admin/keys/retire", response_model=RetireOut, tags=["keys"])
    async def retire_key(caller: Caller, body: RetireIn) -> RetireOut:
        """Drop a KEK version; 409 ``kek_in_use`` while any credential is wrapped under it;
        403 ``key_admin_required`` unless the caller administers a key-admin tenant."""
        caller.require_admin()
        if not key_admin(caller):
            raise Forbidden(
                "retiring a KEK version changes the key ring of every tenant: it needs an "
                "admin of a key-admin tenant (MAILROOM_REGISTRY_KEY_ADMIN_TENANTS)",
                code="key_admin_required",
            )
        res = await ch.retire_key(body.version)
        message = (
            f"KEK version {res.version} removed from the embedded key file"
            if res.removed_from_keyring
            else f"no credential uses KEK version {res.version}: remove it from the mounted "
            "key secret (MAILROOM_KEKS / MAILROOM_KEKS_FILE)"
        )
        return RetireOut(
            version=res.version,
            removed_from_keyring=res.removed_from_keyring,
            active_version=res.active_version,
            versions=list(res.versions),
            message=message,
        )

    # --- presets ----------------------------------------------------------------------------
    @r.get("/presets", response_model=PresetList, tags=["presets"])
    async def presets(caller: Caller) -> PresetList:
        """Built-in provider presets (``preset_id`` of ``POST /v1/accounts``)."""
        return PresetList(
            items=[
                PresetOut(
                    id=p.id,
                    name=p.name,
                    kind=p.kind,
                    domains=list(p.domains),
                    incoming=p.incoming.model_dump() if p.incoming else None,
                    outgoing=p.outgoing.model_dump() if p.outgoing else None,
                    auth_modes=list(p.auth_modes),
                    hints=list(p.hints),
                    requires_ews_url=p.requires_ews_url,
                )
                for p in list_presets()
            ]
        )

    return r
