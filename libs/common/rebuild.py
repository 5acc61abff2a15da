"""Rebuild a projection from the audit store (which holds every event of every service).

The projection's tables are reset and its inbox rows dropped, then every matching event is
replayed through the projection's own ``apply`` in one transaction, with fresh inbox rows, so the
live consumer neither misses nor repeats an event afterwards.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, insert, text

from libs.common.consumer import Projection
from libs.common.events.envelope import Envelope
from libs.common.store.database import Database
from libs.common.subjects import rpc_subject

REPLAY_SUBJECT = rpc_subject("audit", "replay")


class ReplayRequest(BaseModel):
    """``mailroom-rpc.audit.replay``: every tenant's events after a position."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    after: int = Field(0, ge=0)
    limit: int = Field(1000, ge=1, le=10_000)


class ReplayItem(BaseModel):
    position: int
    event: dict[str, Any] = Field(description="the envelope (CloudEvents JSON with data)")


class ReplayRefusal(BaseModel):
    code: str
    message: str


class ReplayReply(BaseModel):
    """The events and the last position, or (a malformed request) an ``error``."""

    events: list[ReplayItem] = Field(default_factory=list)
    last: int = 0
    error: ReplayRefusal | None = None


def parse_replay(body: bytes) -> ReplayRequest | dict[str, Any]:
    """The request, or the reply that refuses it (``invalid_request``)."""
    try:
        return ReplayRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        refusal = ReplayRefusal(code="invalid_request", message=f"{where}: {first['msg']}")
        return {"error": refusal.model_dump()}


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, ``>`` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, part in enumerate(p):
        if part == ">":
            return len(s) > i
        if i >= len(s) or (part != "*" and part != s[i]):
            return False
    return len(p) == len(s)


async def rebuild_from_audit(
    nc: Any, db: Database, projection: Projection, page: int = 2000
) -> int:
    """Return how many events were applied."""
    if projection.reset is None:
        raise ValueError(f"projection {projection.durable} cannot be reset")
    inbox = db.tables.inbox
    applied = 0
    async with db.write() as conn:
        if conn.dialect.name == "postgresql":
            # The live consumer waits until the rebuilt projection commits.
            await conn.execute(text("LOCK TABLE inbox IN EXCLUSIVE MODE"))
        await projection.reset(conn)
        await conn.execute(delete(inbox).where(inbox.c.consumer == projection.durable))
        after = 0
        while True:
            body = json.dumps({"after": after, "limit": page}).encode()
            reply = await nc.request(REPLAY_SUBJECT, body, timeout=30)
            data = json.loads(reply.data)
            if data.get("error"):
                raise RuntimeError(f"the audit store refused the replay: {data['error']}")
            events = [Envelope.model_validate(e["event"]) for e in data["events"]]
            wanted = [
                e for e in events if subject_matches(projection.filter_subject, e.nats_subject)
            ]
            if wanted:
                await projection.apply(conn, wanted)
                rows = [
                    {"consumer": projection.durable, "event_id": e.id, "applied_at": e.time}
                    for e in wanted
                ]
                await conn.execute(insert(inbox), rows)
                applied += len(wanted)
            if len(events) < page:
                return applied
            after = int(data["last"])
