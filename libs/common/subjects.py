"""NATS subjects.

Events: ``mailroom.<tenant>.<service>.<aggregate>.<id>.<Event>`` — all in one JetStream stream
``MAILROOM`` (see README, "Why one stream"). Request-reply (RPC) lives outside the stream under
``mailroom-rpc.<service>.<operation>`` so that requests are never persisted as events.
Dead letters go to ``mailroom-dlq.<durable>`` in the ``MAILROOM_DLQ`` stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "mailroom"
STREAM = "MAILROOM"
DLQ_STREAM = "MAILROOM_DLQ"
DLQ_PREFIX = "mailroom-dlq"
RPC_PREFIX = "mailroom-rpc"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\Z")
# A tenant id (a subject token of at most 64 characters), for pydantic ``pattern=`` fields
TENANT_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class SubjectError(ValueError):
    pass


def _token(value: str, what: str) -> str:
    if not _TOKEN.match(value):
        raise SubjectError(f"{what} {value!r} is not a valid subject token")
    return value


_EVENT_SUBJECT = re.compile(r"^mailroom(?:\.[A-Za-z0-9_-]+){5}\Z")


def event_subject(tenant: str, service: str, aggregate: str, agg_id: str, event: str) -> str:
    subject = f"{PREFIX}.{tenant}.{service}.{aggregate}.{agg_id}.{event}"
    if _EVENT_SUBJECT.match(subject):  # one check for the whole subject (per event, hot)
        return subject
    parts = (  # which part is wrong
        _token(tenant, "tenant"),
        _token(service, "service"),
        _token(aggregate, "aggregate"),
        _token(agg_id, "aggregate id"),
        _token(event, "event"),
    )
    return ".".join((PREFIX, *parts))


@dataclass(frozen=True, slots=True)
class ParsedSubject:
    tenant: str
    service: str
    aggregate: str
    aggregate_id: str
    event: str

    @property
    def template(self) -> str:
        """Bounded-cardinality name for spans and metrics (no ids)."""
        return f"{self.service}.{self.aggregate}.{self.event}"


def parse_subject(subject: str) -> ParsedSubject:
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise SubjectError(f"not a Mailroom event subject: {subject!r}")
    return ParsedSubject(*parts[1:])


def service_filter(service: str, tenant: str = "*") -> str:
    return f"{PREFIX}.{tenant}.{_token(service, 'service')}.>"


def dlq_subject(durable: str) -> str:
    return f"{DLQ_PREFIX}.{_token(durable, 'durable')}"


def rpc_subject(service: str, operation: str) -> str:
    return f"{RPC_PREFIX}.{_token(service, 'service')}.{_token(operation, 'operation')}"
