"""Traces (OpenTelemetry): one trace per user action, across every hop.

Off by default; ``MAILROOM_OTEL_ENABLED=true`` turns it on and the OTLP/HTTP exporter then reads
the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ...). While off, every helper here is a no-op costing one check.

The hops of an action, and their spans (names never hold ids; ids go in attributes):

- HTTP request: server span ``POST /v1/accounts`` (route template), child of an incoming
  ``traceparent``. The principal's tenant and actor are set on it and bound to the logs.
- Event store: ``event_store commit`` / ``event_store transaction``. An envelope created while a
  span is active stores that span's W3C ``traceparent``; it travels in the NATS headers.
- Outbox relay: producer span ``registry.account.AccountAdded publish`` per event, child of the
  envelope's ``traceparent``; the message is published with the publish span's ``traceparent``.
- Consumers: consumer span ``registry.account.AccountAdded process`` per event (attribute
  ``mailroom.consumer`` = durable), child of the message's ``traceparent``. Events a projection
  emits while applying an event (same ``causation_id``) continue that event's trace.
- Request-reply: client span ``mailroom-rpc.registry.lease send`` injects ``traceparent`` into
  the request headers; the responder's server span ``mailroom-rpc.registry.lease process``
  extracts it (faststream middleware, or the traced NATS connection for bare subscriptions).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from libs.common import metrics
from libs.common.logs import bind_log_context, log_context_scope
from libs.common.subjects import RPC_PREFIX

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from libs.common.events.envelope import Envelope
    from libs.common.settings import Settings

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("mailroom")
_state = {"enabled": False, "configured": False}
_causes: ContextVar[dict[str, str] | None] = ContextVar("mailroom_trace_causes", default=None)
NATS = {"messaging.system": "nats"}


def enabled() -> bool:
    return _state["enabled"]


def setup_tracing(
    settings: Settings | None = None,
    *,
    service_name: str = "mailroom",
    exporter: SpanExporter | None = None,
) -> bool:
    """Turn tracing on if ``settings.otel_enabled`` (OTLP exporter) or an exporter is given."""
    if exporter is None and not (settings is not None and settings.otel_enabled):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        name = os.environ.get("OTEL_SERVICE_NAME") or service_name
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        trace.set_tracer_provider(provider)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif not _state["configured"]:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _state["configured"] = True
    _state["enabled"] = True
    return True


def disable() -> None:
    """Stop making spans (tests); exporters already added stay attached but see nothing new."""
    _state["enabled"] = False


# --- context ---------------------------------------------------------------------------------
def traceparent_of(span: Span) -> str | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    if not _state["enabled"]:
        return None
    return traceparent_of(trace.get_current_span())


def traceparent_for_event(causation_id: str | None) -> str | None:
    """The ``traceparent`` a new envelope stores: the span of the event that caused it while a
    consumer applies that event, else the active span (None while tracing is off)."""
    if not _state["enabled"]:
        return None
    causes = _causes.get()
    if causes and causation_id in causes:
        return causes[causation_id]
    return current_traceparent()


def extract(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    if not headers or "traceparent" not in headers:
        return None
    return _PROPAGATOR.extract({"traceparent": headers["traceparent"]})


def inject(headers: dict[str, str]) -> dict[str, str]:
    if _state["enabled"]:
        _PROPAGATOR.inject(headers)
    return headers


@contextlib.contextmanager
def span(
    name: str, attributes: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[Span | None]:
    """A span around a block (None and nothing recorded while tracing is off)."""
    if not _state["enabled"]:
        yield None
        return
    with _tracer.start_as_current_span(name, kind=kind, attributes=attributes) as s:
        yield s


def _end(s: Span, error: BaseException | None) -> None:
    if error is not None:
        s.set_status(Status(StatusCode.ERROR, type(error).__name__))
        s.set_attribute("error.type", type(error).__name__)
    s.end()


def bind_principal(tenant_id: str, actor: str) -> None:
    """Who is calling: on the active span and in every log line of this request."""
    bind_log_context(tenant_id=tenant_id, actor=actor)
    if _state["enabled"]:
        s = trace.get_current_span()
        s.set_attribute("mailroom.tenant_id", tenant_id)
        s.set_attribute("enduser.id", actor)


# --- outbox relay ----------------------------------------------------------------------------
class Publishing:
    """The publish spans and counts of one outbox batch (see :class:`OutboxRelay`)."""

    def __init__(self, rows: Sequence[Any], loads: Callable[[str], dict[str, str]]) -> None:
        self.rows = rows
        self._loads = loads
        self._spans: list[Span] = []

    @property
    def tracing(self) -> bool:
        """Whether :meth:`headers` adds a ``traceparent`` (publish spans are on)."""
        return bool(_state["enabled"])

    def headers(self, row: Any) -> dict[str, str]:
        headers = self._loads(row.headers)
        if not _state["enabled"]:
            return headers
        template = metrics.event_template(row.subject)
        s = _tracer.start_span(
            f"{template} publish",
            context=extract(headers),
            kind=SpanKind.PRODUCER,
            attributes={
                **NATS,
                "messaging.destination.name": template,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.message.id": str(headers.get("Nats-Msg-Id", "")),
                "mailroom.subject": row.subject,
                "messaging.batch.message_count": len(self.rows),
            },
        )
        self._spans.append(s)
        tp = traceparent_of(s)
        if tp:
            headers["traceparent"] = tp
        return headers

    def done(self, published: int, error: BaseException | None = None) -> None:
        metrics.count_published(r.subject for r in self.rows[:published])
        for i, s in enumerate(self._spans):
            _end(s, None if i < published else (error or RuntimeError("not acknowledged")))
        self._spans.clear()


# --- consumers -------------------------------------------------------------------------------
@contextlib.contextmanager
def processing(durable: str, events: Sequence[Envelope]) -> Iterator[None]:
    """Consumer spans (one per event, child of its ``traceparent``) around applying a batch;
    the tenant and actor of a single-tenant batch are bound to the logs."""
    with log_context_scope():
        tenants = {e.tenant_id for e in events}
        if len(tenants) == 1:
            bind_log_context(tenant_id=next(iter(tenants)))
            if len(events) == 1:
                bind_log_context(actor=events[0].actor)
        if not _state["enabled"]:
            yield
            return
        spans: list[Span] = []
        causes: dict[str, str] = {}
        for e in events:
            template = f"{e.service}.{e.aggregate}.{e.event_name}"
            s = _tracer.start_span(
                f"{template} process",
                context=extract({"traceparent": e.traceparent} if e.traceparent else None),
                kind=SpanKind.CONSUMER,
                attributes={
                    **NATS,
                    "messaging.destination.name": template,
                    "messaging.operation.type": "process",
                    "messaging.consumer.group.name": durable,
                    "messaging.message.id": e.id,
                    "messaging.batch.message_count": len(events),
                    "mailroom.consumer": durable,
                    "mailroom.tenant_id": e.tenant_id,
                    "mailroom.aggregate_id": e.aggregate_id,
                    "mailroom.correlation_id": e.correlation_id,
                },
            )
            spans.append(s)
            tp = traceparent_of(s)
            if tp:
                causes[e.id] = tp
        token = _causes.set(causes)
        error: BaseException | None = None
        try:
            if len(spans) == 1:  # one event: its span is current (the projection's own spans)
                with trace.use_span(spans[0], end_on_exit=False):
                    yield
            else:
                yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            _causes.reset(token)
            for s in spans:
                _end(s, error)


# --- request-reply ---------------------------------------------------------------------------
def _rpc_attrs(subject: str, operation: str) -> dict[str, Any]:
    return {
        **NATS,
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
    }


class TracedNats:
    """A NATS connection whose RPC requests carry ``traceparent`` and whose RPC subscriptions
    (``mailroom-rpc.…``) run their callback in a server span. Everything else is passed on."""

    def __init__(self, nc: Any) -> None:
        self._nc = nc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Any:
        if not _state["enabled"] or not subject.startswith(RPC_PREFIX + "."):
            return await self._nc.request(subject, payload, timeout, old_style, headers)
        kind = SpanKind.CLIENT
        with _tracer.start_as_current_span(
            f"{subject} send", kind=kind, attributes=_rpc_attrs(subject, "send")
        ):
            return await self._nc.request(
                subject, payload, timeout, old_style, inject(dict(headers or {}))
            )

    async def subscribe(self, subject: str, *args: Any, **kwargs: Any) -> Any:
        cb = kwargs.get("cb")
        if cb is not None and subject.startswith(RPC_PREFIX + "."):
            kwargs["cb"] = _traced_callback(subject, cb)
        return await self._nc.subscribe(subject, *args, **kwargs)


def _traced_callback(subject: str, cb: Callable[[Any], Awaitable[None]]) -> Any:
    async def traced(msg: Any) -> None:
        if not _state["enabled"]:
            await cb(msg)
            return
        with _tracer.start_as_current_span(
            f"{subject} process",
            context=extract(msg.headers),
            kind=SpanKind.SERVER,
            attributes=_rpc_attrs(subject, "process"),
        ):
            await cb(msg)

    return traced


def rpc_middleware() -> Any:
    """A faststream middleware: request-reply handlers run in a server span."""
    from faststream import BaseMiddleware

    class RpcTracing(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            if not _state["enabled"]:
                return await call_next(msg)
            subject = str(getattr(msg.raw_message, "subject", "") or "")
            if not subject.startswith(RPC_PREFIX + "."):
                return await call_next(msg)
            with (
                log_context_scope(),
                _tracer.start_as_current_span(
                    f"{subject} process",
                    context=extract(msg.headers),
                    kind=SpanKind.SERVER,
                    attributes=_rpc_attrs(subject, "process"),
                ),
            ):
                return await call_next(msg)

    return RpcTracing


# --- HTTP ------------------------------------------------------------------------------------
_UNTRACED = ("/healthz", "/readyz", "/metrics")


class HttpObservability:
    """ASGI middleware: a server span, request metrics by route template, a log context."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET"))
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        start = time.perf_counter()
        s: Span | None = None
        token: Any = None
        if _state["enabled"] and scope.get("path") not in _UNTRACED:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            s = _tracer.start_span(
                f"{method}",
                context=extract(headers),
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": method,
                    "url.path": str(scope.get("path", "")),
                    "url.scheme": str(scope.get("scheme", "http")),
                },
            )
            token = otel_context.attach(trace.set_span_in_context(s))
        error: BaseException | None = None
        try:
            with log_context_scope():
                await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            error = exc
            raise
        finally:
            route = scope.get("route")
            template = str(getattr(route, "path", "")) or "unmatched"
            elapsed = time.perf_counter() - start
            metrics.http_requests.labels(method, template, str(status["code"])).inc()
            metrics.http_request_duration.labels(method, template).observe(elapsed)
            if s is not None:
                s.update_name(f"{method} {template}")
                s.set_attribute("http.route", template)
                s.set_attribute("http.response.status_code", status["code"])
                if status["code"] >= 500 and error is None:
                    s.set_status(Status(StatusCode.ERROR))
                _end(s, error)
            if token is not None:
                otel_context.detach(token)
