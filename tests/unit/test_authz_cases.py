"""The table of authz cases (authz_cases.yaml) against the pure evaluate()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.common.auth import Principal
from libs.common.events import (
    CATALOGUE,
    AccountAdded,
    AccountDeleted,
    AccountSettings,
    EmployeeAdded,
    EmployeeUpdated,
    Event,
)
from services.authz import domain

DOC: dict[str, Any] = yaml.safe_load((Path(__file__).parent / "authz_cases.yaml").read_text())
NOW = domain.parse_time(DOC["now"])


def make_event(spec: dict[str, Any]) -> tuple[Event, str]:
    spec = dict(spec)
    name = spec.pop("event")
    aggregate_id = spec.pop("id", None) or spec.pop("mailbox")
    if name == "AccountAdded":
        return AccountAdded(
            address=f"{aggregate_id}@example.com",
            protocol="imap",
            settings=AccountSettings(),
            **spec,
        ), aggregate_id
    if name == "AccountUpdated":
        spec.setdefault("settings", AccountSettings())
    if name == "AccountDeleted":
        return AccountDeleted(address=f"{aggregate_id}@example.com", **spec), aggregate_id
    if name in ("EmployeeAdded", "EmployeeUpdated"):
        cls = EmployeeAdded if name == "EmployeeAdded" else EmployeeUpdated
        return cls(name=aggregate_id, email=f"{aggregate_id}@example.com", **spec), aggregate_id
    return CATALOGUE.latest(name).model_validate(spec), aggregate_id


def build() -> domain.TenantState:
    return domain.build_state(DOC["tenant"], [make_event(s) for s in DOC["history"]])


STATE = build()


def principal(case: dict[str, Any]) -> Principal:
    role, _, subject = case["who"].rpartition(":")
    return Principal(
        tenant_id=case.get("tenant", DOC["tenant"]),
        subject=subject,
        role=role or "employee",  # type: ignore[arg-type]
        scopes=frozenset(case.get("scopes", ())),
    )


@pytest.mark.parametrize("case", DOC["cases"], ids=[c["name"] for c in DOC["cases"]])
def test_case(case: dict[str, Any]) -> None:
    assert NOW is not None
    d = domain.evaluate(STATE, principal(case), case["mailbox"], case["action"], NOW)
    got = {"allowed": d.allowed, "reason": d.reason}
    want = {"allowed": case["allowed"], "reason": case["reason"]}
    for key in ("level", "source", "on_behalf"):
        if key in case:
            got[key], want[key] = getattr(d, key), case[key]
    assert got == want, d.detail
    assert d.revision == STATE.revision


def test_the_table_covers_every_level_role_and_reason() -> None:
    cases = DOC["cases"]
    levels = {domain.ACTIONS[c["action"]] for c in cases if c["action"] in domain.ACTIONS}
    assert levels == {"read", "write", "send", "configure"}
    roles = {principal(c).role for c in cases}
    assert roles == {"admin", "employee", "service"}
    reasons = {c["reason"] for c in cases}
    assert {"admin", "owner", "grant", "department", "service_scope"} <= reasons
    assert {
        "expired",
        "offboarded",
        "mailbox_disabled",
        "mailbox_deleted",
        "no_access",
        "insufficient_level",
        "other_tenant",
        "unknown_mailbox",
        "unknown_action",
    } <= reasons
    assert {True, False} == {c["allowed"] for c in cases}


def test_history_is_deterministic_and_every_event_counts() -> None:
    again = build()
    assert again.snapshot() == STATE.snapshot()
    assert STATE.revision == len(DOC["history"])
