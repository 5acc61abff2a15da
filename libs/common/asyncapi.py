"""The AsyncAPI 3.0 document of Mailroom's NATS interface, generated from the code.

Every event of the catalogue (``libs.common.events.CATALOGUE``) is a channel
``mailroom.{tenant}.<service>.<aggregate>.{aggregate_id}.<Event>`` of the ``MAILROOM`` stream,
in CloudEvents binary mode (``ce-*`` headers, ``Nats-Msg-Id``, ``traceparent``; the payload is
the pydantic model's JSON). Request-reply subjects (``mailroom-rpc.…``) and the dead-letter
subjects are described too. ``docs/asyncapi.json`` (and ``.yaml``) are written by
``mailroom docs asyncapi`` or ``python -m libs.common.asyncapi``; a test fails when they are
out of date.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from libs.common.events import CATALOGUE, Catalogue, Event
from libs.common.leases import LEASE_SUBJECT, Lease, LeaseRequest
from libs.common.rebuild import REPLAY_SUBJECT, ReplayReply, ReplayRequest
from libs.common.subjects import DLQ_PREFIX, DLQ_STREAM, PREFIX, STREAM, rpc_subject

DOCS = Path(__file__).resolve().parents[2] / "docs"
REF = "#/components/schemas/{model}"


# --- request-reply contracts (kept in step with libs.common.authz_client and services) -------
class CheckPrincipal(BaseModel):
    tenant_id: str
    subject: str
    role: Literal["admin", "employee", "service"]
    scopes: list[str] = Field(default_factory=list)


class CheckRequest(BaseModel):
    """May ``principal`` do ``action`` on a mailbox? (``libs.common.authz_client``)"""

    principal: CheckPrincipal
    mailbox_id: str
    action: str
    at_least_as_fresh: int | None = None


class CheckReply(BaseModel):
    """A decision; no reply at all is a denial (``unavailable``)."""

    allowed: bool
    reason: str
    detail: str = ""
    level: str | None = None
    source: str | None = None
    grantee: str | None = None
    on_behalf: bool = False
    revision: int = 0
    tenant_id: str | None = None


class LeaseRefusal(BaseModel):
    code: str
    message: str


class LeaseReply(BaseModel):
    """``{"ok": true, "lease": …}`` or ``{"ok": false, "error": …}``; ``secret`` in clear."""

    ok: bool
    lease: Lease | None = None
    error: LeaseRefusal | None = None


Contract = tuple[str, str, type[BaseModel], type[BaseModel]]
RPC: list[Contract] = [
    (LEASE_SUBJECT, "A mailbox credential for sync or sender; audited.", LeaseRequest, LeaseReply),
    (rpc_subject("authz", "check"), "A permission check.", CheckRequest, CheckReply),
    (REPLAY_SUBJECT, "Envelopes after a position.", ReplayRequest, ReplayReply),
]
# Contracts whose models live with their service (``CONTRACT`` of the module), loaded when the
# document is built: libs never import services statically.
SERVICE_RPC = ["services.registry.employee_status", "services.sender.rpc"]


def contracts() -> list[Contract]:
    """Every request-reply subject: the shared ones above and the services' own."""
    own = [importlib.import_module(m).CONTRACT for m in SERVICE_RPC]
    return [*RPC, *own]


CE_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0 binary mode on NATS, plus Mailroom's extensions.",
    "required": [
        "Nats-Msg-Id",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-subject",
        "ce-time",
        "ce-specversion",
        "ce-tenantid",
        "ce-actor",
        "ce-correlationid",
        "ce-aggregateid",
        "ce-aggregateversion",
    ],
    "properties": {
        "Nats-Msg-Id": {"type": "string", "description": "= ce-id (JetStream de-duplication)"},
        "content-type": {"type": "string", "const": "application/json"},
        "ce-id": {"type": "string", "description": "event id (UUIDv7)"},
        "ce-source": {"type": "string", "description": "/mailroom/<service>"},
        "ce-type": {"type": "string", "description": "mailroom.<service>.<Event>.v<version>"},
        "ce-subject": {"type": "string", "description": "<aggregate>/<aggregate id>"},
        "ce-time": {"type": "string", "format": "date-time"},
        "ce-specversion": {"type": "string", "const": "1.0"},
        "ce-tenantid": {"type": "string"},
        "ce-actor": {"type": "string", "description": "admin:<id>, employee:<id>, service:<x>"},
        "ce-correlationid": {"type": "string", "description": "the whole user action"},
        "ce-causationid": {"type": "string", "description": "the event that caused this one"},
        "ce-aggregateid": {"type": "string"},
        "ce-aggregateversion": {"type": "string", "pattern": "^[1-9][0-9]*$"},
        "traceparent": {"type": "string", "description": "W3C trace context"},
    },
}


def _schemas(models: list[type[BaseModel]]) -> tuple[dict[str, str], dict[str, Any]]:
    keys, top = models_json_schema(
        [(m, "serialization") for m in models], ref_template=REF, title="Mailroom"
    )
    refs = {m.__name__: str(keys[(m, "serialization")]["$ref"]) for m in models}
    return refs, dict(top.get("$defs", {}))


def _event_channel(cls: type[Event], ref: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    name = cls.event_name
    cid = f"{cls.service}.{cls.aggregate}.{name}"
    doc = (cls.__doc__ or "").strip()
    message = {
        "name": name,
        "title": f"{name} v{cls.event_version}",
        "summary": doc.splitlines()[0] if doc else f"{cls.service}: {name}",
        "contentType": "application/json",
        "correlationId": {"location": "$message.header#/ce-correlationid"},
        "headers": {
            "allOf": [
                {"$ref": "#/components/schemas/CloudEventsHeaders"},
                {
                    "type": "object",
                    "properties": {
                        "ce-type": {"const": cls.ce_type()},
                        "ce-source": {"const": f"/mailroom/{cls.service}"},
                    },
                },
            ]
        },
        "payload": {"$ref": ref},
    }
    if doc:
        message["description"] = doc
    channel = {
        "address": f"{PREFIX}.{{tenant}}.{cls.service}.{cls.aggregate}.{{aggregate_id}}.{name}",
        "title": cid,
        "description": f"{name} events of stream {STREAM} (CloudEvents type {cls.ce_type()}).",
        "parameters": {
            "tenant": {"description": "tenant id"},
            "aggregate_id": {"description": f"id of the {cls.aggregate}"},
        },
        "messages": {name: {"$ref": f"#/components/messages/{name}"}},
    }
    return cid, channel, message


def build(catalogue: Catalogue = CATALOGUE) -> dict[str, Any]:
    """The whole document (deterministic: sorted by event name)."""
    events = catalogue.classes()
    rpc = contracts()
    rpc_models = [m for _, _, req, rep in rpc for m in (req, rep)]
    refs, defs = _schemas([*events, *rpc_models])
    defs["CloudEventsHeaders"] = CE_HEADERS
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for cls in events:
        cid, channel, message = _event_channel(cls, refs[cls.__name__])
        channels[cid] = channel
        messages[cls.event_name] = message
        operations[f"{cid}.publish"] = {
            "action": "send",
            "title": f"{cid} publish",
            "summary": f"The {cls.service} service publishes {cls.event_name} (outbox relay).",
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{cls.event_name}"}],
        }
    for subject, summary, req, rep in rpc:
        cid = subject.removeprefix("mailroom-rpc.")
        for suffix, model in (("request", req), ("reply", rep)):
            messages[f"{cid}.{suffix}"] = {
                "name": model.__name__,
                "contentType": "application/json",
                "headers": {
                    "type": "object",
                    "properties": {"traceparent": {"type": "string"}},
                },
                "payload": {"$ref": refs[model.__name__]},
            }
        channels[cid] = {
            "address": subject,
            "title": subject,
            "description": f"{summary} Request-reply, never persisted.",
            "messages": {"request": {"$ref": f"#/components/messages/{cid}.request"}},
        }
        channels[f"{cid}.reply"] = {
            "address": None,
            "description": "The requester's inbox (the NATS reply subject).",
            "messages": {"reply": {"$ref": f"#/components/messages/{cid}.reply"}},
        }
        operations[f"{cid}.serve"] = {
            "action": "receive",
            "title": f"{subject} process",
            "summary": summary,
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/request"}],
            "reply": {
                "channel": {"$ref": f"#/channels/{cid}.reply"},
                "messages": [{"$ref": f"#/channels/{cid}.reply/messages/reply"}],
            },
        }
    channels["dead-letters"] = {
        "address": f"{DLQ_PREFIX}.{{durable}}",
        "title": "dead letters",
        "description": f"Events a consumer gave up on, in stream {DLQ_STREAM}: the original "
        "body and headers plus Mailroom-Dlq-Reason, -Subject, -Consumer, -Deliveries, "
        "-Stream-Seq.",
        "parameters": {"durable": {"description": "the consumer that gave up"}},
        "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
    }
    messages["deadLetter"] = {
        "name": "DeadLetter",
        "headers": {
            "type": "object",
            "properties": {
                h: {"type": "string"}
                for h in (
                    "Mailroom-Dlq-Reason",
                    "Mailroom-Dlq-Subject",
                    "Mailroom-Dlq-Consumer",
                    "Mailroom-Dlq-Deliveries",
                    "Mailroom-Dlq-Stream-Seq",
                )
            },
        },
        "payload": {"description": "the original message body, unchanged"},
    }
    operations["dead-letters.publish"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/dead-letters"},
        "messages": [{"$ref": "#/channels/dead-letters/messages/deadLetter"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Mailroom events and internal RPC",
            "version": "1",
            "description": "Generated by `mailroom docs asyncapi` from libs.common.events; do "
            "not edit. Events are read with a durable JetStream consumer on stream "
            f"{STREAM} (see examples/subscriber.py); old versions of an event are read as the "
            "newest through the catalogue's upcasters.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The organisation's NATS (MAILROOM_NATS_URL), JetStream enabled.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(defs.items())), "messages": messages},
    }


def render(doc: dict[str, Any]) -> dict[str, str]:
    """File name → content: ``asyncapi.json`` and, with PyYAML installed, ``asyncapi.yaml``."""
    out = {"asyncapi.json": json.dumps(doc, indent=2, ensure_ascii=False) + "\n"}
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a test/dev dependency
        return out
    out["asyncapi.yaml"] = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    return out


def write(directory: Path = DOCS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(build()).items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS):
        print(p)
