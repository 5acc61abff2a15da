"""The employee directory and departments through the API, and tenant isolation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import registry as support
from tests.support.registry import (
    audit_types,
    create,
    imap_account,
)
from tests.support.stack import Stack

pytestmark = [pytest.mark.connected, pytest.mark.e2e]
registry_stack = support.registry_stack  # the fixture


def err(r: Any) -> str:
    return str(r.json()["error"]["code"])


async def hire(
    s: Stack, name: str, email: str, department: str | None = None, **kw: Any
) -> dict[str, Any]:
    r = await s.call(
        "POST", "/v1/employees", json={"name": name, "email": email, "department": department}, **kw
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_employees_and_departments(registry_stack: Stack) -> None:
    s = registry_stack
    ada = await hire(s, "Ada", "ada@example.com", "Engineering")
    bob = await hire(s, "Bob", "bob@example.com", "Sales")
    cy = await hire(s, "Cy", "cy@example.com", "engineering")
    assert ada["status"] == "active" and ada["version"] == 1
    r = await s.call("POST", "/v1/employees", json={"name": "X", "email": "ADA@example.com"})
    assert r.status_code == 409 and err(r) == "duplicate_email"
    r = await s.call("POST", "/v1/employees", json={"name": "X", "email": "nope"})
    assert r.status_code == 422 and err(r) == "invalid_address"

    r = await s.call("GET", "/v1/departments")
    deps = {d["name"]: [m["id"] for m in d["members"]] for d in r.json()["items"]}
    assert deps == {"Engineering": [ada["id"], cy["id"]], "Sales": [bob["id"]]}

    r = await s.call(
        "PATCH",
        f"/v1/employees/{bob['id']}",
        json={"title": "Head of Sales", "department": "Engineering"},
    )
    assert r.status_code == 200 and r.json()["title"] == "Head of Sales"
    r = await s.call("PATCH", f"/v1/employees/{cy['id']}", json={"email": "ada@example.com"})
    assert r.status_code == 409 and err(r) == "duplicate_email"
    r = await s.call(
        "PATCH",
        f"/v1/employees/{cy['id']}",
        json={"status": "offboarded", "successor_id": ada["id"]},
    )
    assert r.status_code == 200 and r.json()["status"] == "offboarded"
    r = await s.call("GET", "/v1/departments")
    [eng] = r.json()["items"]
    assert (eng["name"], eng["member_count"]) == ("Engineering", 3)

    r = await s.call("GET", "/v1/employees", params={"status": "offboarded"})
    assert [e["id"] for e in r.json()["items"]] == [cy["id"]]
    r = await s.call("GET", "/v1/employees", params={"q": "BOB"})
    assert [e["id"] for e in r.json()["items"]] == [bob["id"]]
    r = await s.call("GET", "/v1/employees", params={"limit": 2})
    assert r.json()["next_cursor"] == bob["id"]
    r = await s.call("GET", f"/v1/employees/{ada['id']}", role="employee", subject=bob["id"])
    assert r.status_code == 200 and r.json()["email"] == "ada@example.com"
    r = await s.call(
        "PATCH",
        f"/v1/employees/{ada['id']}",
        json={"title": "x"},
        role="employee",
        subject=ada["id"],
    )
    assert r.status_code == 403

    r = await s.call("POST", "/v1/accounts", json=imap_account(owner_id=cy["id"]))
    assert r.status_code == 422 and err(r) == "owner_offboarded"
    assert await audit_types(s, cy["id"], 2) == ["EmployeeAdded", "EmployeeOffboarded"]
    assert await audit_types(s, bob["id"], 2) == ["EmployeeAdded", "EmployeeUpdated"]
    r = await s.call("PATCH", f"/v1/employees/{cy['id']}", json={"status": "active"})
    assert r.json()["status"] == "active"


async def test_another_tenant_sees_404_for_everything(registry_stack: Stack) -> None:
    s = registry_stack
    emp = await hire(s, "Ada", "ada@example.com", "Engineering")
    a = await create(s, imap_account(owner_id=emp["id"]))
    url = f"/v1/accounts/{a['id']}"
    probes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", url, None),
        ("PATCH", url, {"display_name": "pwned"}),
        ("POST", f"{url}/disable", None),
        ("POST", f"{url}/reactivate", None),
        ("PUT", f"{url}/credential", {"password": "pwned"}),
        ("DELETE", url, None),
        ("GET", f"/v1/employees/{emp['id']}", None),
        ("PATCH", f"/v1/employees/{emp['id']}", {"name": "pwned"}),
    ]
    for role, subject in (("admin", "admin"), ("employee", emp["id"])):
        for method, path, body in probes:
            r = await s.call(
                method,
                path,
                json=body,
                tenant="globex",
                role=role,  # type: ignore[arg-type]
                subject=subject,
            )
            if role == "employee" and path.startswith("/v1/employees") and method == "PATCH":
                assert r.status_code == 403, (method, path)  # directory edits need an admin
                continue
            assert r.status_code == 404, (role, method, path, r.text)
    r = await s.call("GET", "/v1/accounts", tenant="globex")
    assert r.json()["items"] == []
    for path in ("/v1/employees", "/v1/departments"):
        assert (await s.call("GET", path, tenant="globex")).json()["items"] == []
    got = (await s.call("GET", url)).json()
    assert got["display_name"] == "" and got["status"] == "active" and got["version"] == 1
    r = await s.call("GET", "/v1/audit/events", tenant="globex")
    assert r.json()["items"] == []
