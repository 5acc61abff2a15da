"""Who has what, pure: the access list of a mailbox and the mailboxes of an employee."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.authz.domain import Grant, TenantState
from services.authz.rules import RANK


@dataclass(frozen=True, slots=True)
class AccessEntry:
    grantee_kind: str  # employee | department | role
    grantee_id: str
    level: str
    source: str  # admin | owner | grant | department
    on_behalf: bool = False
    expires_at: datetime | None = None
    revision: int | None = None
    members: list[str] = field(default_factory=list)


def mailbox_access(state: TenantState, mailbox_id: str, now: datetime) -> list[AccessEntry]:
    """Every tenant admin, the owner, and each active grant (departments with their members)."""
    mb = state.mailboxes[mailbox_id]
    out = [AccessEntry("role", "admin", "configure", "admin")]
    if mb.owner_id is not None:
        owner = state.employees.get(mb.owner_id)
        if owner is None or not owner.offboarded:
            out.append(AccessEntry("employee", mb.owner_id, "configure", "owner"))
    grants = sorted(state.grants.get(mailbox_id, {}).values(), key=lambda g: g.key)
    for g in grants:
        if not g.active(now):
            continue
        members = []
        if g.grantee_kind == "department":
            members = sorted(
                e.employee_id
                for e in state.employees.values()
                if e.department == g.grantee_id and not e.offboarded
            )
        source = "grant" if g.grantee_kind == "employee" else "department"
        out.append(
            AccessEntry(
                g.grantee_kind,
                g.grantee_id,
                g.level,
                source,
                g.on_behalf,
                g.expires_at,
                g.revision,
                members,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class MailboxAccess:
    mailbox_id: str
    level: str
    source: str  # owner | grant | department
    grantee: str | None = None
    on_behalf: bool = False
    expires_at: datetime | None = None
    disabled: bool = False


def employee_access(state: TenantState, employee_id: str, now: datetime) -> list[MailboxAccess]:
    """The mailboxes an employee can reach, each at its best level (none once offboarded)."""
    emp = state.employees.get(employee_id)
    if emp is not None and emp.offboarded:
        return []
    best: dict[str, MailboxAccess] = {}

    def offer(candidate: MailboxAccess) -> None:
        mb = state.mailboxes.get(candidate.mailbox_id)
        if mb is None or mb.deleted:
            return
        current = best.get(candidate.mailbox_id)
        if current is None or RANK[candidate.level] > RANK[current.level]:
            best[candidate.mailbox_id] = candidate

    for mb in state.mailboxes.values():
        if mb.owner_id == employee_id:
            offer(MailboxAccess(mb.mailbox_id, "configure", "owner", disabled=mb.disabled))
    keys = [("employee", employee_id)]
    if emp is not None and emp.department is not None:
        keys.append(("department", emp.department))
    for key in keys:
        for mb_id in state.held.get(key, ()):
            g: Grant = state.grants[mb_id][key]
            if g.active(now):
                mb_row = state.mailboxes.get(mb_id)
                source = "grant" if key[0] == "employee" else "department"
                offer(
                    MailboxAccess(
                        mb_id,
                        g.level,
                        source,
                        f"{key[0]}:{key[1]}",
                        g.on_behalf,
                        g.expires_at,
                        bool(mb_row and mb_row.disabled),
                    )
                )
    return sorted(best.values(), key=lambda a: a.mailbox_id)
