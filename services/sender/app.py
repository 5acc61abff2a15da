"""The sender service: sends mail from any mailbox with the right identity, exactly once per
Idempotency-Key, within the mailbox's daily limit, with retries and an optional Sent copy.

HTTP: ``POST /v1/mailboxes/{id}/messages``, ``GET /v1/mailboxes/{id}/messages/{send_id}``,
``GET /v1/mailboxes/{id}/sending``. NATS request-reply: ``mailroom-rpc.sender.send``.
Consumes registry events (``mailroom.*.registry.>``). Emits MessageSent and SendFailed.
The autoresponder (``autoreply*.py``): ``PUT/GET/DELETE /v1/mailboxes/{id}/autoreply``, answers
sync's MessageReceived, sets/clears the offboarding autoreply; emits AutoreplySet/Cleared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from libs.common.authz_client import AuthzClient
from libs.common.service import Runtime, Service
from libs.common.settings import Settings
from libs.common.store.database import Database
from services.sender import tables
from services.sender.api import build_router
from services.sender.autoreply_api import build_autoreply_router
from services.sender.autoreply_handlers import (
    STAFF_DURABLE,
    AutoreplyCommands,
    mail_reactor,
    offboarding_reactor,
)
from services.sender.autoreply_responder import Responder
from services.sender.credentials import CredentialSource, RegistryLeases
from services.sender.handlers import SenderHandlers
from services.sender.offboarding import RegistryDirectory
from services.sender.permissions import AuthzPermissions, Permissions
from services.sender.ports import Wiring
from services.sender.projection import registry_projection
from services.sender.rpc import SEND_SUBJECT, serve_send
from services.sender.settings import SenderSettings
from services.sender.signatures import ProjectedSignatures
from services.sender.worker import Dispatcher


@dataclass
class SenderService(Service):
    handlers: SenderHandlers | None = None
    dispatcher: Dispatcher | None = None
    wiring: Wiring | None = None
    responder: Responder | None = None

    def wire_consumers(self, js: Callable[[], Any]) -> None:
        super().wire_consumers(js)
        assert self.handlers is not None
        for consumer in self.consumers:  # cached mailboxes follow the registry at once
            consumer.on_applied.append(self.handlers.views.forget)
            if self.wiring is not None and isinstance(self.wiring.signatures, ProjectedSignatures):
                consumer.on_applied.append(self.wiring.signatures.forget)
            if consumer.name == STAFF_DURABLE:  # it appends AutoreplySet/Cleared: publish now
                consumer.on_applied.append(lambda _: self.relay.notify() if self.relay else None)


def create_app(
    settings: Settings,
    *,
    config: SenderSettings | None = None,
    permissions: Permissions | None = None,
    credentials: CredentialSource | None = None,
) -> SenderService:
    """``permissions`` / ``credentials`` replace the defaults (``MAILROOM_SENDER_PERMISSIONS``,
    credentials leased from the registry); both can also be swapped later on ``svc.wiring``."""
    config = config or SenderSettings()
    db = Database(settings.database_url_for("sender"), tables.metadata)
    wiring = Wiring(signatures=ProjectedSignatures(db, config.mailbox_cache_s))
    if permissions is not None:
        wiring.permissions = permissions
    if credentials is not None:
        wiring.credentials = credentials
    handlers = SenderHandlers(db, config, wiring)
    dispatcher = Dispatcher(db, handlers, config)
    responder = Responder(db, handlers, config.poll_s)
    svc = SenderService(
        name="sender",
        db=db,
        settings=settings,
        routers=[build_router(handlers), build_autoreply_router(AutoreplyCommands(db), wiring)],
        projections=[registry_projection(), mail_reactor(responder.wake), offboarding_reactor(db)],
        handlers=handlers,
        dispatcher=dispatcher,
        wiring=wiring,
        responder=responder,
    )

    async def start(_: Service, runtime: Runtime) -> None:
        if credentials is None:
            wiring.credentials = RegistryLeases(runtime.nc)
        wiring.directory = RegistryDirectory(runtime.nc)
        mode = config.permissions or ("authz" if settings.authz_mode == "service" else "admin_only")
        if permissions is None and mode == "authz":
            wiring.permissions = AuthzPermissions(AuthzClient(runtime.nc))
        dispatcher.start()
        responder.start()

    async def stop(_: Service, runtime: Runtime) -> None:
        await responder.stop()
        await dispatcher.stop()

    svc.on_start.append(start)
    svc.on_stop.append(stop)

    @svc.nats.subscriber(SEND_SUBJECT, queue="sender")
    async def send(body: Any) -> dict[str, Any]:
        """Internal: send for another service (contract in ``services.sender.rpc``)."""
        return await serve_send(handlers, body)

    return svc
