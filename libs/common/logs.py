"""Logging: JSON lines with trace ids, tenant and actor; a redaction filter on every record.

The filter removes bearer tokens and JWTs, ``password=…``-style pairs, PEM blocks, and every
secret value the process has handled (``remember_secret`` is called wherever a credential is
decrypted), so a secret cannot reach a log even through an exception message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_PATTERNS = [
    (re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [REDACTED]"),
    # HTTP Basic (EWS with a password): base64 of "user:password", which no remembered value
    # matches as such.
    (
        re.compile(r"\b[Bb]asic\s+(?=[A-Za-z0-9+/]*[0-9+/])[A-Za-z0-9+/]{8,}={0,2}"),
        "Basic [REDACTED]",
    ),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[REDACTED-JWT]"),
    (
        re.compile(
            r"(?i)\b(password|passwd|secret|token|api_key|client_secret)(\"?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&}]+)"
        ),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"-----BEGIN [A-Z ]+-----[\s\S]+?-----END [A-Z ]+-----"), "[REDACTED-PEM]"),
]
_known: OrderedDict[str, None] = OrderedDict()
_MAX_KNOWN = 10_000
# Tenant and actor of the request or event being handled. A mutable dict, so that a value bound
# in a copied context (FastAPI runs sync dependencies in a thread) reaches the request's logs.
_context: ContextVar[dict[str, str] | None] = ContextVar("mailroom_log_context", default=None)


@contextmanager
def log_context_scope() -> Iterator[dict[str, str]]:
    """A fresh log context (tenant, actor) for one request or consumed batch."""
    values: dict[str, str] = {}
    token = _context.set(values)
    try:
        yield values
    finally:
        _context.reset(token)


def bind_log_context(**values: str) -> None:
    """Add ``tenant_id``/``actor`` (or more) to every later log line of this scope."""
    current = _context.get()
    if current is None:
        _context.set(dict(values))
    else:
        current.update(values)


def remember_secret(value: str) -> None:
    """Scrub this exact value from every later log record (kept for the last 10,000)."""
    if len(value) < 4:
        return
    _known[value] = None
    _known.move_to_end(value)
    while len(_known) > _MAX_KNOWN:
        _known.popitem(last=False)


def redact(text: str) -> str:
    for secret in _known:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = redact(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("tenant_id", "actor", "trace_id", "span_id", "event_id", "correlation_id"):
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        for key, value in (_context.get() or {}).items():
            doc.setdefault(key, value)
        try:
            from opentelemetry import trace

            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                doc.setdefault("trace_id", format(ctx.trace_id, "032x"))
                doc.setdefault("span_id", format(ctx.span_id, "016x"))
        except Exception:  # noqa: S110 - tracing is optional
            pass
        return redact(json.dumps(doc, ensure_ascii=False))


def setup_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactionFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aioimaplib logs the IMAP wire at DEBUG: mail content, and a LOGIN password containing
    # '"' or '\\' in its quoted form, which neither its scrub nor ours recognises
    # (tests/e2e/test_canary_full_run.py).
    quiet = ("faststream", "nats", "httpx", "aiosqlite", "uvicorn.access", "alembic", "aioimaplib")
    for name in quiet:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
