"""The registry service: accounts, credentials, employees and departments of every tenant."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libs.common.leases import LEASE_SUBJECT
from libs.common.service import Runtime, Service
from libs.common.settings import Settings
from libs.common.store.database import Database
from services.registry import tables
from services.registry.api import build_router
from services.registry.api_connect import build_connect_router
from services.registry.api_employees import build_employee_router
from services.registry.api_import import build_import_router
from services.registry.api_oauth import build_oauth_router
from services.registry.api_signatures import build_signature_router
from services.registry.employee_status import EMPLOYEE_SUBJECT, serve_employee_status
from services.registry.handlers import Handlers
from services.registry.handlers_import import ImportHandlers
from services.registry.handlers_org import OrgHandlers
from services.registry.handlers_signatures import SignatureHandlers
from services.registry.lease import serve_lease
from services.registry.netguard import Network
from services.registry.oauth_client import OAuthHttp
from services.registry.oauth_config import OAuthClients
from services.registry.oauth_flow import OAuthFlow
from services.registry.oauth_lease import OAuthCredentialHandlers
from services.registry.offboarding import build_offboarding_router
from services.registry.permissions import (
    OwnerOrAdmin,
    Permissions,
    PermissionsFactory,
    PermissionsRef,
    authz_permissions,
)
from services.registry.projection import RegistryProjector
from services.registry.settings import KeyStore, RegistrySettings, load_keystore

LEASE_WORKERS = 32


def create_app(
    settings: Settings,
    *,
    permissions: Permissions | None = None,
    permissions_factory: PermissionsFactory | None = None,
    keystore: KeyStore | None = None,
    registry_settings: RegistrySettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> Service:
    """Build the service. ``permissions`` replaces the default owner-or-admin rule; a
    ``permissions_factory`` (e.g. the authz service's NATS client) is called with the runtime
    once the service starts."""
    db = Database(
        settings.database_url_for("registry"), tables.metadata, projector=RegistryProjector()
    )
    keys = keystore or load_keystore(settings, environ)
    handlers = Handlers(db, keys, registry_settings or RegistrySettings())
    rs = handlers.settings
    # OAuth2 accounts lease a current access token (refreshed) instead of their token document.
    oauth_http = OAuthHttp(timeout_s=rs.oauth_timeout_s, ca_file=rs.ca_file)
    credentials = OAuthCredentialHandlers(handlers, OAuthClients.from_env(environ), oauth_http)
    perms = PermissionsRef(permissions or OwnerOrAdmin(db))
    network = Network.create(
        dns_server=rs.dns_server,
        ca_file=rs.ca_file,
        autoconfig_urls=rs.autoconfig_urls,
        discovery_timeout=rs.discovery_timeout_s,
        connect_timeout=rs.connect_timeout_s,
        allow_private=rs.allow_private_targets,
    )
    org = OrgHandlers(db)
    importer = ImportHandlers(handlers, org, network)
    if permissions is None and permissions_factory is None and settings.authz_mode == "service":
        permissions_factory = authz_permissions
    svc = Service(
        name="registry",
        db=db,
        settings=settings,
        routers=[
            build_router(handlers, credentials, perms, db, org, network),
            build_employee_router(handlers, db),
            build_offboarding_router(db),
            build_connect_router(org, credentials, perms, db, network),
            build_import_router(importer, db),
            build_signature_router(SignatureHandlers(db), perms, db),
            build_oauth_router(OAuthFlow(db, credentials), perms),
        ],
    )

    if permissions_factory is not None:

        async def plug_permissions(_: Service, runtime: Runtime) -> None:
            perms.impl = permissions_factory(runtime)

        svc.on_start.append(plug_permissions)

    # One replica answers each lease; up to LEASE_WORKERS at once per replica, so that their
    # CredentialAccessed commits are grouped (one at a time held a starting sync worker to
    # ~115 leases/s).
    @svc.nats.subscriber(LEASE_SUBJECT, queue="registry", max_workers=LEASE_WORKERS)
    async def lease(body: Any) -> dict[str, Any]:
        """Internal: a credential for sync or sender, audited as CredentialAccessed."""
        return await serve_lease(credentials, body)

    @svc.nats.subscriber(EMPLOYEE_SUBJECT, queue="registry")
    async def employee_status(body: Any) -> dict[str, Any]:
        """Internal: is an employee active (the sender asks before an employee's send)."""
        return await serve_employee_status(db, body)

    return svc
