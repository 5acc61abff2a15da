"""The employee aggregate, pure. Departments are not an aggregate: they are the set of
department names employees carry, kept as a read table by the projection."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from libs.common.errors import Conflict, MailroomError, NotFound
from libs.common.events.base import Event
from libs.common.events.registry import (
    EmployeeAdded,
    EmployeeOffboarded,
    EmployeeReinstated,
    EmployeeUpdated,
)
from services.registry import validation as v

EmployeeStatus = Literal["new", "active", "offboarded"]
UPDATABLE = frozenset({"name", "email", "title", "department"})
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class EmployeeState:
    id: str
    version: int = 0
    status: EmployeeStatus = "new"
    name: str = ""
    email: str = ""
    title: str = ""
    department: str | None = None


@dataclass(frozen=True, slots=True)
class AddEmployee:
    name: str
    email: str
    title: str = ""
    department: str | None = None


@dataclass(frozen=True, slots=True)
class UpdateEmployee:
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OffboardEmployee:
    successor_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReinstateEmployee:
    pass


Command = AddEmployee | UpdateEmployee | OffboardEmployee | ReinstateEmployee


def clean_department(value: str | None) -> str | None:
    if value is None:
        return None
    cleaned = _SPACES.sub(" ", value).strip()
    return cleaned or None


def department_key(name: str) -> str:
    return name.casefold()


def _name(value: str) -> str:
    cleaned = _SPACES.sub(" ", value).strip()
    if not cleaned:
        raise v.Invalid("name must not be empty", code="invalid_name", details={"field": "name"})
    return cleaned


def evolve(state: EmployeeState, event: Event) -> EmployeeState:
    s = replace(state, version=state.version + 1)
    match event:
        case EmployeeAdded() | EmployeeUpdated():
            status: EmployeeStatus = "active" if state.status == "new" else state.status
            return replace(
                s,
                status=status,
                name=event.name,
                email=event.email,
                title=event.title,
                department=event.department,
            )
        case EmployeeOffboarded():
            return replace(s, status="offboarded")
        case EmployeeReinstated():
            return replace(s, status="active")
    return s


def fold(employee_id: str, events: Iterable[Event]) -> EmployeeState:
    state = EmployeeState(employee_id)
    for e in events:
        state = evolve(state, e)
    return state


def decide(command: Command, state: EmployeeState) -> list[Event]:
    if isinstance(command, AddEmployee):
        if state.status != "new":
            raise Conflict(f"employee {state.id} already exists", code="employee_exists")
        return [
            EmployeeAdded(
                name=_name(command.name),
                email=v.normalise_address(command.email, what="email"),
                title=command.title.strip(),
                department=clean_department(command.department),
            )
        ]
    if state.status == "new":
        raise NotFound(f"no employee {state.id}")
    match command:
        case UpdateEmployee():
            return _update(state, command.changes)
        case OffboardEmployee():
            if state.status == "offboarded":
                raise Conflict("the employee is already offboarded", code="already_offboarded")
            if command.successor_id == state.id:
                raise v.Invalid("an employee cannot succeed themselves", code="invalid_successor")
            return [EmployeeOffboarded(successor_id=command.successor_id)]
        case ReinstateEmployee():
            if state.status == "active":
                raise Conflict("the employee is active", code="not_offboarded")
            return [EmployeeReinstated()]
    raise TypeError(f"not an employee command: {command!r}")  # pragma: no cover


def _update(state: EmployeeState, changes: Mapping[str, Any]) -> list[Event]:
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise MailroomError(f"cannot change {sorted(unknown)}", code="not_updatable")
    name = _name(changes["name"]) if "name" in changes else state.name
    email = (
        v.normalise_address(changes["email"], what="email") if "email" in changes else state.email
    )
    title = (changes.get("title") or "").strip() if "title" in changes else state.title
    department = (
        clean_department(changes["department"]) if "department" in changes else state.department
    )
    if (name, email, title, department) == (state.name, state.email, state.title, state.department):
        return []
    return [EmployeeUpdated(name=name, email=email, title=title, department=department)]
