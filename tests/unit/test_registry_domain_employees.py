"""The employee aggregate, pure: decide/evolve for every command and invalid transition."""

from __future__ import annotations

import pytest

from libs.common.errors import Conflict, MailroomError, NotFound
from libs.common.events import (
    EmployeeAdded,
    EmployeeOffboarded,
    EmployeeReinstated,
    EmployeeUpdated,
)
from services.registry.domain import employees as d
from services.registry.validation import Invalid


def hired() -> d.EmployeeState:
    events = d.decide(
        d.AddEmployee("  Ada   Lovelace ", "ada@Example.com", "CTO", " R&D "), d.EmployeeState("e1")
    )
    return d.fold("e1", events)


def test_add_cleans_fields_and_evolves_to_active() -> None:
    [event] = d.decide(
        d.AddEmployee("Ada  Lovelace", "ada@Example.com", " CTO ", "  R&D  Lab "),
        d.EmployeeState("e1"),
    )
    assert event == EmployeeAdded(
        name="Ada Lovelace", email="ada@example.com", title="CTO", department="R&D Lab"
    )
    state = d.evolve(d.EmployeeState("e1"), event)
    assert (state.status, state.version, state.department) == ("active", 1, "R&D Lab")
    assert d.department_key("R&D Lab") == d.department_key("r&d lab")


@pytest.mark.parametrize(
    ("name", "email", "code"),
    [
        ("", "a@example.com", "invalid_name"),
        ("   ", "a@example.com", "invalid_name"),
        ("Ada", "not-an-email", "invalid_address"),
    ],
)
def test_add_refuses_invalid_input(name: str, email: str, code: str) -> None:
    with pytest.raises(Invalid) as info:
        d.decide(d.AddEmployee(name, email), d.EmployeeState("e1"))
    assert info.value.code == code


def test_add_twice_and_commands_on_unknown_employees() -> None:
    with pytest.raises(Conflict):
        d.decide(d.AddEmployee("A", "a@example.com"), hired())
    for command in (d.UpdateEmployee({"name": "x"}), d.OffboardEmployee(), d.ReinstateEmployee()):
        with pytest.raises(NotFound):
            d.decide(command, d.EmployeeState("nobody"))


def test_update_emits_the_full_new_record_or_nothing() -> None:
    state = hired()
    [event] = d.decide(d.UpdateEmployee({"title": "CEO", "department": None}), state)
    assert event == EmployeeUpdated(
        name="Ada Lovelace", email="ada@example.com", title="CEO", department=None
    )
    after = d.evolve(state, event)
    assert after.title == "CEO" and after.department is None and after.version == 2
    assert d.decide(d.UpdateEmployee({"title": "CEO"}), after) == []
    with pytest.raises(MailroomError) as info:
        d.decide(d.UpdateEmployee({"status": "gone"}), state)
    assert info.value.code == "not_updatable"
    with pytest.raises(Invalid):
        d.decide(d.UpdateEmployee({"email": "bad"}), state)


def test_offboard_and_reinstate_with_their_invalid_transitions() -> None:
    state = hired()
    with pytest.raises(Conflict) as info:
        d.decide(d.ReinstateEmployee(), state)
    assert info.value.code == "not_offboarded"
    with pytest.raises(Invalid):
        d.decide(d.OffboardEmployee(successor_id="e1"), state)
    [off] = d.decide(d.OffboardEmployee(successor_id="e2"), state)
    assert off == EmployeeOffboarded(successor_id="e2")
    gone = d.evolve(state, off)
    assert gone.status == "offboarded"
    with pytest.raises(Conflict) as info:
        d.decide(d.OffboardEmployee(), gone)
    assert info.value.code == "already_offboarded"
    # An offboarded employee's record can still be corrected; the status stays.
    [fix] = d.decide(d.UpdateEmployee({"name": "Ada King"}), gone)
    assert d.evolve(gone, fix).status == "offboarded"
    [back] = d.decide(d.ReinstateEmployee(), gone)
    assert back == EmployeeReinstated() and d.evolve(gone, back).status == "active"
