"""Helpers to make envelopes in tests."""

from __future__ import annotations

from libs.common.events import CommandContext, EmployeeAdded, Envelope
from libs.common.ids import new_id


def employee_events(
    n: int, tenant: str = "acme", aggregate_id: str | None = None, start: int = 1
) -> list[Envelope]:
    agg = aggregate_id or new_id()
    ctx = CommandContext(tenant, "admin:test")
    return [
        Envelope.wrap(
            EmployeeAdded(name=f"Person {i}", email=f"p{i}@example.com"),
            ctx,
            aggregate_id=agg,
            aggregate_version=v,
        )
        for i, v in enumerate(range(start, start + n))
    ]


def many_aggregates(n: int, tenant: str = "acme") -> list[Envelope]:
    return [e for _ in range(n) for e in employee_events(1, tenant)]
