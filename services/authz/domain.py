"""Authorisation, pure: levels, a tenant's access state, ``evaluate`` and ``decide``.

Levels are cumulative: read < write < send < configure. A principal's level on a mailbox is the
highest of: tenant admin (configure, cannot be excluded), owner (configure), the employee's own
grant, a grant to the employee's department, or (service accounts) the token's scopes. Expired
grants count for nothing from the instant ``expires_at`` is reached: expiry is decided at check
time, so no sweep is needed for correctness. Offboarded employees are denied everything; a
disabled mailbox keeps read (and configure, to repair it) but refuses write and send; a deleted
mailbox refuses everything. Anything not allowed is denied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from libs.common.auth import Principal
from libs.common.authz_client import Decision
from libs.common.errors import Conflict, MailroomError, NotFound
from libs.common.events import authz as ev_authz
from libs.common.events.authz import GranteeKind, Level
from libs.common.events.base import Event
from services.authz.rules import ACTIONS, RANK, scope_level
from services.authz.state import (
    DropGrant,
    DropGranteeGrants,
    DropMailboxGrants,
    Employee,
    Grant,
    Mailbox,
    Op,
    PutEmployee,
    PutGrant,
    PutMailbox,
    ReassignOwner,
    SetMailbox,
    TenantState,
    build_state,
    effects,
    fmt_time,
    parse_time,
)

__all__ = [
    "ACTIONS",
    "RANK",
    "Decision",
    "DropGrant",
    "DropGranteeGrants",
    "DropMailboxGrants",
    "Employee",
    "Grant",
    "GrantAccess",
    "Mailbox",
    "Op",
    "Outcome",
    "PutEmployee",
    "PutGrant",
    "PutMailbox",
    "ReassignOwner",
    "RevokeAccess",
    "SetMailbox",
    "TenantState",
    "build_state",
    "decide",
    "effects",
    "evaluate",
    "fmt_time",
    "parse_time",
]


# --- evaluate -------------------------------------------------------------------------------
# evaluate() is the hot path (every check): plain tuples, no lambdas, detail text only for the
# answer actually given.


def _deny(reason: str, detail: str, state: TenantState, level: str | None = None) -> Decision:
    return Decision(False, reason, detail, level, None, None, False, state.revision)


# A source of access: (rank, priority, level, source, grant or None, note).
_Cand = tuple[int, int, Level, str, Grant | None, str]
_ADMIN: list[_Cand] = [(4, 4, "configure", "admin", None, "tenant admin")]
_OWNER: _Cand = (4, 3, "configure", "owner", None, "owner of the mailbox")


def candidates(
    state: TenantState, p: Principal, mb: Mailbox, now: datetime
) -> tuple[list[_Cand], int]:
    """Every source of access the principal has on the mailbox, and the best expired rank."""
    if p.role == "admin":
        return _ADMIN, 0
    if p.role == "service":
        scoped = scope_level(p.scopes, mb.mailbox_id)
        if scoped is None:
            return [], 0
        return [(RANK[scoped[0]], 2, scoped[0], "service_scope", None, f"scope {scoped[1]}")], 0
    out: list[_Cand] = [_OWNER] if mb.owner_id == p.subject else []
    expired = 0
    on_mb = state.grants.get(mb.mailbox_id)
    if on_mb:
        g = on_mb.get(("employee", p.subject))
        emp = state.employees.get(p.subject)
        d = on_mb.get(("department", emp.department)) if emp and emp.department else None
        for grant, priority, source in ((g, 1, "grant"), (d, 0, "department")):
            if grant is None:
                continue
            if grant.expires_at is not None and not now < grant.expires_at:
                expired = max(expired, RANK[grant.level])
            else:
                out.append((RANK[grant.level], priority, grant.level, source, grant, ""))
    return out, expired


def _detail(c: _Cand) -> str:
    g = c[4]
    if g is None:
        return c[5]
    how = " on behalf" if g.on_behalf else ""
    return f"{g.grantee_kind} grant {g.level}{how} to {g.grantee_id} (revision {g.revision})"


def evaluate(
    state: TenantState, principal: Principal, mailbox_id: str, action: str, now: datetime
) -> Decision:
    """May ``principal`` do ``action`` on ``mailbox_id`` at ``now``? Deny unless a rule allows."""
    if principal.tenant_id != state.tenant_id:
        return _deny("other_tenant", "the principal belongs to another tenant", state)
    need = ACTIONS.get(action)
    if need is None:
        return _deny("unknown_action", f"unknown action {action!r}", state)
    mb = state.mailboxes.get(mailbox_id)
    if mb is None:
        return _deny("unknown_mailbox", "no such mailbox in this tenant", state)
    if mb.deleted:
        return _deny("mailbox_deleted", "the mailbox was deleted", state)
    if principal.role != "service":
        emp = state.employees.get(principal.subject)
        if emp is not None and emp.offboarded:
            return _deny("offboarded", "the employee was offboarded", state)
    cands, expired = candidates(state, principal, mb, now)
    rank = RANK[need]
    best: _Cand | None = None  # the strongest source: the level held
    win: _Cand | None = None  # the source that allows: send-as over on-behalf, then priority
    win_key = (False, -1, 0)
    for c in cands:
        if best is None or c[:2] > best[:2]:
            best = c
        if c[0] >= rank:
            key = (not (c[4] is not None and c[4].on_behalf), c[1], c[0])
            if key > win_key:
                win, win_key = c, key
    held = best[2] if best is not None else None
    if win is None:
        if expired >= rank:
            return _deny("expired", f"the grant that allowed {need} has expired", state, held)
        if best is not None:
            return _deny("insufficient_level", f"{action} needs {need}; holds {held}", state, held)
        if principal.role == "service":
            return _deny("no_access", "no token scope covers this mailbox", state)
        return _deny("no_access", "no grant, ownership or role gives access", state)
    if mb.disabled and (need == "write" or need == "send"):
        return _deny("mailbox_disabled", "the account is disabled: read only", state, held)
    g = win[4]
    grantee = f"{g.grantee_kind}:{g.grantee_id}" if g is not None else None
    on_behalf = g is not None and g.on_behalf
    return Decision(True, win[3], _detail(win), held, win[3], grantee, on_behalf, state.revision)


# --- decide ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GrantAccess:
    mailbox_id: str
    grantee_kind: GranteeKind
    grantee_id: str
    level: Level
    on_behalf: bool = False
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RevokeAccess:
    mailbox_id: str
    grantee_kind: GranteeKind
    grantee_id: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command decided: events to append, or a refusal (to audit, then 403)."""

    events: list[Event]
    refused: str | None = None
    revision: int | None = None  # for an unchanged outcome: the revision already in force


def decide(
    cmd: GrantAccess | RevokeAccess, state: TenantState, actor: Principal, now: datetime
) -> Outcome:
    """Grant or revoke; ``state`` must hold the mailbox, its grants and the employees involved."""
    mb = state.mailboxes.get(cmd.mailbox_id)
    if mb is None or mb.deleted or actor.tenant_id != state.tenant_id:
        raise NotFound(f"mailbox {cmd.mailbox_id} does not exist", code="mailbox_not_found")
    own = evaluate(state, actor, cmd.mailbox_id, "configure", now)
    key = (cmd.grantee_kind, cmd.grantee_id)
    existing = state.grants.get(cmd.mailbox_id, {}).get(key)
    nxt = state.revision + 1
    if isinstance(cmd, RevokeAccess):
        leaving = actor.role == "employee" and key == ("employee", actor.subject)
        if not own.allowed and not leaving:
            return Outcome([], refused=f"revoking needs configure on the mailbox ({own.reason})")
        if existing is None:
            return Outcome([], revision=state.revision)
        reason = "left" if leaving and not own.allowed else "revoked"
        return Outcome(
            [
                ev_authz.AccessRevoked(
                    grantee_kind=cmd.grantee_kind,
                    grantee_id=cmd.grantee_id,
                    reason=reason,
                    revision=nxt,
                )
            ]
        )
    if not own.allowed:
        return Outcome([], refused=f"granting needs configure on the mailbox ({own.reason})")
    if own.level is None or RANK[cmd.level] > RANK[own.level]:  # pragma: no cover - configure
        return Outcome([], refused=f"cannot grant {cmd.level} above one's own {own.level}")
    if cmd.on_behalf and RANK[cmd.level] < RANK["send"]:
        raise MailroomError("on_behalf needs level send or configure", code="invalid_grant")
    if cmd.expires_at is not None and cmd.expires_at <= now:
        raise MailroomError("expires_at is in the past", code="invalid_expiry")
    grantee = state.employees.get(cmd.grantee_id) if cmd.grantee_kind == "employee" else None
    if grantee is not None and grantee.offboarded:
        raise Conflict(f"employee {cmd.grantee_id} was offboarded", code="grantee_offboarded")
    if (
        existing is not None
        and existing.active(now)
        and (existing.level, existing.on_behalf, existing.expires_at)
        == (cmd.level, cmd.on_behalf, cmd.expires_at)
    ):
        return Outcome([], revision=existing.revision)
    granted = ev_authz.AccessGranted(
        grantee_kind=cmd.grantee_kind,
        grantee_id=cmd.grantee_id,
        level=cmd.level,
        on_behalf=cmd.on_behalf,
        expires_at=fmt_time(cmd.expires_at),
        revision=nxt,
    )
    return Outcome([granted])


def revocations(grants: Iterable[Grant], reason: str, revision: int) -> list[tuple[str, Event]]:
    """AccessRevoked for each grant (offboarding, deleted mailbox), numbered from ``revision``."""
    return [
        (
            g.mailbox_id,
            ev_authz.AccessRevoked(
                grantee_kind=g.grantee_kind,
                grantee_id=g.grantee_id,
                reason=reason,
                revision=revision + i,
            ),
        )
        for i, g in enumerate(sorted(grants, key=lambda g: (g.mailbox_id, g.key)))
    ]


def expiries(grants: Iterable[Grant], revision: int) -> list[tuple[str, Event]]:
    return [
        (
            g.mailbox_id,
            ev_authz.AccessExpired(
                grantee_kind=g.grantee_kind, grantee_id=g.grantee_id, revision=revision + i
            ),
        )
        for i, g in enumerate(sorted(grants, key=lambda g: (g.mailbox_id, g.key)))
    ]
