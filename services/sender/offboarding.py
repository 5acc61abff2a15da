"""The sender's side of offboarding (services/sender/README.md, "Offboarding").

* **The leaver sends nothing**: before a send by an employee (as caller or on a mailbox's
  behalf) the sender asks the registry whether they are offboarded
  (``mailroom-rpc.registry.employee``, answered from the registry's own directory), so the leaver
  is refused (403 ``employee_offboarded``) the moment the offboarding has answered, before the
  event reaches any projection. When the registry does not answer (not running, timeout,
  garbage) the sender's projection decides; it learns of EmployeeOffboarded within a second.
* **Their personal mailboxes stop sending** for everyone (409 ``mailbox_sending_stopped``) but
  keep syncing, from EmployeeOffboarded on (the projection's ``sending_stopped_by``), until the
  leaver is reinstated or the mailbox is handed over. Automatic replies (RFC 3834) still go out,
  so the leaver's autoreply keeps answering. Checked on the request path (the cached mailbox) and
  again, exactly, in the transaction that records the send (``commit.intent_writer``), so every
  replica refuses once one has applied the event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from libs.common.errors import Conflict, Forbidden
from libs.common.store.database import Database
from libs.common.subjects import rpc_subject
from services.sender import domain
from services.sender.ports import Directory, Requester
from services.sender.repository import SenderRepository

log = logging.getLogger("mailroom.sender.offboarding")
EMPLOYEE_SUBJECT = rpc_subject("registry", "employee")


class RegistryDirectory:
    """``ports.Directory`` over NATS request-reply to the registry."""

    def __init__(self, nc: Any, *, timeout: float = 0.5) -> None:
        self._nc = nc
        self.timeout = timeout

    async def offboarded(self, tenant_id: str, employee_id: str) -> bool | None:
        body = json.dumps({"tenant_id": tenant_id, "employee_id": employee_id}).encode()
        try:
            msg = await self._nc.request(EMPLOYEE_SUBJECT, body, timeout=self.timeout)
            reply = json.loads(msg.data)
            status = reply.get("status") if reply.get("ok") is True else None
        except Exception as exc:  # no responders, timeout, garbage: the projection decides
            log.debug("registry employee status unavailable: %s", type(exc).__name__)
            return None
        if status in ("active", "offboarded"):
            return bool(status == "offboarded")
        return None


async def refuse_leaver(db: Database, directory: Directory, who: Requester) -> None:
    """Raise 403 ``employee_offboarded`` if the employee sending is offboarded."""
    for employee_id in sorted({e for e in (who.employee_id, who.on_behalf_of) if e}):
        gone = await directory.offboarded(who.tenant_id, employee_id)
        if gone is None:
            async with db.read() as conn:
                found = await SenderRepository(conn, who.tenant_id).employee(employee_id)
            gone = found is not None and found[1]
        if gone:
            raise Forbidden(
                f"employee {employee_id} is offboarded and may not send",
                code="employee_offboarded",
            )


def automatic(who: Requester, extra_headers: Sequence[tuple[str, str]]) -> bool:
    """An automatic reply: flagged by the caller, or carrying ``Auto-Submitted``."""
    return who.automatic or any(
        k.lower() == "auto-submitted" and v.strip().lower() != "no" for k, v in extra_headers
    )


def stopped(mailbox: domain.Mailbox) -> Exception | None:
    """409 ``mailbox_sending_stopped`` while the mailbox's offboarded owner stops it."""
    leaver = mailbox.sending_stopped_by
    if leaver is None:
        return None
    return Conflict(
        f"mailbox {mailbox.mailbox_id} stopped sending: its owner was offboarded (reinstate "
        "them or hand the mailbox over to send from it again)",
        code="mailbox_sending_stopped",
        details={"offboarded_employee": leaver},
    )
