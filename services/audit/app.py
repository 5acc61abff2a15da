"""The audit service: consumes every event of every service into the tenant hash chains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faststream.nats.annotations import NatsMessage

from libs.common.authz_client import AuthzClient
from libs.common.consumer import Projection
from libs.common.rebuild import REPLAY_SUBJECT, parse_replay
from libs.common.service import Runtime, Service
from libs.common.settings import Settings
from libs.common.store.database import Database
from libs.common.subjects import PREFIX
from services.audit import tables
from services.audit.access import AuditAccess
from services.audit.api import build_router
from services.audit.repository import replay_all

DURABLE = "audit"


@dataclass
class AuditService(Service):
    access: AuditAccess = field(default_factory=AuditAccess)


def create_app(settings: Settings) -> AuditService:
    db = Database(settings.database_url_for("audit"), tables.metadata)
    access = AuditAccess()
    svc = AuditService(
        access=access,
        name="audit",
        db=db,
        settings=settings,
        routers=[build_router(db, access)],
        projections=[Projection(DURABLE, f"{PREFIX}.>", access.projection())],
        writes_events=False,
    )
    svc.schema_setup = (
        tables.APPEND_ONLY_POSTGRES if db.dialect == "postgresql" else tables.APPEND_ONLY_SQLITE
    )

    @svc.nats.subscriber(REPLAY_SUBJECT, queue="audit")
    async def replay(msg: NatsMessage) -> dict[str, Any]:
        """Internal: every tenant's events after a position, for projection rebuilds."""
        req = parse_replay(msg.body)
        if isinstance(req, dict):  # malformed: refused (a typed argument would not answer)
            return req
        async with db.read() as conn:
            rows = await replay_all(conn, req.after, req.limit)
        return {
            "events": [{"position": p, "event": e.model_dump(mode="json")} for p, e in rows],
            "last": rows[-1][0] if rows else req.after,
        }

    async def start(_: Service, runtime: Runtime) -> None:
        if settings.authz_mode == "service":  # else (local): only admins read the trail
            access.client = AuthzClient(runtime.nc)

    svc.on_start.append(start)
    return svc
