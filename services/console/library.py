"""The account library's rows, gathered from registry, authz, sync and sender.

A tenant admin sees every mailbox (a page at a time, from the registry); an employee sees the
mailboxes they own and those granted to them (authz's view of their access), nothing else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from services.console.client import Api, gather_limited
from services.console.session import Session

RANK = {"read": 1, "write": 2, "send": 3, "configure": 4}


@dataclass
class Row:
    account: dict[str, Any]
    state: str
    detail: str
    last_sync: str | None
    owner: str
    people: list[dict[str, Any]] = field(default_factory=list)
    people_known: bool = False
    sent_24h: int | None = None
    my_level: str | None = None

    @property
    def id(self) -> str:
        return str(self.account["id"])


def state_of(account: dict[str, Any], status: dict[str, Any] | None) -> tuple[str, str]:
    if account.get("status") == "disabled":
        return "disabled", ""
    if status is None:
        return "pending", ""
    return str(status["state"]), str(status.get("last_error") or "")


async def directory(api: Api) -> dict[str, dict[str, Any]]:
    """Employees by id (any signed-in user may read the directory)."""
    people = await api.maybe(api.all_pages("registry", "/v1/employees", limit=500))
    return {p["id"]: p for p in people or []}


async def statuses(api: Api, **params: Any) -> dict[str, dict[str, Any]]:
    found = await api.maybe(api.all_pages("sync", "/v1/sync/status", limit=500, **params))
    return {s["mailbox_id"]: s for s in found or []}


async def my_mailboxes(api: Api, session: Session, q: str) -> list[tuple[dict[str, Any], str]]:
    """An employee's mailboxes and their level on each (``owner`` for their own)."""
    owned_task = api.all_pages("registry", "/v1/accounts", limit=500)
    access_task = api.maybe(api.get("authz", f"/v1/employees/{session.subject}/access"))
    owned, access = await asyncio.gather(owned_task, access_task)
    levels: dict[str, str] = {a["id"]: "owner" for a in owned}
    for m in (access or {}).get("mailboxes", []):
        if m["mailbox_id"] not in levels:
            levels[m["mailbox_id"]] = m["level"]
    known = {a["id"]: a for a in owned}
    extra = [i for i in levels if i not in known]
    fetched = await gather_limited(
        extra, lambda i: api.maybe(api.get("registry", f"/v1/accounts/{i}"))
    )
    for acc in fetched:
        if acc is not None:
            known[acc["id"]] = acc
    needle = q.lower()
    out = [
        (acc, levels[i])
        for i, acc in known.items()
        if not needle or needle in acc["address"].lower() or needle in acc["display_name"].lower()
    ]
    return sorted(out, key=lambda x: x[0]["address"])


async def rows(
    session: Session,
    *,
    q: str = "",
    state: str = "",
    protocol: str = "",
    cursor: str = "",
    page_size: int = 50,
) -> tuple[list[Row], str | None]:
    api = session.api
    next_cursor: str | None = None
    if session.is_admin:
        page = await api.get(
            "registry", "/v1/accounts", q=q, protocol=protocol, cursor=cursor, limit=page_size
        )
        found = [(a, "configure") for a in page["items"]]
        next_cursor = page.get("next_cursor")
    else:
        found = [
            (a, lvl)
            for a, lvl in await my_mailboxes(api, session, q)
            if protocol in ("", a["protocol"])
        ]
    people, status = await asyncio.gather(directory(api), statuses(api))

    def name(employee_id: str | None) -> str:
        if not employee_id:
            return ""
        person = people.get(employee_id)
        return str(person["name"]) if person else employee_id

    async def one(item: tuple[dict[str, Any], str]) -> Row:
        account, level = item
        st, detail = state_of(account, status.get(account["id"]))
        s = status.get(account["id"]) or {}
        row = Row(
            account=account,
            state=st,
            detail=detail,
            last_sync=s.get("last_success_at"),
            owner=name(account.get("owner_id"))
            or ("shared" if account["ownership"] == "shared" else "—"),
            my_level=level,
        )
        may_configure = session.is_admin or level in ("owner", "configure")
        access_call = (
            api.maybe(api.get("authz", f"/v1/mailboxes/{row.id}/access"))
            if may_configure
            else _none()
        )
        access, sending = await asyncio.gather(
            access_call, api.maybe(api.get("sender", f"/v1/mailboxes/{row.id}/sending"))
        )
        if access is not None:
            row.people_known = True
            row.people = [
                {
                    "name": name(e["grantee_id"])
                    if e["grantee_kind"] == "employee"
                    else e["grantee_id"],
                    "kind": e["grantee_kind"],
                    "level": e["level"],
                    "source": e["source"],
                }
                for e in access.get("entries", [])
                if e["grantee_kind"] != "role"  # tenant admins: everyone knows
            ]
        if sending is not None:
            row.sent_24h = int(sending.get("sent_last_24h", 0))
        return row

    built = await gather_limited(found, one)
    if state:
        built = [r for r in built if r.state == state]
    return built, next_cursor


async def _none() -> None:
    return None
