"""A tenant's access state, and how events change it.

Events change the state through a few :data:`Op` s (``effects``); the in-memory index
(``TenantState.apply``) and the SQL projection (``AuthzRepository.apply_op``) interpret the same
ops, so both always agree (tests/unit/test_authz_projection.py checks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from libs.common.events import authz as ev_authz
from libs.common.events import registry as ev_reg
from libs.common.events.authz import GranteeKind, Level
from libs.common.events.base import Event


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    dt = datetime.fromisoformat(value)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def fmt_time(dt: datetime | None) -> str | None:
    """Fixed-width UTC text: sorts as time sorts (used as the stored form)."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- state ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Grant:
    mailbox_id: str
    grantee_kind: GranteeKind
    grantee_id: str
    level: Level
    on_behalf: bool = False
    expires_at: datetime | None = None
    revision: int = 0

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    @property
    def key(self) -> tuple[str, str]:
        return (self.grantee_kind, self.grantee_id)


@dataclass(slots=True)
class Mailbox:
    mailbox_id: str
    owner_id: str | None = None
    ownership: str = "personal"
    disabled: bool = False
    deleted: bool = False


@dataclass(slots=True)
class Employee:
    employee_id: str
    department: str | None = None
    offboarded: bool = False


@dataclass(frozen=True, slots=True)
class PutMailbox:
    mailbox_id: str
    owner_id: str | None
    ownership: str


@dataclass(frozen=True, slots=True)
class SetMailbox:
    """Change fields of a known mailbox (owner_id, ownership, disabled, deleted)."""

    mailbox_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ReassignOwner:
    from_owner: str
    to_owner: str | None


@dataclass(frozen=True, slots=True)
class PutEmployee:
    """Create or change an employee (department, offboarded)."""

    employee_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PutGrant:
    grant: Grant


@dataclass(frozen=True, slots=True)
class DropGrant:
    mailbox_id: str
    grantee_kind: str
    grantee_id: str


@dataclass(frozen=True, slots=True)
class DropMailboxGrants:
    mailbox_id: str


@dataclass(frozen=True, slots=True)
class DropGranteeGrants:
    grantee_kind: str
    grantee_id: str


Op = (
    PutMailbox
    | SetMailbox
    | ReassignOwner
    | PutEmployee
    | PutGrant
    | DropGrant
    | DropMailboxGrants
    | DropGranteeGrants
)


@dataclass
class TenantState:
    """Everything authz knows about one tenant, at ``revision``."""

    tenant_id: str
    revision: int = 0
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)
    employees: dict[str, Employee] = field(default_factory=dict)
    grants: dict[str, dict[tuple[str, str], Grant]] = field(default_factory=dict)
    held: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # grantee → mailboxes

    def put_grant(self, g: Grant) -> None:
        self.grants.setdefault(g.mailbox_id, {})[g.key] = g
        self.held.setdefault(g.key, set()).add(g.mailbox_id)

    def drop_grant(self, mailbox_id: str, key: tuple[str, str]) -> None:
        on_mb = self.grants.get(mailbox_id)
        if on_mb is not None and on_mb.pop(key, None) is not None:
            if not on_mb:
                del self.grants[mailbox_id]
            mbs = self.held[key]
            mbs.discard(mailbox_id)
            if not mbs:
                del self.held[key]

    def apply(self, op: Op) -> None:
        if isinstance(op, PutMailbox):
            self.mailboxes[op.mailbox_id] = Mailbox(op.mailbox_id, op.owner_id, op.ownership)
        elif isinstance(op, SetMailbox):
            mb = self.mailboxes.get(op.mailbox_id)
            for k, v in op.fields.items() if mb is not None else ():
                setattr(mb, k, v)
        elif isinstance(op, ReassignOwner):
            for mb in self.mailboxes.values():
                if mb.owner_id == op.from_owner:
                    mb.owner_id = op.to_owner
        elif isinstance(op, PutEmployee):
            emp = self.employees.setdefault(op.employee_id, Employee(op.employee_id))
            for k, v in op.fields.items():
                setattr(emp, k, v)
        elif isinstance(op, PutGrant):
            g = op.grant
            self.put_grant(
                Grant(
                    g.mailbox_id,
                    g.grantee_kind,
                    g.grantee_id,
                    g.level,
                    g.on_behalf,
                    g.expires_at,
                    g.revision,
                )
            )
        elif isinstance(op, DropGrant):
            self.drop_grant(op.mailbox_id, (op.grantee_kind, op.grantee_id))
        elif isinstance(op, DropMailboxGrants):
            for key in list(self.grants.get(op.mailbox_id, {})):
                self.drop_grant(op.mailbox_id, key)
        elif isinstance(op, DropGranteeGrants):
            key = (op.grantee_kind, op.grantee_id)
            for mb_id in list(self.held.get(key, ())):
                self.drop_grant(mb_id, key)

    def apply_event(self, event: Event, aggregate_id: str) -> bool:
        """Apply one event; False (and no new revision) if it does not concern access."""
        ops = effects(event, aggregate_id, self.revision + 1)
        if ops is None:
            return False
        self.revision += 1
        for op in ops:
            self.apply(op)
        return True

    def snapshot(self) -> dict[str, Any]:
        """A plain, ordered picture of the state (to compare two states)."""
        return {
            "revision": self.revision,
            "mailboxes": sorted(
                (m.mailbox_id, m.owner_id, m.ownership, m.disabled, m.deleted)
                for m in self.mailboxes.values()
            ),
            "employees": sorted(
                (e.employee_id, e.department or "", e.offboarded) for e in self.employees.values()
            ),
            "grants": sorted(
                (
                    g.mailbox_id,
                    g.grantee_kind,
                    g.grantee_id,
                    g.level,
                    g.on_behalf,
                    fmt_time(g.expires_at) or "",
                    g.revision,
                )
                for on_mb in self.grants.values()
                for g in on_mb.values()
            ),
        }


def effects(e: Event, aggregate_id: str, revision: int) -> list[Op] | None:
    """What an event changes, as ops; None for events that do not concern access."""
    mb = aggregate_id
    if isinstance(e, ev_authz.AccessGranted):
        g = Grant(
            mb,
            e.grantee_kind,
            e.grantee_id,
            e.level,
            e.on_behalf,
            parse_time(e.expires_at),
            revision,
        )
        return [PutGrant(g)]
    if isinstance(e, ev_authz.AccessRevoked | ev_authz.AccessExpired):
        return [DropGrant(mb, e.grantee_kind, e.grantee_id)]
    if isinstance(e, ev_reg.AccountAdded):
        return [PutMailbox(mb, e.owner_id, e.ownership)]
    if isinstance(e, ev_reg.AccountUpdated):
        changed: dict[str, Any] = {
            k: getattr(e, k) for k in ("owner_id", "ownership") if k in e.changed
        }
        return [SetMailbox(mb, changed)] if changed else []
    if isinstance(e, ev_reg.AccountDisabled | ev_reg.AccountReactivated):
        return [SetMailbox(mb, {"disabled": isinstance(e, ev_reg.AccountDisabled)})]
    if isinstance(e, ev_reg.AccountDeleted):
        return [SetMailbox(mb, {"deleted": True}), DropMailboxGrants(mb)]
    if isinstance(e, ev_reg.MailboxHandedOver):
        return [SetMailbox(mb, {"owner_id": e.to_owner_id})]
    if isinstance(e, ev_reg.EmployeeAdded):
        return [PutEmployee(aggregate_id, {"department": e.department, "offboarded": False})]
    if isinstance(e, ev_reg.EmployeeUpdated):
        return [PutEmployee(aggregate_id, {"department": e.department})]
    if isinstance(e, ev_reg.EmployeeOffboarded):
        # The leaver's grants end; their mailboxes go to the successor (or to nobody: a
        # reinstated employee gets nothing back automatically).
        return [
            PutEmployee(aggregate_id, {"offboarded": True}),
            DropGranteeGrants("employee", aggregate_id),
            ReassignOwner(aggregate_id, e.successor_id),
        ]
    if isinstance(e, ev_reg.EmployeeReinstated):
        return [PutEmployee(aggregate_id, {"offboarded": False})]
    return None


def build_state(tenant_id: str, events: Iterable[tuple[Event, str]]) -> TenantState:
    state = TenantState(tenant_id)
    for event, aggregate_id in events:
        state.apply_event(event, aggregate_id)
    return state
