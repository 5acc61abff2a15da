"""Cross-tenant probes on every endpoint: tenant B gets nothing of tenant A.

The whole stack runs (registry, authz, sync, sender, audit on a real nats-server). Tenant A gets
employees, mailboxes, a grant, organisation mail settings and a send. Then every operation of the
app's own OpenAPI document (enumerated, so new endpoints are probed without touching this file)
is called with A's ids in its path, query and body, by three principals of tenant B: its admin,
an employee whose id is A's mailbox owner's, and a service account whose scopes name every
mailbox and A's by id. Reads come first (nothing B wrote can be confused with a leak yet), then
writes, then the reads again. No response may hold A's data (its ids not sent by the request,
its addresses, names, department, subject) nor be a 5xx; afterwards A's data is unchanged and
A's trail holds nothing done by B.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.probe import ProbeRequest, Sampler, operations
from tests.support.stack import Stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

A, B = "tenant-a", "tenant-b"
CLOSED = {"host": "127.0.0.1", "port": 9, "security": "ssl"}  # nothing listens: sync just fails
ORG_A = {
    "domains": ["tenant-a.example"],
    "incoming": {
        "host": "mail.tenant-a.example",
        "port": 993,
        "security": "ssl",
        "protocol": "imap",
    },
    "outgoing": {"host": "smtp.tenant-a.example", "port": 587, "security": "starttls"},
}


@pytest.fixture
def stack(full_stack: Stack) -> Stack:
    return full_stack


async def ok(stack: Stack, method: str, url: str, **kw: Any) -> Any:
    r = await stack.call(method, url, tenant=A, **kw)
    assert r.status_code < 300, (method, url, r.text)
    return r.json()


async def build_tenant_a(stack: Stack) -> dict[str, str]:
    """A's employees, mailboxes (with grants), org settings and a send; returns their ids."""
    people = {}
    for key, name in (("owner", "Aardvark"), ("other", "Abalone"), ("hidden", "Axolotl")):
        person = {"name": f"{name} Tenant-A", "email": f"{key}@tenant-a.example"}
        person["department"] = "a-dept-secret"
        people[key] = (await ok(stack, "POST", "/v1/employees", json=person))["id"]
    await ok(stack, "PUT", "/v1/org/mail-settings", json=ORG_A)
    boxes = {}
    for key, owner in (("box", people["owner"]), ("box2", people["hidden"])):
        body: dict[str, Any] = {
            "address": f"{key}@tenant-a.example",
            "display_name": f"{key} Aardvark-Box",
            "protocol": "imap",
            "incoming": CLOSED,
            "outgoing": {**CLOSED, "port": 10},
            "password": "a-password-secret",
            "owner_id": owner,
        }
        boxes[key] = (await ok(stack, "POST", "/v1/accounts", json=body))["id"]

    async def grant(box: str, who: str) -> bool:
        body = {"grantee_kind": "employee", "grantee_id": who, "level": "send"}
        r = await stack.call("POST", f"/v1/mailboxes/{box}/grants", json=body, tenant=A)
        return r.status_code in (200, 201)

    await wait_until(lambda: grant(boxes["box"], people["other"]))
    await wait_until(lambda: grant(boxes["box2"], people["hidden"]))

    async def sent() -> str | None:
        message = {
            "to": [{"address": "rcpt@elsewhere.example"}],
            "subject": "A-secret-subject",
            "text": "A-secret-body",
        }
        headers = {"Idempotency-Key": "a-send-1", "Prefer": "respond-async"}
        r = await stack.call(
            "POST",
            f"/v1/mailboxes/{boxes['box']}/messages",
            json=message,
            headers=headers,
            tenant=A,
        )
        return r.json()["id"] if r.status_code in (201, 202) else None

    send = await wait_until(sent)

    async def synced() -> bool:
        r = await stack.call("GET", f"/v1/sync/mailboxes/{boxes['box']}", tenant=A)
        return r.status_code == 200

    await wait_until(synced)
    return {**people, **boxes, "send": send}


def markers(a: dict[str, str]) -> list[str]:
    """What only A knows: its ids and the strings in its data."""
    return [
        *a.values(),
        "tenant-a.example",  # every A address and the org settings' domain
        "box@tenant-a.example",
        "box2@tenant-a.example",
        "other@tenant-a.example",
        "hidden@tenant-a.example",
        "Tenant-A",  # employee names
        "Aardvark-Box",
        "a-dept-secret",
        "A-secret-subject",
        "A-secret-body",
        "a-password-secret",
        "mail.tenant-a.example",
    ]


def overrides(a: dict[str, str]) -> dict[str, Any]:
    """Bodies that pass validation where a sample would not (so the handler itself answers)."""
    account = {
        "address": "probe@tenant-b.example",
        "protocol": "imap",
        "incoming": CLOSED,
        "outgoing": {**CLOSED, "port": 10},
        "password": "pw",
        "owner_id": a["owner"],
    }
    return {
        "POST /v1/accounts": account,
        "POST /v1/accounts/test": account,
        "PUT /v1/org/mail-settings": ORG_A,  # B claims A's domain for itself
        "POST /v1/mailboxes/{mailbox_id}/messages": {
            "to": [{"address": "rcpt@tenant-b.example"}],
            "subject": "probe",
            "text": "probe",
        },
    }


def principals(a: dict[str, str]) -> list[dict[str, Any]]:
    scopes = ["mailboxes:configure", "events:read", f"mailbox:{a['box']}:configure"]
    return [
        {"subject": "intruder", "role": "admin"},
        {"subject": a["owner"], "role": "employee"},  # B's employee with A's owner's id
        {"subject": "robot-b", "role": "service", "scopes": scopes},
    ]


class Prober:
    """Sends requests as B's principals and records every response that shows A's data."""

    def __init__(self, stack: Stack, a: dict[str, str]) -> None:
        self.stack = stack
        self.a = a
        self.markers = markers(a)
        self.a_ids = set(a.values())
        self.sent = ""  # everything B has sent so far: B's own data may echo it later
        self.called: set[str] = set()
        self.problems: list[str] = []

    async def send(self, req: ProbeRequest, who: dict[str, Any]) -> Any:
        issuer = self.stack.host.runtime.issuer
        assert issuer is not None
        token = issuer.issue(B, who["subject"], who["role"], scopes=who.get("scopes"))
        headers = {"Authorization": f"Bearer {token}", **req.headers}
        return await self.stack.client.request(
            req.method,
            req.url,
            params=req.params,
            headers=headers,
            json=req.json_body,
            content=req.content,
        )

    async def run(self, requests: list[ProbeRequest], *, before_writes: bool) -> None:
        """Before B wrote anything only this request's own values may come back; afterwards
        nothing B ever sent counts (B's trail and lists hold it as B's data)."""
        for who in principals(self.a):
            for req in requests:
                text = req.text()
                self.sent += " " + text
                r = await self.send(req, who)
                self.called.add(req.label)
                excluded = text if before_writes else self.sent
                found = [m for m in self.markers if m not in excluded and m in r.text]
                a_path = any(i in req.url for i in self.a_ids)
                wrote = req.method != "GET" and a_path and r.status_code < 400
                if r.status_code >= 500 or found or wrote:
                    self.problems.append(
                        f"{who['role']} {req.label} {req.url} -> {r.status_code} {found} "
                        f"{r.text[:300]}"
                    )


async def test_tenant_b_gets_nothing_of_tenant_a_on_any_endpoint(stack: Stack) -> None:
    a = await build_tenant_a(stack)
    bob = {"name": "Bob B", "email": "bob@tenant-b.example"}
    assert (await stack.call("POST", "/v1/employees", json=bob, tenant=B)).status_code == 201
    before = await snapshot(stack, a)
    ids = {
        "path": a["box"],
        "account_id": a["box"],
        "mailbox_id": a["box"],
        "aggregate_id": a["box"],
        "employee_id": a["owner"],
        "owner_id": a["owner"],
        "successor_id": a["other"],
        "grantee_id": a["other"],
        "grantee_kind": "employee",
        "send_id": a["send"],
        "name": "default",
        "string:action": "read",
        "string:address": "probe@tenant-b.example",
        "query:owner": a["owner"],
        "query:mailbox": a["box"],
        "query:aggregate_id": a["box"],
        "query:department": "a-dept-secret",
        "query:q": "aardvark",
        "query:address": "probe@tenant-a.example",
    }
    # B imports a row whose owner is A's owner by email: it must get an employee of its own.
    csv = b"address,owner_email,password\r\nimported@tenant-b.example,owner@tenant-a.example,pw\r\n"
    spec = (await stack.client.get("/openapi.json")).json()
    sampler = Sampler(spec, ids, csv)
    ops = operations(spec)
    bodies = overrides(a)
    reads = [sampler.request(m, p, op) for m, p, op in ops if m == "GET"]
    writes = [sampler.request(m, p, op, bodies.get(f"{m} {p}")) for m, p, op in ops if m != "GET"]

    prober = Prober(stack, a)
    await prober.run(reads, before_writes=True)
    await prober.run(writes, before_writes=False)
    await prober.run(reads, before_writes=False)
    assert not prober.problems, "\n".join(prober.problems)
    assert prober.called == {f"{m} {p}" for m, p, _ in ops}  # every operation was probed

    assert await snapshot(stack, a) == before
    await settle(stack, a)
    actors = {e["actor"] for e in await trail(stack)}
    assert not actors & {"admin:intruder", f"employee:{a['owner']}", "service:robot-b"}, actors


async def snapshot(stack: Stack, a: dict[str, str]) -> dict[str, Any]:
    """What A sees of its own data (the parts B might change)."""
    out: dict[str, Any] = {}
    for key in ("box", "box2"):
        acc = await ok(stack, "GET", f"/v1/accounts/{a[key]}")
        out[key] = {
            k: acc[k] for k in ("address", "display_name", "status", "owner_id", "ownership")
        }
        access = await ok(stack, "GET", f"/v1/mailboxes/{a[key]}/access")
        out[f"{key}-access"] = sorted((e["grantee_id"], e["level"]) for e in access["entries"])
    for key in ("owner", "other", "hidden"):
        emp = await ok(stack, "GET", f"/v1/employees/{a[key]}")
        out[key] = {k: emp.get(k) for k in ("name", "email", "department", "status")}
    out["org"] = await ok(stack, "GET", "/v1/org/mail-settings")
    send = await ok(stack, "GET", f"/v1/mailboxes/{a['box']}/messages/{a['send']}")
    out["send"] = {k: send[k] for k in ("id", "mailbox_id", "recipients")}
    return out


async def settle(stack: Stack, a: dict[str, str]) -> None:
    """Wait until A's trail holds a registry and an authz event made after the probes."""
    body = {"name": "Sentinel", "email": "sentinel@tenant-a.example"}
    emp = (await ok(stack, "POST", "/v1/employees", json=body))["id"]
    grant = {"grantee_kind": "employee", "grantee_id": emp, "level": "read"}
    await ok(stack, "POST", f"/v1/mailboxes/{a['box']}/grants", json=grant)

    async def seen() -> bool:
        added = await trail(stack, aggregate_id=emp)
        granted = await trail(stack, aggregate_id=a["box"], type="AccessGranted")
        return bool(added) and any(i["data"]["grantee_id"] == emp for i in granted)

    await wait_until(seen)


async def trail(stack: Stack, **params: Any) -> list[dict[str, Any]]:
    """A's audit entries (all pages)."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await ok(stack, "GET", "/v1/audit/events", params={**params, "cursor": cursor or ""})
        out += [i["event"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return out
