"""The sync service: watches every IMAP and POP3 mailbox, reports new mail and mailbox health.

HTTP: ``GET /v1/sync/status``, ``GET /v1/sync/mailboxes/{id}``,
``GET /v1/sync/mailboxes/{id}/history``, ``POST /v1/accounts/{id}/sync``, alert rules
(``/v1/alerts/...``, :mod:`services.sync.alerts_api`). Consumes registry
events (``mailroom.*.registry.>``, :mod:`services.sync.projection`); emits
``AccountStatusChanged``, ``SyncFailed``, ``SyncRecovered``, ``MailMissingDetected`` and
``MessageReceived`` (aggregate ``mailbox``, id = account id). Credentials are leased from the
registry; read access of non-admins is asked of authz.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from libs.common.events.envelope import Envelope
from libs.common.metrics import set_sync_states
from libs.common.service import Runtime, Service
from libs.common.settings import Settings
from libs.common.store.database import Database
from services.sync import tables
from services.sync.alerts_api import build_alerts_router
from services.sync.alerts_delivery import AlertDispatcher
from services.sync.alerts_handlers import ALERTS_DURABLE, AlertCommands, alert_reactor
from services.sync.alerts_webhook import SecretBox
from services.sync.api import ApiContext, build_router
from services.sync.ownership import Ownership
from services.sync.ports import (
    AdminOnly,
    AuthzPermissions,
    CredentialSource,
    Permissions,
    RegistryCredentials,
)
from services.sync.projection import DURABLE, registry_projection
from services.sync.repository import state_counts
from services.sync.scheduler import SyncEngine
from services.sync.settings import SyncSettings


@dataclass
class SyncService(Service):
    engine: SyncEngine | None = None
    api: ApiContext | None = None
    alerts: AlertDispatcher | None = None
    credentials_override: CredentialSource | None = None
    permissions_override: Permissions | None = None

    def use_credentials(self, source: CredentialSource) -> None:
        """Replace the registry leases (tests, benchmarks); call before or after start."""
        self.credentials_override = source
        if self.engine is not None:
            self.engine.credentials = source

    def use_permissions(self, permissions: Permissions) -> None:
        self.permissions_override = permissions
        if self.api is not None:
            self.api.permissions = permissions

    def start_consumers(self, js: Any) -> None:
        assert self.engine is not None
        engine = self.engine

        def applied(envelopes: Sequence[Envelope]) -> None:
            if self.relay is not None:
                self.relay.notify()  # status events the projection appended
            engine.registry_applied(envelopes)

        for c in self.consumers:
            if c.projection.durable == DURABLE:
                c.on_applied.append(applied)
            if c.projection.durable == ALERTS_DURABLE and self.alerts is not None:
                c.on_applied.append(self._alerts_applied)
        super().start_consumers(js)

    def _alerts_applied(self, _: Sequence[Envelope]) -> None:
        if self.alerts is not None:
            self.alerts.wake()  # the deliveries are committed: deliver them


def create_app(settings: Settings, sync_settings: SyncSettings | None = None) -> SyncService:
    sync_settings = sync_settings or SyncSettings()
    db = Database(settings.database_url_for("sync"), tables.metadata)
    engine = SyncEngine(db, sync_settings)
    api = ApiContext(db, engine, AdminOnly())
    box = SecretBox.from_settings(sync_settings, settings.data_dir)
    alerts = AlertDispatcher(db, sync_settings, box)
    svc = SyncService(
        name="sync",
        db=db,
        settings=settings,
        routers=[build_router(api), build_alerts_router(db, AlertCommands(db, box), alerts)],
        projections=[registry_projection(db.store), alert_reactor()],
        engine=engine,
        api=api,
        alerts=alerts,
    )

    async def start(_: Service, runtime: Runtime) -> None:
        engine.credentials = svc.credentials_override or RegistryCredentials(runtime.nc)
        if svc.permissions_override is not None:
            api.permissions = svc.permissions_override
        elif sync_settings.permissions == "authz" and runtime.nc is not None:
            api.permissions = AuthzPermissions(runtime.nc)
        engine.nc = runtime.nc
        if sync_settings.ownership == "kv" and runtime.js is not None:
            engine.ownership = Ownership(runtime.js, sync_settings)
        await engine.start()
        alerts.start(runtime.nc)

    async def stop(_: Service, runtime: Runtime) -> None:
        await alerts.stop()
        await engine.stop()

    async def sync_state_gauge() -> None:
        async with db.read() as conn:
            set_sync_states(await state_counts(conn))

    svc.on_start.append(start)
    svc.on_stop.append(stop)
    svc.metrics_hooks.append(sync_state_gauge)
    return svc
