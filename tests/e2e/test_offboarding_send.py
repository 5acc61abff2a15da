"""Offboarding's sending side, end to end (registry, authz, sender, audit; aiosmtpd): the
leaver's sends are refused right after the offboarding answers; their personal mailboxes stop
sending for everyone until reinstated or handed over; shared mailboxes keep sending."""

from __future__ import annotations

import httpx
import pytest

from services.sender.repository import SenderRepository
from tests.support.registry import audit_types
from tests.support.sending import Mail, mail, mail_pg
from tests.support.stack import wait_until

__all__ = ["mail", "mail_pg"]  # the fixtures
pytestmark = [pytest.mark.e2e, pytest.mark.connected]
LEAVER_REFUSED = {"token_revoked", "employee_offboarded", "forbidden"}


def refused(r: httpx.Response) -> bool:
    return r.status_code in (401, 403) and r.json()["error"]["code"] in LEAVER_REFUSED


async def test_leaver_refused_at_once_personal_mailbox_stops_until_reinstated(mail: Mail) -> None:
    await leaver_scenario(mail)


@pytest.mark.postgres
async def test_the_same_on_postgres(mail_pg: Mail) -> None:
    await leaver_scenario(mail_pg)


async def leaver_scenario(mail: Mail) -> None:
    leaver, carol = await mail.employee("leaver"), await mail.employee("carol")
    personal = await mail.mailbox("leaver@x.io", owner_id=leaver)
    shared = await mail.mailbox("team@x.io", ownership="shared")
    await mail.grant(shared, leaver, "send")
    await mail.grant(personal, carol, "send")
    as_leaver = {"who": leaver, "role": "employee"}
    assert (await mail.send(personal, **as_leaver)).status_code == 201
    assert (await mail.send(shared, **as_leaver)).status_code == 201
    assert (await mail.send(personal, who=carol, role="employee")).status_code == 201

    r = await mail.stack.call("POST", f"/v1/employees/{leaver}/offboard", json={})
    assert r.status_code == 200 and r.json()["changed"] is True
    # Right after the 2xx, before any projection may have caught up: refused, nothing sent.
    first = await mail.send(personal, **as_leaver)
    assert refused(first), first.text
    assert refused(await mail.send(shared, **as_leaver))
    assert len(mail.smtpd.messages) == 3

    stopped = await mail.in_sender(lambda repo: repo.sending_stopped(personal))
    assert stopped == leaver
    for who, role in ((carol, "employee"), ("admin", "admin")):  # everyone, not just the leaver
        r = await mail.send(personal, who=who, role=role)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "mailbox_sending_stopped"
    assert (await mail.send(shared)).status_code == 201  # shared mailboxes keep sending
    account = (await mail.stack.call("GET", f"/v1/accounts/{personal}")).json()
    assert account["status"] == "active"  # kept, and kept syncing

    back = await mail.stack.call("POST", f"/v1/employees/{leaver}/reinstate")
    assert back.status_code == 200
    await wait_until(lambda: lifted(mail, personal))
    assert (await mail.send(personal, who=carol, role="employee")).status_code == 201
    names = await audit_types(mail.stack, leaver, 3)
    assert names[-2:] == ["EmployeeOffboarded", "EmployeeReinstated"]


async def test_handover_lets_the_successor_send_and_never_the_leaver(mail: Mail) -> None:
    leaver, newhire = await mail.employee("leaver"), await mail.employee("newhire")
    personal = await mail.mailbox("leaver@x.io", owner_id=leaver)
    r = await mail.stack.call(
        "POST", f"/v1/employees/{leaver}/offboard", json={"successor_id": newhire}
    )
    assert r.status_code == 200 and r.json()["mailboxes"][0]["handed_over_to"] == newhire
    assert refused(await mail.send(personal, who=leaver, role="employee"))

    async def successor_sends() -> bool:  # once authz knows the new owner
        r = await mail.send(personal, who=newhire, role="employee")
        assert r.status_code in (201, 403), r.text
        return r.status_code == 201

    async def handed_over(repo: SenderRepository) -> bool:  # after EmployeeOffboarded
        mailbox = await repo.mailbox(personal)
        return mailbox is not None and mailbox.owner_id == newhire

    await mail.in_sender(handed_over)
    assert await lifted(mail, personal)  # the handover lifted the stop
    await wait_until(successor_sends)
    msg = (await mail.delivered(1))[0]
    assert "leaver@x.io" in msg["From"]  # mail keeps flowing from and to the same address


async def lifted(mail: Mail, mailbox: str) -> bool:
    async with mail.sender.db.read() as conn:
        return await SenderRepository(conn, "acme").sending_stopped(mailbox) is None
