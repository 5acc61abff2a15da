"""The sender's side of offboarding with the registry played by the test (events published into
the stream): which mailboxes stop, what lifts it, automatic replies, and the exact check in the
transaction that records a send (a replica whose cached mailbox is stale still refuses)."""

from __future__ import annotations

import time

from sqlalchemy import select

from libs.common.events import (
    AccountSettings,
    AccountUpdated,
    EmployeeOffboarded,
    EmployeeReinstated,
    MailboxHandedOver,
)
from libs.common.ids import new_id
from services.sender.models import MessageIn
from services.sender.ports import Requester
from services.sender.repository import SenderRepository
from services.sender.tables import mailboxes
from tests.integration.test_sender_support import SenderWorld, world
from tests.support.stack import wait_until

__all__ = ["world"]


async def _stopped(w: SenderWorld, mailbox: str) -> str | None:
    async with w.svc.db.read() as conn:
        return await SenderRepository(conn, "acme").sending_stopped(mailbox)


def _code(r: object) -> str:
    return str(r.json()["error"]["code"])  # type: ignore[attr-defined]


async def test_personal_mailboxes_stop_shared_ones_do_not_and_moves_lift_it(
    world: SenderWorld,
) -> None:
    leaver = await world.employee("Lea Ver", "lea@corp.example")
    other = await world.employee("Oth Er", "oth@corp.example")
    personal = await world.mailbox(address="lea@corp.example", owner_id=leaver)
    second = await world.mailbox(address="lea2@corp.example", owner_id=leaver)
    shared_owned = await world.mailbox(address="team@corp.example", owner_id=leaver)
    await world.publish(
        AccountUpdated(
            changed=["ownership"],
            settings=AccountSettings(outgoing=world.server(), username="u"),
            owner_id=leaver,
            ownership="shared",
        ),
        shared_owned,
    )
    await world.applied(lambda repo: _is_shared(repo, shared_owned))
    ids = [personal, second, shared_owned]
    await world.publish(EmployeeOffboarded(mailbox_ids=ids), leaver)
    await wait_until(lambda: _stopped(world, personal))
    assert await _stopped(world, second) == leaver
    assert await _stopped(world, shared_owned) is None  # shared: keeps sending for the team

    r = await world.send(personal)
    assert r.status_code == 409 and _code(r) == "mailbox_sending_stopped"
    assert (await world.send(shared_owned)).status_code == 201

    # An automatic reply (the leaver's autoreply) still goes out.
    auto = Requester("acme", "service:sender", new_id(), automatic=True)
    msg = MessageIn.model_validate({"to": ["bob@example.com"], "subject": "Away", "text": "x"})
    done = await world.svc.handlers.submit(auto, personal, "auto-1", msg)  # type: ignore[union-attr]
    assert done.record.status == "sent"

    await world.publish(MailboxHandedOver(from_owner_id=leaver, to_owner_id=other), personal)
    await wait_until(lambda: _lifted(world, personal))
    assert (await world.send(personal)).status_code == 201
    assert await _stopped(world, second) == leaver  # not moved: still stopped
    await world.publish(EmployeeReinstated(), leaver)
    await wait_until(lambda: _lifted(world, second))
    assert (await world.send(second)).status_code == 201


async def test_a_stale_cached_mailbox_is_refused_in_the_transaction(world: SenderWorld) -> None:
    leaver = await world.employee("Lea Ver", "lea@corp.example")
    personal = await world.mailbox(address="lea@corp.example", owner_id=leaver)
    handlers = world.svc.handlers
    assert handlers is not None
    stale = await handlers.views.get("acme", personal)  # as another replica cached it
    assert stale is not None and stale[0].sending_stopped_by is None
    await world.publish(EmployeeOffboarded(mailbox_ids=[personal]), leaver)
    await wait_until(lambda: _stopped(world, personal))
    handlers.views._entries[("acme", personal)] = (time.monotonic() + 60, stale)
    r = await world.send(personal)
    assert r.status_code == 409 and _code(r) == "mailbox_sending_stopped"
    assert world.smtpd.messages == []


async def _is_shared(repo: SenderRepository, mailbox: str) -> bool:
    q = select(mailboxes.c.ownership).where(
        mailboxes.c.tenant_id == "acme", mailboxes.c.mailbox_id == mailbox
    )
    return bool((await repo.conn.execute(q)).scalar() == "shared")


async def _lifted(w: SenderWorld, mailbox: str) -> bool:
    return await _stopped(w, mailbox) is None
