"""Sending: record the intent, deliver, record the outcome (services/sender/README.md).

1. ``submit`` checks the request, builds the message once and, in a transaction that holds
   the mailbox (a row lock on PostgreSQL, the write lock on SQLite; group-committed with other
   sends, ``commit.py``), checks the rolling 24 h limit and inserts the send with its exact
   bytes, already claimed for a first attempt; a known ``Idempotency-Key`` fails UNIQUE and is
   answered with the recorded send.
2. ``attempt`` delivers once (``smtp.deliver``) within ``attempt_deadline_s``.
3. ``_record`` commits the outcome on the row together with its event (MessageSent or
   SendFailed) and outbox row, only while the claim is still ours. A transient failure puts the
   send back in the queue with a back-off; the dispatcher retries it, and also takes over any
   claim whose holder crashed (``claim_s`` later).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from libs.common.errors import Conflict, NotFound
from libs.common.events.base import Event
from libs.common.events.sender import MessageSent, SendFailed
from libs.common.ids import new_id
from libs.common.metrics import record_send
from libs.common.store.database import Database
from services.sender import autoreply, domain, ews, mime, smtp
from services.sender.commit import (
    Grouped,
    Intent,
    KeyExists,
    Outcome,
    intent_writer,
    outcome_writer,
    sendable,
)
from services.sender.models import MessageIn
from services.sender.offboarding import automatic, refuse_leaver, stopped
from services.sender.ports import Invalid, Requester, Submitted, Wiring
from services.sender.repository import SenderRepository, SendRecord, record_from_row
from services.sender.settings import SenderSettings
from services.sender.smtp_pool import SmtpPool
from services.sender.views import MailboxViews

log = logging.getLogger("mailroom.sender")


def _now() -> datetime:
    return datetime.now(UTC)


class SenderHandlers:
    def __init__(self, db: Database, config: SenderSettings, wiring: Wiring) -> None:
        self.db = db
        self.config = config
        self.wiring = wiring
        self.wake: list[Any] = []  # callbacks: the dispatcher's wake-up
        self.intents: Grouped[Intent] = Grouped(db, intent_writer(db))
        self.outcomes: Grouped[Outcome] = Grouped(db, outcome_writer(db))
        self.views = MailboxViews(db, config.mailbox_cache_s)
        self.smtp_pool = SmtpPool.configured(config)  # swept, closed by the dispatcher

    # --- submit ---------------------------------------------------------------------------
    async def submit(
        self,
        who: Requester,
        mailbox_id: str,
        key: str,
        msg: MessageIn,
        *,
        wait: bool = True,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> Submitted:
        """``extra_headers``: fixed fields put in front (the autoresponder's RFC 3834 ones)."""
        _check_key(key)
        if len(msg.recipients()) > self.config.max_recipients:
            raise Invalid(f"at most {self.config.max_recipients} recipients", code="too_many")
        contents = self._attachments(msg)
        print_ = domain.fingerprint({"m": msg.model_dump(mode="json"), "b": who.on_behalf_of})
        await refuse_leaver(self.db, self.wiring.directory, who)
        view = await self.views.get(who.tenant_id, mailbox_id)
        if view is None:
            raise NotFound(f"no mailbox {mailbox_id}")
        mailbox, owner_name = view
        refusal = sendable(mailbox, mailbox_id)
        if automatic(who, extra_headers):  # checked again in the transaction (commit.py)
            who = dataclasses.replace(who, automatic=True)
        if refusal is None and not who.automatic:
            refusal = stopped(mailbox)
        if refusal is not None:
            # A send recorded before the mailbox was disabled is still answered.
            async with self.db.read() as conn:
                known = await SenderRepository(conn, who.tenant_id).by_key(mailbox_id, key)
            if known is not None:
                return Submitted(_replay(known, print_), True)
            raise refusal
        acting = await self._acting(who)
        text, html = await self.wiring.signatures.apply(
            mailbox,
            msg.signature,
            msg.text,
            msg.html,
            employee_id=who.on_behalf_of or who.employee_id,
        )
        if (text, html) != (msg.text, msg.html):
            msg = msg.model_copy(update={"text": text, "html": html})
        who_from = domain.identity(mailbox, owner_name, acting)
        send_id, now = new_id(), _now()
        built = await self._build(msg, who_from, send_id, now, mailbox, contents)
        if extra_headers:
            raw = autoreply.prepend_headers(built.raw, extra_headers)
            built = dataclasses.replace(built, raw=raw)
        copy = domain.wants_sent_copy(mailbox, msg.save_sent_copy, self.config.sent_copy)
        token = new_id() if wait else None
        row = {
            "send_id": send_id,
            "mailbox_id": mailbox_id,
            "idempotency_key": key,
            "fingerprint": print_,
            "actor": who.actor,
            "correlation_id": who.correlation_id,
            "on_behalf_of": who.on_behalf_of if who_from.sender is not None else None,
            "state": "delivering" if wait else "queued",
            "message_id": built.message_id,
            "mail_from": built.mail_from,
            "recipients": json.dumps(built.recipients),
            "bcc": json.dumps(built.bcc),
            "raw": built.raw,
            "size": len(built.raw),
            "attempts": 1 if wait else 0,
            "next_attempt_at": now,
            "claim_token": token,
            "claimed_until": now + timedelta(seconds=self.config.claim_s) if wait else None,
            "detail": "",
            "refused": "[]",
            "created_at": now,
            "copy_state": "wanted" if copy else "none",
            "copy_attempts": 0,
        }
        record = await self._record_intent(who, mailbox, print_, row, now)
        if record.send_id != send_id:
            return Submitted(record, True)  # a concurrent request with this key won
        if token is None:
            self._wake()
            return Submitted(record, False)
        return Submitted(await self.attempt(record, built.raw, token, mailbox), False)

    def _attachments(self, msg: MessageIn) -> list[bytes]:
        contents: list[bytes] = []
        for att in msg.attachments:
            try:
                data = att.content()
            except ValueError as exc:
                raise Invalid(str(exc), code="invalid_attachment") from None
            if len(data) > self.config.max_attachment_bytes:
                raise Invalid(
                    f"attachment {att.filename!r} is larger than "
                    f"{self.config.max_attachment_bytes} bytes",
                    code="attachment_too_large",
                )
            contents.append(data)
        if sum(map(len, contents)) > self.config.max_message_bytes:
            raise Invalid("the attachments are too large together", code="message_too_large")
        return contents

    async def _acting(self, who: Requester) -> domain.Person | None:
        if who.on_behalf_of is None:
            return None
        async with self.db.read() as conn:
            found = await SenderRepository(conn, who.tenant_id).employee(who.on_behalf_of)
        if found is None or found[1]:
            raise Conflict(
                "the employee sending on the mailbox's behalf is unknown or offboarded",
                code="unknown_sender_identity",
            )
        return found[0]

    async def _build(
        self,
        msg: MessageIn,
        who_from: domain.Identity,
        send_id: str,
        now: datetime,
        mailbox: domain.Mailbox,
        contents: Sequence[bytes],
    ) -> mime.Built:
        def run() -> mime.Built:
            return mime.build(
                msg,
                who_from,
                send_id=send_id,
                now=now,
                auto_bcc=mailbox.settings.auto_bcc,
                attachments=contents,
            )

        try:  # big attachments are encoded off the event loop
            built = await asyncio.to_thread(run) if sum(map(len, contents)) > 256_000 else run()
        except ValueError as exc:  # e.g. an auto-BCC address the registry let through
            raise Invalid(f"the message cannot be built: {exc}", code="invalid_message") from None
        if len(built.raw) > self.config.max_message_bytes:
            raise Invalid("the message is too large", code="message_too_large")
        return built

    async def _record_intent(
        self,
        who: Requester,
        mailbox: domain.Mailbox,
        print_: str,
        row: dict[str, Any],
        now: datetime,
    ) -> SendRecord:
        """Insert the send (group commit, ``commit.intent_writer``), or refuse it over the
        limit. A second request with the same key fails UNIQUE(tenant, mailbox, key) and gets
        the first one's record."""
        try:
            await self.intents.run(Intent(who, mailbox, row, now))
        except (IntegrityError, KeyExists):
            async with self.db.read() as conn:
                repo = SenderRepository(conn, who.tenant_id)
                known = await repo.by_key(mailbox.mailbox_id, row["idempotency_key"])
            if known is None:
                raise
            return _replay(known, print_)
        return record_from_row(who.tenant_id, row)

    # --- one attempt ----------------------------------------------------------------------
    async def attempt(
        self, record: SendRecord, raw: bytes, token: str, mailbox: domain.Mailbox | None = None
    ) -> SendRecord:
        """Deliver a claimed send once and record the outcome; return the updated record.
        ``mailbox``: as just read by the caller (else it is read here)."""
        outcome: domain.Delivered | domain.DeliveryFailed
        if mailbox is None:
            async with self.db.read() as conn:
                repo = SenderRepository(conn, record.tenant_id)
                mailbox = await repo.mailbox(record.mailbox_id)
        try:
            if mailbox is None or mailbox.status != "active":
                status = mailbox.status if mailbox else "deleted"
                raise domain.DeliveryFailed("other", f"the mailbox is {status}", permanent=True)
            outcome = await self._deliver(mailbox, record, raw)
        except domain.DeliveryFailed as failure:
            outcome = failure
        except Exception as exc:  # a bug must not leave the claim hanging until claim_s
            log.exception("send %s: attempt failed unexpectedly", record.send_id)
            outcome = domain.DeliveryFailed("other", f"internal: {type(exc).__name__}", False)
        return await self._record(record, token, outcome)

    async def _deliver(
        self, mailbox: domain.Mailbox, record: SendRecord, raw: bytes
    ) -> domain.Delivered:
        server = mailbox.outgoing
        if server is None:
            raise domain.DeliveryFailed("other", "the account has no outgoing server", True)
        c = self.config
        source = self.wiring.credentials
        if server.protocol == "ews":  # Exchange / Office 365: CreateItem SendAndSaveCopy
            return await ews.deliver(server, mailbox, record, raw, source, c)
        for again in (True, False):
            cred = await source.get(record.tenant_id, record.mailbox_id, "smtp submission")
            try:
                return await smtp.deliver(
                    server,
                    cred,
                    record.mail_from,
                    record.recipients,
                    raw,
                    tls_context=c.tls_context,
                    timeouts=smtp.Timeouts(
                        c.connect_timeout_s, c.command_timeout_s, c.attempt_deadline_s
                    ),
                    ehlo_name=c.ehlo_name,
                    allow_insecure=mailbox.settings.allow_insecure,
                    pool=self.smtp_pool,
                    owner=(record.tenant_id, record.mailbox_id),
                )
            except domain.DeliveryFailed as failure:
                # A refused cached credential may just be stale: once more with a fresh one.
                if failure.reason_class == "auth_failed":  # no session of it is kept either
                    self.smtp_pool.invalidate(record.tenant_id, record.mailbox_id)
                if not (failure.reason_class == "auth_failed" and again):
                    raise
                if not source.forget(record.tenant_id, record.mailbox_id):
                    raise
        raise AssertionError("unreachable")

    async def _record(
        self,
        record: SendRecord,
        token: str,
        outcome: domain.Delivered | domain.DeliveryFailed,
    ) -> SendRecord:
        """Commit the outcome on the row with its event, if the claim is still ours."""
        now = _now()
        attempts = record.attempts
        event: Event
        refused = sorted(outcome.refused)
        if isinstance(outcome, domain.Delivered):
            copy = "pending" if record.copy_state == "wanted" else "none"
            values: dict[str, Any] = {
                "state": "sent",
                "finished_at": now,
                "detail": outcome.reply[:1000],
                "reason_class": None,
                "next_attempt_at": record.next_attempt_at,
                "copy_state": copy,
                "copy_next_at": now if copy == "pending" else None,
                "drop_raw": copy == "none",
            }
            event = MessageSent(
                message_id=record.message_id,
                idempotency_key=record.idempotency_key,
                recipients=len(outcome.accepted),
                on_behalf_of=record.on_behalf_of,
                send_id=record.send_id,
                attempts=attempts,
                refused=refused,
                via=outcome.via,
            )
        else:
            step = domain.after_failure(
                outcome, attempts, self.config.max_attempts, self.config.backoff(attempts), now
            )
            values = {
                "state": "failed" if step.final else "queued",
                "finished_at": now if step.final else None,
                "detail": outcome.detail,
                "reason_class": outcome.reason_class,
                "next_attempt_at": step.retry_at or record.next_attempt_at,
                "copy_state": "none" if step.final else record.copy_state,
                "copy_next_at": None,
                "drop_raw": step.final,
            }
            event = SendFailed(
                idempotency_key=record.idempotency_key,
                reason_class=outcome.reason_class,
                detail=outcome.detail,
                permanent=step.final,
                refused=refused,
                send_id=record.send_id,
                attempts=attempts,
                retry_at=step.retry_at.isoformat() if step.retry_at else None,
            )
        held = await self.outcomes.run(
            Outcome(record, token, {**values, "refused": json.dumps(refused)}, event)
        )
        if not held:
            log.warning("send %s: claim lost before the outcome was recorded", record.send_id)
            return record
        record_send(isinstance(event, MessageSent))
        if values["state"] == "queued" or values["copy_state"] == "pending":
            self._wake()
        del values["drop_raw"], values["copy_next_at"]
        return dataclasses.replace(record, claim_token=None, refused=refused, **values)

    def _wake(self) -> None:
        for callback in self.wake:
            callback()

    # --- reads ----------------------------------------------------------------------------
    async def get(self, tenant_id: str, mailbox_id: str, send_id: str) -> SendRecord:
        async with self.db.read() as conn:
            found = await SenderRepository(conn, tenant_id).send(mailbox_id, send_id)
        if found is None:
            raise NotFound(f"no send {send_id} in mailbox {mailbox_id}")
        return found

    async def sending(
        self, tenant_id: str, mailbox_id: str
    ) -> tuple[domain.Mailbox, domain.Identity, domain.LimitVerdict]:
        now = _now()
        async with self.db.read() as conn:
            repo = SenderRepository(conn, tenant_id)
            mailbox = await repo.mailbox(mailbox_id)
            if mailbox is None:
                raise NotFound(f"no mailbox {mailbox_id}")
            owner = await repo.employee(mailbox.owner_id) if mailbox.owner_id else None
            verdict = await repo.limit_verdict(mailbox, now)
        return mailbox, domain.identity(mailbox, owner[0].name if owner else None, None), verdict


def _check_key(key: str) -> None:
    if not (1 <= len(key) <= 255) or not key.isascii() or not key.isprintable():
        raise Invalid(
            "Idempotency-Key must be 1-255 printable ASCII characters", code="invalid_key"
        )


def _replay(known: SendRecord, print_: str) -> SendRecord:
    if known.fingerprint != print_:
        raise Invalid(
            "this Idempotency-Key was used with a different request", code="idempotency_key_reused"
        )
    return known
