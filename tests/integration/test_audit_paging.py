"""The audit trail paged through GET /v1/audit/events in either order with one opaque cursor:
newest first (``order=desc``) and chain order, forwards and back across pages, every filter
kept, forged cursors refused (400 ``invalid_cursor``, as before). Every backend (SQLite,
PostgreSQL) passes the same tests."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from libs.common.events import CommandContext, Envelope
from libs.common.events.base import Event
from libs.common.events.registry import EmployeeAdded, EmployeeReinstated, EmployeeUpdated
from libs.common.natsserver import NatsServer
from services.audit.projection import append_to_chain
from tests.support.stack import Stack, start_stack

pytestmark = pytest.mark.connected

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
AGGREGATES = ("emp-a", "emp-b", "emp-c")
N = 23  # not a multiple of the page sizes below


def _event(i: int) -> Event:
    if i % 5 == 4:
        return EmployeeReinstated()
    cls = EmployeeAdded if i < 3 else EmployeeUpdated
    return cls(name=f"Person {i}", email=f"p{i}@example.com")


def trail(tenant: str, n: int) -> list[Envelope]:
    """``n`` entries, one minute apart, over three aggregates and two actors."""
    out = []
    for i in range(n):
        actor = "admin:ann" if i % 2 == 0 else "employee:bob"
        env = Envelope.wrap(
            _event(i),
            CommandContext(tenant, actor),
            aggregate_id=AGGREGATES[i % 3],
            aggregate_version=i // 3 + 1,
        )
        out.append(env.model_copy(update={"time": START + timedelta(minutes=i)}))
    return out


class AuditPagingContract:
    """Subclasses provide the ``database_url`` fixture (None: SQLite in the data directory)."""

    @pytest.fixture
    async def stack(
        self, tmp_path: Path, nats_server: NatsServer, database_url: str | None
    ) -> AsyncIterator[Stack]:
        s = await start_stack(tmp_path, nats_server, ("audit",), database_url=database_url)
        try:
            acme, globex = trail("acme", N), trail("globex", 7)
            db = s.host.service("audit").db
            for chunk in (acme[:5], globex[:4], acme[5:14], globex[4:], acme[14:]):
                async with db.write() as conn:  # the two tenants' positions interleave
                    await append_to_chain(conn, chunk)
            yield s
        finally:
            await s.client.aclose()
            await s.host.stop()

    async def get(self, stack: Stack, **params: Any) -> dict[str, Any]:
        r = await stack.call("GET", "/v1/audit/events", params=params)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def walk(
        self, stack: Stack, key: str, first: dict[str, Any], **params: Any
    ) -> list[list[int]]:
        """Pages (tenant_seq of each entry) from ``first`` following ``key`` to its end."""
        pages, page = [], first
        while True:
            pages.append([i["tenant_seq"] for i in page["items"]])
            if page[key] is None:
                return pages
            page = await self.get(stack, cursor=page[key], **params)

    async def test_newest_first_across_pages_and_back(self, stack: Stack) -> None:
        everything = [i["tenant_seq"] for i in (await self.get(stack, limit=1000))["items"]]
        assert everything == list(range(1, N + 1))  # chain order, this tenant only

        first = await self.get(stack, order="desc", limit=5)
        assert first["items"][0]["event"]["data"]["name"] == f"Person {N - 1}"  # the newest
        assert first["prev_cursor"] is None
        older = await self.walk(stack, "next_cursor", first, order="desc", limit=5)
        assert older == [list(range(s, max(s - 5, 0), -1)) for s in range(N, 0, -5)]
        assert [len(p) for p in older] == [5, 5, 5, 5, 3]

        last = first
        while last["next_cursor"] is not None:
            last = await self.get(stack, order="desc", limit=5, cursor=last["next_cursor"])
        assert last["next_cursor"] is None and last["prev_cursor"] is not None
        newer = await self.walk(stack, "prev_cursor", last, order="desc", limit=5)
        assert newer == list(reversed(older))  # the same pages on the way back
        # the page before page 2 is page 1 exactly, and it says it is the first
        second = await self.get(stack, order="desc", limit=5, cursor=first["next_cursor"])
        back = await self.get(stack, order="desc", limit=5, cursor=second["prev_cursor"])
        assert back == first

    async def test_chain_order_pages_both_ways_too(self, stack: Stack) -> None:
        first = await self.get(stack, limit=6)
        assert first["prev_cursor"] is None
        forward = await self.walk(stack, "next_cursor", first, limit=6)
        assert forward == [list(range(s, min(s + 6, N + 1))) for s in range(1, N + 1, 6)]
        second = await self.get(stack, limit=6, cursor=first["next_cursor"])
        assert (await self.get(stack, limit=6, cursor=second["prev_cursor"])) == first
        exact = await self.get(stack, limit=N)  # exactly the rest: no empty page after it
        assert len(exact["items"]) == N and exact["next_cursor"] is None

    async def test_filters_apply_newest_first(self, stack: Stack) -> None:
        cases: list[dict[str, Any]] = [
            {"aggregate_id": "emp-b"},
            {"actor": "employee:bob"},
            {"type": "EmployeeReinstated"},
            {"type": "mailroom.registry.EmployeeUpdated.v1", "aggregate_id": "emp-a"},
            {
                "since": (START + timedelta(minutes=4)).isoformat(),
                "until": (START + timedelta(minutes=17)).isoformat(),
            },
        ]
        for filters in cases:
            asc = [i["tenant_seq"] for i in (await self.get(stack, limit=1000, **filters))["items"]]
            assert asc, filters
            first = await self.get(stack, order="desc", limit=2, **filters)
            pages = await self.walk(stack, "next_cursor", first, order="desc", limit=2, **filters)
            assert [s for p in pages for s in p] == list(reversed(asc)), filters
            assert all(len(p) == 2 for p in pages[:-1]), filters
        window = await self.get(
            stack,
            order="desc",
            since=(START + timedelta(minutes=4)).isoformat(),
            until=(START + timedelta(minutes=17)).isoformat(),
        )
        assert [i["tenant_seq"] for i in window["items"]] == list(range(17, 4, -1))

    async def test_other_tenants_never_show(self, stack: Stack) -> None:
        page = await stack.call(
            "GET", "/v1/audit/events", params={"order": "desc"}, tenant="globex"
        )
        items = page.json()["items"]
        assert [i["tenant_seq"] for i in items] == list(range(7, 0, -1))
        assert {i["event"]["tenant_id"] for i in items} == {"globex"}

    async def test_forged_cursors_are_refused(self, stack: Stack) -> None:
        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        page = await self.get(stack, order="desc", limit=5)
        good = page["next_cursor"]
        forged = [
            "zz",
            "-1",
            "1.5",
            "99999999999999999999",  # beyond any position
            good + "==",  # not as issued
            good[:-1] + "*" + good[-1],
            b64(b"c12"),
            b64(b"a-3"),
            b64(b"b007"),
            b64(b"a9223372036854775808"),
            b64(b"\xff\xfe"),
        ]
        for cursor in forged:
            for order in ("asc", "desc"):
                r = await stack.call(
                    "GET", "/v1/audit/events", params={"cursor": cursor, "order": order}
                )
                assert r.status_code == 400, (cursor, r.text)  # as the registry's cursors
                assert r.json()["error"]["code"] == "invalid_cursor", cursor
        r = await stack.call("GET", "/v1/audit/events", params={"order": "sideways"})
        assert r.status_code == 422
        # a plain position (the cursor of earlier versions) still reads after it, in chain order
        legacy = await self.get(stack, cursor=str(page["items"][0]["position"]))
        assert legacy["items"] == []
        oldest = (await self.get(stack, limit=1))["items"][0]
        after = await self.get(stack, cursor=str(oldest["position"]), limit=2)
        assert [i["tenant_seq"] for i in after["items"]] == [2, 3]


class TestSQLiteAuditPaging(AuditPagingContract):
    @pytest.fixture
    def database_url(self) -> str | None:
        return None


@pytest.mark.postgres
class TestPostgresAuditPaging(AuditPagingContract):
    @pytest.fixture
    def database_url(self, pg_url: str) -> str:
        return pg_url
