"""Offboarding's dry run (registry, authz and audit on a real nats-server): the same decision
as the real call, answered with the events it would append, and nothing written — no event,
no outbox row, nothing in the audit trail; then the real call commits exactly that plan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from libs.common.natsserver import NatsServer
from tests.support.registry import imap_account, stop
from tests.support.stack import Stack, start_stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.connected]


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, nats_server, ("registry", "authz", "audit"))
    try:
        yield s
    finally:
        await stop(s)


async def _new(stack: Stack, path: str, body: dict[str, Any]) -> str:
    r = await stack.call("POST", path, json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _rows(stack: Stack) -> tuple[int, int]:
    """(events, outbox rows) in the registry's database."""
    db = stack.host.service("registry").db
    async with db.read() as conn:
        counts = []
        for table in (db.tables.events, db.tables.outbox):
            n = await conn.execute(select(func.count()).select_from(table))
            counts.append(int(n.scalar() or 0))
    return counts[0], counts[1]


async def _audited(stack: Stack) -> list[dict[str, Any]]:
    """The registry's entries in the audit trail."""
    r = await stack.call("GET", "/v1/audit/events", params={"limit": 1000})
    return [i for i in r.json()["items"] if i["event"]["source"] == "/mailroom/registry"]


def _plan(events: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e["type"].split(".")[2], e["aggregate_id"], e["data"]) for e in events]


async def test_dry_run_writes_nothing_then_the_real_call_does_exactly_that(stack: Stack) -> None:
    leaver = await _new(stack, "/v1/employees", {"name": "Lee", "email": "lee@x.io"})
    successor = await _new(stack, "/v1/employees", {"name": "Sam", "email": "sam@x.io"})
    first = await _new(stack, "/v1/accounts", imap_account("lee@x.io", owner_id=leaver))
    second = await _new(stack, "/v1/accounts", imap_account("sales@x.io", owner_id=leaver))
    await _new(stack, "/v1/accounts", imap_account("team@x.io", ownership="shared"))
    path = f"/v1/employees/{leaver}/offboard"
    body = {"successor_id": successor, "autoreply": "Lee has left; write to Sam."}

    async def settled() -> int:  # everything so far published and audited
        events, outbox = await _rows(stack)
        return events if outbox == 0 and len(await _audited(stack)) == events else 0

    before = await wait_until(settled)
    r = await stack.call("POST", path, json={**body, "dry_run": True})
    assert r.status_code == 200, r.text
    dry = r.json()
    assert dry["dry_run"] is True and dry["changed"] is True and dry["status"] == "offboarded"
    assert dry["successor_id"] == successor and dry["autoreply"] == body["autoreply"]
    assert sorted((m["address"], m["handed_over_to"]) for m in dry["mailboxes"]) == [
        ("lee@x.io", successor),
        ("sales@x.io", successor),
    ]
    plan = _plan(dry["events"])
    assert plan[0] == (
        "EmployeeOffboarded",
        leaver,
        {"successor_id": successor, "autoreply": body["autoreply"], "mailbox_ids": [first, second]},
    )
    handed = {"from_owner_id": leaver, "to_owner_id": successor}
    assert plan[1:] == [("MailboxHandedOver", i, handed) for i in (first, second)]
    assert "revoked by authz" in dry["grants"] and dry["plan_digest"]

    # Nothing written: no event, no outbox row, the leaver still active and owning both.
    assert await _rows(stack) == (before, 0)
    assert (await stack.call("GET", f"/v1/employees/{leaver}")).json()["status"] == "active"
    assert (await stack.call("GET", f"/v1/accounts/{first}")).json()["owner_id"] == leaver
    # ...and nothing reaches the trail: a later write is audited, the dry run never is.
    marker = await _new(stack, "/v1/employees", {"name": "Marker", "email": "m@x.io"})

    async def marker_audited() -> list[dict[str, Any]] | None:
        items = await _audited(stack)
        return items if any(i["event"]["aggregate_id"] == marker for i in items) else None

    trail = await wait_until(marker_audited)
    assert len(trail) == before + 1
    assert not {"EmployeeOffboarded", "MailboxHandedOver"} & {
        i["event"]["type"].split(".")[2] for i in trail
    }

    # The real call, confirming the plan it was shown, commits exactly those events.
    r = await stack.call("POST", path, json={**body, "expected_plan": dry["plan_digest"]})
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["dry_run"] is False and done["changed"] is True
    assert _plan(done["events"]) == plan and done["plan_digest"] == dry["plan_digest"]
    assert done["mailboxes"] == dry["mailboxes"]
    assert [e["aggregate_version"] for e in done["events"]] == [
        e["aggregate_version"] for e in dry["events"]
    ]
    assert (await _rows(stack))[0] == before + 1 + len(plan)
    assert (await stack.call("GET", f"/v1/accounts/{second}")).json()["owner_id"] == successor

    # Already offboarded: the dry run says nothing would change, as the real call would.
    r = await stack.call("POST", path, json={"dry_run": True})
    assert r.status_code == 200, r.text
    again = r.json()
    assert again["dry_run"] is True and again["changed"] is False and again["events"] == []
    assert again["status"] == "offboarded" and again["mailboxes"] == done["mailboxes"]
    assert "already offboarded" in again["grants"]
    real_again = (await stack.call("POST", path, json={})).json()
    assert {k: v for k, v in real_again.items() if k != "dry_run"} == {
        k: v for k, v in again.items() if k != "dry_run"
    }


async def test_a_changed_plan_is_refused_and_bad_input_fails_alike(stack: Stack) -> None:
    leaver = await _new(stack, "/v1/employees", {"name": "Lee", "email": "lee@x.io"})
    successor = await _new(stack, "/v1/employees", {"name": "Sam", "email": "sam@x.io"})
    path = f"/v1/employees/{leaver}/offboard"
    dry = (await stack.call("POST", path, json={"successor_id": successor, "dry_run": True})).json()
    assert dry["mailboxes"] == [] and [e["aggregate_id"] for e in dry["events"]] == [leaver]

    # A mailbox given to the leaver after the review: the confirmed plan is stale.
    await _new(stack, "/v1/accounts", imap_account("late@x.io", owner_id=leaver))
    before = await _rows(stack)
    r = await stack.call(
        "POST", path, json={"successor_id": successor, "expected_plan": dry["plan_digest"]}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (409, "plan_changed")
    assert (await _rows(stack))[0] == before[0]

    # Invalid input: the dry run refuses exactly as the real call does, and writes nothing.
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        (path, {"successor_id": "nope"}, {}),
        (path, {"successor_id": leaver}, {}),
        (path, {"autoreply": "x" * 4001}, {}),
        ("/v1/employees/missing/offboard", {}, {}),
        (path, {}, {"role": "employee", "subject": leaver}),
    ]
    for url, payload, who in cases:
        real = await stack.call("POST", url, json=payload, **who)
        dry_r = await stack.call("POST", url, json={**payload, "dry_run": True}, **who)
        assert real.status_code >= 400 and dry_r.status_code == real.status_code, payload
        assert dry_r.json()["error"]["code"] == real.json()["error"]["code"], payload
    assert (await _rows(stack))[0] == before[0]
