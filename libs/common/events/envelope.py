"""The event envelope: CloudEvents 1.0 attributes plus Mailroom's tracing of who and why.

On NATS it travels in binary content mode: attributes as ``ce-*`` headers, ``Nats-Msg-Id`` set to
the event id (JetStream de-duplication), the W3C ``traceparent`` header, and the data as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.common import natsfast
from libs.common.events.base import CATALOGUE, Catalogue, Event, EventDecodeError
from libs.common.ids import new_id
from libs.common.subjects import event_subject
from libs.common.telemetry import traceparent_for_event

MSG_ID = "Nats-Msg-Id"
_CE_ATTRS = {
    "id": "ce-id",
    "source": "ce-source",
    "type": "ce-type",
    "subject": "ce-subject",
    "time": "ce-time",
    "specversion": "ce-specversion",
    "tenant_id": "ce-tenantid",
    "actor": "ce-actor",
    "correlation_id": "ce-correlationid",
    "causation_id": "ce-causationid",
    "aggregate_id": "ce-aggregateid",
    "aggregate_version": "ce-aggregateversion",
}


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Who asks, for which tenant, and why (the correlation of the whole user action)."""

    tenant_id: str
    actor: str
    correlation_id: str = field(default_factory=new_id)
    causation_id: str | None = None

    def caused_by(self, envelope: Envelope, actor: str | None = None) -> CommandContext:
        return CommandContext(
            tenant_id=envelope.tenant_id,
            actor=actor or envelope.actor,
            correlation_id=envelope.correlation_id,
            causation_id=envelope.id,
        )


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True)

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    subject: str
    time: datetime
    tenant_id: str
    actor: str
    correlation_id: str
    causation_id: str | None = None
    aggregate_id: str
    aggregate_version: int = Field(ge=1)
    data: dict[str, Any]
    traceparent: str | None = None

    @classmethod
    def wrap(
        cls,
        event: Event,
        ctx: CommandContext,
        *,
        aggregate_id: str,
        aggregate_version: int,
        traceparent: str | None = None,
    ) -> Envelope:
        return cls(
            id=new_id(),
            source=f"/mailroom/{event.service}",
            type=event.ce_type(),
            subject=f"{event.aggregate}/{aggregate_id}",
            time=datetime.now(UTC),
            tenant_id=ctx.tenant_id,
            actor=ctx.actor,
            correlation_id=ctx.correlation_id,
            causation_id=ctx.causation_id,
            aggregate_id=aggregate_id,
            aggregate_version=aggregate_version,
            data=event.model_dump(mode="json", by_alias=True),
            # the active span (HTTP request, consumed event) while tracing is on
            traceparent=traceparent or traceparent_for_event(ctx.causation_id),
        )

    @property
    def service(self) -> str:
        return self.source.rsplit("/", 1)[-1]

    @property
    def aggregate(self) -> str:
        return self.subject.split("/", 1)[0]

    @property
    def event_name(self) -> str:
        return self.type.split(".")[2]

    @property
    def nats_subject(self) -> str:
        return event_subject(
            self.tenant_id, self.service, self.aggregate, self.aggregate_id, self.event_name
        )

    def event(self, catalogue: Catalogue = CATALOGUE) -> Event:
        return catalogue.decode(self.type, self.data)

    # --- binary content mode on NATS -------------------------------------------------------
    def to_headers(self) -> dict[str, str]:
        headers = {MSG_ID: self.id, "content-type": "application/json"}
        for attr, header in _CE_ATTRS.items():
            value = getattr(self, attr)
            if value is None:
                continue
            headers[header] = value.isoformat() if isinstance(value, datetime) else str(value)
        if self.traceparent:
            headers["traceparent"] = self.traceparent
        return headers

    def header_block(self) -> str:
        """The NATS header block the event is published with, as the outbox stores it
        (ValueError for a value with a line break: refused at commit, not at publish)."""
        return natsfast.header_block(self.to_headers()).decode()

    def body(self) -> bytes:
        return json.dumps(self.data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_nats(cls, headers: dict[str, str] | None, body: bytes) -> Envelope:
        """Decode a message; raise EventDecodeError for anything that is not a valid event."""
        if not headers:
            raise EventDecodeError("message has no CloudEvents headers")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventDecodeError(f"data is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise EventDecodeError("data is not a JSON object")
        attrs: dict[str, Any] = {"data": data, "traceparent": headers.get("traceparent")}
        for attr, header in _CE_ATTRS.items():
            if header in headers:
                attrs[attr] = headers[header]
        try:
            return cls.model_validate(attrs)
        except ValidationError as exc:
            raise EventDecodeError(f"invalid envelope: {exc.errors()[0]['loc']}") from exc

    def canonical_json(self) -> bytes:
        """Deterministic JSON of the whole envelope (sorted keys, no spaces) for hashing."""
        doc = self.model_dump(mode="json", exclude={"traceparent"})
        return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
