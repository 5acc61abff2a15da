"""The autoresponder's commands and reactions.

* ``AutoreplyCommands``: set, read and clear a mailbox's autoreply (the HTTP API); each change
  commits with its event (AutoreplySet / AutoreplyCleared) in one transaction.
* ``mail_reactor``: consumes sync's ``MessageReceived``; for a mailbox with an active autoreply
  it decides (``autoreply.decide``) and, in the consumer's transaction with its inbox row,
  records the correspondent as answered and queues the reply (``sender_autoreply_pending``).
  The responder (``autoreply_responder``) hands it to the normal send path with an
  Idempotency-Key derived from the mailbox and the message, so a redelivered event, a replayed
  one or a crash anywhere in between sends nothing twice.
* ``offboarding_reactor``: consumes the registry's employee events; EmployeeOffboarded with an
  autoreply text sets it on the leaver's mailboxes (AutoreplySet caused by the offboarding),
  EmployeeReinstated clears what that offboarding set.

Both reactors are reactions, not projections: they have no ``reset`` and are never rebuilt
from the audit store (that would answer old mail or emit their events again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import Projection
from libs.common.errors import Conflict, NotFound
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.registry import EmployeeOffboarded, EmployeeReinstated
from libs.common.events.sender import AutoreplyCleared, AutoreplySet
from libs.common.events.sync import MessageReceived
from libs.common.store.database import Database
from libs.common.subjects import PREFIX
from services.sender import autoreply
from services.sender.autoreply_repository import AutoreplyRepository, Stored
from services.sender.models import Address, MessageIn, Signature
from services.sender.repository import SenderRepository

log = logging.getLogger("mailroom.sender.autoreply")
ACTOR = "service:sender-autoreply"
MAIL_DURABLE = "sender-autoreply-mail"
MAIL_FILTER = f"{PREFIX}.*.sync.mailbox.*.MessageReceived"
STAFF_DURABLE = "sender-autoreply-offboarding"
STAFF_FILTER = f"{PREFIX}.*.registry.employee.>"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _values(
    rule: autoreply.Rule, source: str, employee_id: str | None, actor: str
) -> dict[str, Any]:
    return {
        "text": rule.text,
        "html": rule.html,
        "subject": rule.subject,
        "starts_at": rule.starts_at,
        "ends_at": rule.ends_at,
        "interval_days": rule.interval_days,
        "source": source,
        "employee_id": employee_id,
        "set_at": rule.set_at,
        "set_by": actor,
    }


def _same(a: autoreply.Rule, b: autoreply.Rule) -> bool:
    fields = ("text", "html", "subject", "starts_at", "ends_at", "interval_days")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


async def set_rule(
    conn: AsyncConnection,
    db: Database,
    ctx: CommandContext,
    mailbox_id: str,
    rule: autoreply.Rule,
    *,
    source: str = "api",
    employee_id: str | None = None,
) -> Envelope | None:
    """Store ``rule`` and append AutoreplySet; nothing if the same rule is already set the
    same way (None)."""
    repo = AutoreplyRepository(conn, ctx.tenant_id)
    await repo.hold(mailbox_id)
    known = await repo.get(mailbox_id)
    if known is not None and _same(known.rule, rule) and known.source == source:
        if known.employee_id == employee_id:
            return None
    await repo.put(mailbox_id, _values(rule, source, employee_id, ctx.actor))
    event = AutoreplySet(
        text=rule.text,
        html=rule.html,
        subject=rule.subject,
        starts_at=_iso(rule.starts_at),
        ends_at=_iso(rule.ends_at),
        interval_days=rule.interval_days,
        source="offboarding" if source == "offboarding" else "api",
        employee_id=employee_id,
    )
    return await repo.append(db.store, mailbox_id, ctx, event)


async def clear_rule(
    conn: AsyncConnection, db: Database, ctx: CommandContext, mailbox_id: str, reason: str
) -> Envelope | None:
    repo = AutoreplyRepository(conn, ctx.tenant_id)
    await repo.hold(mailbox_id)
    if await repo.get(mailbox_id) is None:
        return None
    await repo.clear(mailbox_id)
    event = AutoreplyCleared(reason="reinstated" if reason == "reinstated" else "api")
    return await repo.append(db.store, mailbox_id, ctx, event)


class AutoreplyCommands:
    """What the HTTP API does (permissions are checked by the router)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _mailbox(self, conn: AsyncConnection, tenant_id: str, mailbox_id: str) -> None:
        mailbox = await SenderRepository(conn, tenant_id).mailbox(mailbox_id)
        if mailbox is None:
            raise NotFound(f"no mailbox {mailbox_id}")
        if mailbox.status == "deleted":
            raise Conflict(f"mailbox {mailbox_id} is deleted", code="mailbox_deleted")

    async def put(self, ctx: CommandContext, mailbox_id: str, rule: autoreply.Rule) -> Stored:
        async with self.db.transaction() as tx:
            await self._mailbox(tx.conn, ctx.tenant_id, mailbox_id)
            env = await set_rule(tx.conn, self.db, ctx, mailbox_id, rule)
            if env is not None:
                tx.appended.append(env)  # wakes the outbox relay after the commit
            stored = await AutoreplyRepository(tx.conn, ctx.tenant_id).get(mailbox_id)
        assert stored is not None
        return stored

    async def get(self, tenant_id: str, mailbox_id: str) -> Stored:
        async with self.db.read() as conn:
            await self._mailbox(conn, tenant_id, mailbox_id)
            stored = await AutoreplyRepository(conn, tenant_id).get(mailbox_id)
        if stored is None:
            raise NotFound(f"mailbox {mailbox_id} has no autoreply", code="no_autoreply")
        return stored

    async def clear(self, ctx: CommandContext, mailbox_id: str) -> bool:
        """Clear the autoreply; False if there was none (nothing changes)."""
        async with self.db.transaction() as tx:
            await self._mailbox(tx.conn, ctx.tenant_id, mailbox_id)
            env = await clear_rule(tx.conn, self.db, ctx, mailbox_id, "api")
            if env is not None:
                tx.appended.append(env)
        return env is not None


# --- reacting to new mail ------------------------------------------------------------------
def incoming(event: MessageReceived, seen_at: datetime) -> autoreply.Incoming:
    return autoreply.Incoming(
        folder=event.folder,
        seen_at=seen_at,
        message_id=event.message_id,
        from_=event.from_,
        subject=event.subject,
        return_path=event.return_path,
        auto_submitted=event.auto_submitted,
        precedence=event.precedence,
        mailing_list=event.mailing_list,
        auto_response_suppress=event.auto_response_suppress,
    )


def reply_message(rule: autoreply.Rule, reply: autoreply.Reply) -> MessageIn:
    return MessageIn(
        to=[Address(address=reply.to)],
        subject=reply.subject,
        text=rule.text,
        html=rule.html,
        in_reply_to=reply.in_reply_to,
        references=reply.references,
        signature=Signature(mode="none"),
        save_sent_copy=False,
    )


async def answer(conn: AsyncConnection, env: Envelope, event: MessageReceived,
                 now: datetime) -> autoreply.Verdict | None:  # fmt: skip
    """Decide about one new message and queue the reply; None: no autoreply to consider."""
    repo = AutoreplyRepository(conn, env.tenant_id)
    mailbox_id = env.aggregate_id
    if await repo.get(mailbox_id) is None:
        return None  # the common case: one read, no lock
    await repo.hold(mailbox_id)
    stored = await repo.get(mailbox_id)
    mailbox = await SenderRepository(conn, env.tenant_id).mailbox(mailbox_id)
    if stored is None or mailbox is None:
        return None
    msg = incoming(event, env.time)
    own = {mailbox.address.lower(), mailbox.from_address.lower()}
    who = autoreply.correspondent(msg)
    last = await repo.last_replied(mailbox_id, who) if who else None
    verdict = autoreply.decide(stored.rule, msg, own, last, now)
    if verdict.reply is None:
        log.debug("mailbox %s: no autoreply to %s (%s)", mailbox_id, env.id, verdict.skipped)
        return verdict
    place = f"{event.folder}/{event.uidvalidity}/{event.uidl or event.uid}"
    key = autoreply.idempotency_key(mailbox_id, msg, place)
    try:
        body = reply_message(stored.rule, verdict.reply).model_dump_json()
    except ValidationError as exc:  # e.g. an address the send path would refuse
        log.warning("mailbox %s: autoreply to %s cannot be built: %s", mailbox_id, env.id, exc)
        return autoreply.Verdict(None, "no_sender")
    if await repo.queue(mailbox_id, key, body, env.correlation_id, now):
        await repo.replied(mailbox_id, verdict.reply.to, now)
    return verdict


def mail_reactor(on_queued: Callable[[], None]) -> Projection:
    """The consumer of ``MessageReceived``; ``on_queued`` wakes the responder."""

    async def apply(conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        now = datetime.now(UTC)
        queued = False
        for env in events:
            event = env.event()
            if isinstance(event, MessageReceived):
                verdict = await answer(conn, env, event, now)
                queued = queued or (verdict is not None and verdict.reply is not None)
        if queued:
            on_queued()  # early is harmless: the responder also polls

    return Projection(MAIL_DURABLE, MAIL_FILTER, apply)


# --- reacting to offboarding ---------------------------------------------------------------
def offboarding_reactor(db: Database) -> Projection:
    async def apply(conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        for env in events:
            event = env.event()
            ctx = CommandContext(env.tenant_id, ACTOR).caused_by(env, ACTOR)
            if isinstance(event, EmployeeOffboarded) and (event.autoreply or "").strip():
                assert event.autoreply is not None
                rule = autoreply.Rule(text=event.autoreply.strip(), set_at=env.time)
                for mailbox_id in event.mailbox_ids:
                    await set_rule(conn, db, ctx, mailbox_id, rule, source="offboarding",
                                   employee_id=env.aggregate_id)  # fmt: skip
            elif isinstance(event, EmployeeReinstated):
                repo = AutoreplyRepository(conn, env.tenant_id)
                for mailbox_id in await repo.set_by_offboarding(env.aggregate_id):
                    await clear_rule(conn, db, ctx, mailbox_id, "reinstated")

    return Projection(STAFF_DURABLE, STAFF_FILTER, apply)
