"""Registry HTTP API: discovery, connection tests and the organisation's mail settings.

``GET /v1/discover`` shows where an address's servers would come from, with every discovery
step. ``POST /v1/accounts/test`` connects for real with an account as it would be added (body
as ``POST /v1/accounts``, nothing stored); ``POST /v1/accounts/{id}/test`` with a saved one and
its stored secret, opened in this process only (audited, never returned).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from libs.common.auth import Principal
from libs.common.errors import NotFound
from libs.common.events.registry import AccountAdded, OrgMailSettings, Server
from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database
from services.registry import domain_org
from services.registry.api import context
from services.registry.api_models import AccountIn
from services.registry.api_models_connect import (
    AccountTestOut,
    DiscoverOut,
    OrgMailSettingsIn,
    OrgMailSettingsOut,
    SavedTestIn,
)
from services.registry.autofill import Autofill
from services.registry.connect import Credential, check_account
from services.registry.domain import accounts
from services.registry.domain_accounts import AccountState
from services.registry.handlers_credentials import CredentialHandlers
from services.registry.handlers_org import OrgHandlers
from services.registry.netguard import Network, Reach
from services.registry.permissions import Permissions
from services.registry.presets import preset_for_domain
from services.registry.repository import RegistryRepository

Timeout = Annotated[float | None, Query(ge=0.5, le=60, description="per-step timeout in seconds")]


def reach_for(
    network: Network, caller: Principal, org: OrgMailSettings | None, servers: list[Server]
) -> Reach:
    """Admins may test servers on private networks; employees too when every server is the
    organisation's own. Loopback and link-local only with the setting."""
    own = org is not None and all(s in (org.incoming, org.outgoing) for s in servers)
    return network.reach(caller.is_admin or own)


def build_connect_router(
    org_h: OrgHandlers,
    ch: CredentialHandlers,
    perms: Permissions,
    db: Database,
    network: Network,
) -> APIRouter:
    r = APIRouter(prefix="/v1", responses=ERRORS)  # type: ignore[arg-type]

    # --- organisation mail settings ---------------------------------------------------------
    @r.put("/org/mail-settings", response_model=OrgMailSettingsOut, tags=["organisation"])
    async def put_org_settings(caller: Caller, body: OrgMailSettingsIn) -> OrgMailSettingsOut:
        """Set the organisation's servers (admin). Accounts with an address in ``domains``
        can then be added with only address and password (OrgMailSettingsChanged)."""
        caller.require_admin()
        cmd = domain_org.SetMailSettings(
            incoming=body.incoming.spec(),
            domains=body.domains,
            outgoing=body.outgoing.spec() if body.outgoing else None,
            username_template=body.username_template,
            auth_mode=body.auth_mode,
            allow_insecure=body.allow_insecure,
            polling_interval_s=body.polling_interval_s,
            employee_self_service=body.employee_self_service,
        )
        settings, changed = await org_h.set_mail_settings(context(caller), cmd)
        return OrgMailSettingsOut(**settings.model_dump(), changed=changed)

    @r.get("/org/mail-settings", response_model=OrgMailSettings, tags=["organisation"])
    async def get_org_settings(caller: Caller) -> OrgMailSettings:
        """The organisation's servers; 404 ``no_org_settings`` until an admin sets them."""
        found = await org_h.mail_settings(caller.tenant_id)
        return domain_org.require(domain_org.OrgState("", settings=found))

    # --- discovery --------------------------------------------------------------------------
    @r.get("/discover", response_model=DiscoverOut, tags=["accounts"])
    async def discover_servers(
        caller: Caller, address: Annotated[str, Query(max_length=320)]
    ) -> DiscoverOut:
        """The servers for an address: built-in preset, MX, SRV, then autoconfig, with each
        step tried. Autoconfig fetches never reach non-public addresses unless
        MAILROOM_REGISTRY_ALLOW_PRIVATE_TARGETS allows them."""
        org = await org_h.mail_settings(caller.tenant_id)
        filler = Autofill(network, org)
        result = await filler.discover(address, domain_org.domain_of(address))
        org_domain = domain_org.covers(org, result.address)
        source = (
            "org_settings"
            if org_domain
            else "preset"
            if preset_for_domain(result.domain)
            else "discovery"
            if result.found
            else "none"
        )
        return DiscoverOut(**result.model_dump(), servers_from=source, org_domain=org_domain)

    # --- connection tests -------------------------------------------------------------------
    @r.post("/accounts/test", response_model=AccountTestOut, tags=["accounts"])
    async def test_new_account(
        caller: Caller, body: AccountIn, timeout_s: Timeout = None
    ) -> AccountTestOut:
        """Connect to the servers of an account as it would be added (the same body as
        ``POST /v1/accounts``); nothing is stored."""
        if caller.role == "service":
            caller.require_admin()
        org = await org_h.mail_settings(caller.tenant_id)
        values = body.values()
        values.pop("owner_id", None)
        values.pop("ownership", None)
        fill = await Autofill(network, org).fill(
            body.address, body.protocol, body.preset_id, values
        )
        [added] = accounts.decide(
            accounts.AddAccount(
                address=body.address,
                protocol=fill.protocol,
                preset_id=fill.preset_id,
                values=fill.values,
            ),
            AccountState("new"),
        )
        assert isinstance(added, AccountAdded)
        s = added.settings
        outgoing = s.custom_smtp or s.outgoing
        servers = [x for x in (s.incoming, outgoing) if x is not None]
        cred = Credential(s.username, body.password, s.auth_mode)
        report = await check_account(
            network,
            s.incoming,
            outgoing,
            cred,
            reach=reach_for(network, caller, org, servers),
            timeout=timeout_s,
        )
        return AccountTestOut(**report.model_dump(), servers_from=fill.source)

    @r.post("/accounts/{account_id}/test", response_model=AccountTestOut, tags=["accounts"])
    async def test_saved_account(
        caller: Caller,
        account_id: str,
        body: SavedTestIn | None = None,
        timeout_s: Timeout = None,
    ) -> AccountTestOut:
        """Connect to a saved account's servers with its stored secret (opened here only,
        audited as CredentialAccessed, purpose ``connection_test``) or the ``password`` sent."""
        await perms.require(caller, account_id, "configure")
        password = body.password if body else None
        if password is None:
            grant = await ch.open_for_test(context(caller), account_id)
            settings, secret = grant.settings, grant.secret
        else:
            async with db.read() as conn:
                row = await RegistryRepository(conn, caller.tenant_id).account(account_id)
            if row is None:
                raise NotFound(f"no account {account_id}")
            settings, secret = row.settings, password
        org = await org_h.mail_settings(caller.tenant_id)
        outgoing = settings.custom_smtp or settings.outgoing
        servers = [x for x in (settings.incoming, outgoing) if x is not None]
        report = await check_account(
            network,
            settings.incoming,
            outgoing,
            Credential(settings.username, secret, settings.auth_mode),
            reach=reach_for(network, caller, org, servers),
            timeout=timeout_s,
        )
        return AccountTestOut(**report.model_dump(), account_id=account_id)

    return r
