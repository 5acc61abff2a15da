"""The console alone, as its pod runs it (``python -m services.console``).

It needs no NATS and no database: only the services' HTTP APIs (``MAILROOM_CONSOLE_*_URL``) and
the key or OIDC settings to verify sign-ins, like every service.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from libs.common import telemetry
from libs.common.host import make_runtime
from libs.common.http import install_error_handlers
from libs.common.metrics import CONTENT_TYPE_LATEST, HostMetrics
from libs.common.settings import Settings
from services.console.app import create_app


def standalone_app(settings: Settings) -> FastAPI:
    svc = create_app(settings)
    runtime = make_runtime(settings)
    metrics = HostMetrics([svc])
    telemetry.setup_tracing(settings, service_name="mailroom-console")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await svc.start(runtime)
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(title="Mailroom console", openapi_url=None, docs_url=None, lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(telemetry.HttpObservability)
    for router in svc.routers:
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Any:
        ok = await svc.ready()
        return JSONResponse(
            {"ready": ok, "checks": {"console": ok}}, status_code=200 if ok else 503
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
