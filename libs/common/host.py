"""Run one or many services in this process: one HTTP app, one NATS broker, shared runtime.

``python -m services.<name>`` runs one (as a Kubernetes pod does); ``mailroom up`` runs all five.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from faststream.nats import NatsBroker

from libs.common import telemetry
from libs.common.auth import TokenIssuer, TokenVerifier, load_or_create_key
from libs.common.http import install_error_handlers
from libs.common.metrics import CONTENT_TYPE_LATEST, HostMetrics
from libs.common.nats import connect, ensure_streams
from libs.common.service import Runtime, Service
from libs.common.settings import Settings

log = logging.getLogger("mailroom.host")


STOP_STEP_S = 20.0


async def _bounded(step: Any, what: str) -> None:
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=STOP_STEP_S)
    if task in done:
        task.result()
        return
    me = asyncio.current_task()
    stacks = "\n".join(task_chain(t) for t in asyncio.all_tasks() if t is not me)
    log.error(
        "stopping %s took over %.0f s; cancelled. Pending tasks:\n%s", what, STOP_STEP_S, stacks
    )
    task.cancel()
    await asyncio.wait({task}, timeout=5.0)


def task_chain(task: asyncio.Task[Any]) -> str:
    """A task and the whole chain of coroutines it awaits, innermost last (``Task.print_stack``
    shows only the outermost frame of a suspended task)."""
    lines = [f"--- {task.get_name()}"]
    coro: Any = task.get_coro()
    for _ in range(40):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        lines.append(f"  {code.co_filename}:{frame.f_lineno} {code.co_qualname}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    if coro is not None:
        lines.append(f"  awaits {coro!r:.200}")
    return "\n".join(lines)


def make_runtime(settings: Settings) -> Runtime:
    key = load_or_create_key(settings.auth_key_path())
    verifier = TokenVerifier.from_settings(key.public_key(), settings)
    return Runtime(settings=settings, verifier=verifier, issuer=TokenIssuer(key))


def tune_gc(gen0_threshold: int) -> None:
    """Fewer, cheaper garbage collections for a process that allocates per event.

    Everything alive once the host has started (modules, apps, pools) is moved out of the
    collector's sight (``gc.freeze``), and the youngest generation is collected every
    ``gen0_threshold`` allocations instead of every 700: event decoding allocates many short-lived
    objects, and each young collection also walked the long-lived ones (bench/pipeline.py)."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


class Host:
    def __init__(self, services: list[Service], settings: Settings, nats_url: str) -> None:
        self.services = services
        self.settings = settings
        self.nats_url = nats_url
        self.runtime = make_runtime(settings)
        self.broker: NatsBroker | None = None
        self.started = False
        self.metrics = HostMetrics(services)
        telemetry.setup_tracing(settings, service_name=_service_name(services))

    async def start(self) -> None:
        # aiosqlite runs every statement on a worker thread; with the default 5 ms GIL switch
        # interval a busy event loop makes each hand-back wait up to 5 ms (bench/pipeline.py:
        # group commit 1.9k → 3.9k commands/s at 1 ms).
        sys.setswitchinterval(self.settings.gil_switch_interval_s)
        rt = self.runtime
        rt.nc = await connect(
            self.nats_url, name="mailroom-" + "-".join(s.name for s in self.services)
        )
        rt.js = rt.nc.jetstream()
        self.metrics.js = rt.js
        if telemetry.enabled():  # RPC requests and bare RPC subscriptions carry traceparent
            rt.nc = telemetry.TracedNats(rt.nc)
        await ensure_streams(rt.js, self.settings.stream_replicas)
        middlewares = [telemetry.rpc_middleware()] if telemetry.enabled() else []
        self.broker = NatsBroker(
            self.nats_url, logger=None, max_reconnect_attempts=-1, middlewares=middlewares
        )
        for svc in self.services:
            await svc.start(rt)
            svc.wire_consumers(lambda: rt.js)
            self.broker.include_router(svc.nats)
        await self.broker.start()
        for svc in self.services:
            svc.start_consumers(rt.js)
        tune_gc(self.settings.gc_gen0_threshold)
        self.started = True

    async def stop(self) -> None:
        """Stop the broker, then each service, each step bounded (``STOP_STEP_S``): a step
        that hangs is logged with what every pending task awaits, and the shutdown goes on."""
        self.started = False
        if self.broker is not None:
            await _bounded(self.broker.stop(), "the NATS broker")
        for svc in reversed(self.services):
            await _bounded(svc.stop(), f"the {svc.name} service")
        if self.runtime.nc is not None:
            with contextlib.suppress(Exception):
                await _bounded(self.runtime.nc.close(), "the NATS connection")

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        names = ", ".join(s.name for s in self.services)
        app = FastAPI(
            title="Mailroom API",
            version="1",
            description=f"Mailroom services in this process: {names}",
            lifespan=lifespan,
            **_native_telemetry_off(),
        )
        app.state.runtime = self.runtime
        app.state.host = self
        install_error_handlers(app)
        app.add_middleware(telemetry.HttpObservability)
        for svc in self.services:
            for router in svc.routers:
                app.include_router(router)

        @app.get("/healthz", tags=["health"])
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/readyz", tags=["health"])
        async def readyz() -> Any:
            checks = {"nats": bool(self.runtime.nc and self.runtime.nc.is_connected)}
            for svc in self.services:
                checks[f"db.{svc.name}"] = await svc.ready()
            ok = self.started and all(checks.values())
            return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

        @app.get("/metrics", tags=["health"], include_in_schema=False)
        async def metrics() -> Response:
            """Prometheus metrics (text format), see libs/common/metrics.py."""
            body = await self.metrics.exposition()
            return Response(body, media_type=CONTENT_TYPE_LATEST)

        return app


def _native_telemetry_off() -> dict[str, Any]:
    """FastAPI ≥ 0.16x makes its own HTTP spans and metrics: ours (libs.common.telemetry)
    replace them, so a request has one server span, named by its route template."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _service_name(services: list[Service]) -> str:
    if len(services) == 1:
        return f"mailroom-{services[0].name}"
    return "mailroom"


def serve(app: FastAPI, settings: Settings) -> None:
    import uvicorn

    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning")
