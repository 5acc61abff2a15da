"""``mailroom-rpc.authz.check``: checks over NATS request-reply.

The contract (request and reply JSON) is documented in ``libs.common.authz_client``.

A bare nats-py queue subscription (queue group ``authz``, so replicas share the load) rather
than a faststream subscriber: on the hot path it saves about half of the round trip (see
bench/authz.py). A check that is already fresh is answered inline; one that must wait for the
index to reach ``at_least_as_fresh`` is answered from its own task, so it never delays others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from libs.common.auth import Principal, Role
from libs.common.authz_client import CHECK_SUBJECT, Decision
from services.authz.index import AuthzIndex

log = logging.getLogger("mailroom.authz.rpc")
QUEUE = "authz"


class RpcPrincipal(BaseModel):
    tenant_id: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    role: Role
    scopes: list[str] = Field(default_factory=list)


class CheckRequest(BaseModel):
    principal: RpcPrincipal
    mailbox_id: str
    action: str
    at_least_as_fresh: int | None = None


def parse(body: bytes) -> CheckRequest | dict[str, Any]:
    """The request, or the reply that refuses it (malformed: deny, ``bad_request``)."""
    try:
        return CheckRequest.model_validate(json.loads(body))
    except (ValidationError, ValueError) as exc:
        return {**Decision(False, "bad_request", str(exc)[:200]).to_json(), "tenant_id": None}


async def answer(index: AuthzIndex, req: CheckRequest) -> dict[str, Any]:
    p = req.principal
    principal = Principal(p.tenant_id, p.subject, p.role, scopes=frozenset(p.scopes))
    d = await index.check_fresh(principal, req.mailbox_id, req.action, req.at_least_as_fresh)
    return {**d.to_json(), "tenant_id": p.tenant_id}


class CheckResponder:
    def __init__(self, index: AuthzIndex, subject: str = CHECK_SUBJECT) -> None:
        self.index = index
        self.subject = subject
        self._sub: Any = None
        self._waiting: set[asyncio.Task[None]] = set()

    async def start(self, nc: Any) -> None:
        self._sub = await nc.subscribe(self.subject, queue=QUEUE, cb=self._on_message)
        await nc.flush()

    async def _on_message(self, msg: Any) -> None:
        req = parse(msg.data)
        if isinstance(req, dict):
            await self._respond(msg, req)
            return
        tenant = req.principal.tenant_id
        fresh = req.at_least_as_fresh
        if fresh is None or self.index.revision(tenant) >= fresh:
            await self._respond(msg, await answer(self.index, req))
            return
        task = asyncio.create_task(self._answer_later(msg, req))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _answer_later(self, msg: Any, req: CheckRequest) -> None:
        await self._respond(msg, await answer(self.index, req))

    @staticmethod
    async def _respond(msg: Any, reply: dict[str, Any]) -> None:
        try:
            await msg.respond(json.dumps(reply, separators=(",", ":")).encode())
        except Exception as exc:  # no reply subject, connection closing: the caller times out
            log.warning("authz check reply failed: %s", exc)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for task in list(self._waiting):
            task.cancel()
