"""From CSV rows to checked account commands (no database access).

Each row becomes a :class:`Planned` account - its ``AddAccount`` command already decided
against a fresh aggregate, so every validation of ``POST /v1/accounts`` applies - or a row
error. Servers a row leaves out are filled like ``POST /v1/accounts`` does (organisation
settings, preset, discovery once per domain).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, SecretStr

from libs.common.errors import MailroomError
from libs.common.events.registry import AccountAdded, AuthMode, Ownership, Protocol, Security
from services.registry import validation as v
from services.registry.autofill import Autofill
from services.registry.connect import ConnectionReport
from services.registry.csvimport import Row, RowProblem, safe_text
from services.registry.domain import accounts, employees
from services.registry.domain_accounts import AccountState

Status = Literal["created", "would_create", "unchanged", "duplicate", "error"]
_LIST = re.compile(r"[;,\s]+")
_TRUE = frozenset({"1", "true", "yes", "y", "on", "ja", "oui", "是"})
_FALSE = frozenset({"0", "false", "no", "n", "off", "nein", "non", "否"})


class RowResult(BaseModel):
    row: int
    address: str
    status: Status
    account_id: str | None = None
    code: str | None = None
    message: str | None = None
    column: str | None = None
    servers_from: str | None = None
    employee_created: bool = False
    connection: ConnectionReport | None = None


class ImportReport(BaseModel):
    dry_run: bool
    tested: bool
    encoding: str
    delimiter: str
    columns: list[str]
    ignored_columns: list[str]
    rows_total: int
    created: int = 0
    would_create: int = 0
    unchanged: int = 0
    duplicates: int = 0
    errors: int = 0
    employees_created: int = 0
    elapsed_ms: int = 0
    rows: list[RowResult] = []


@dataclass
class Planned:
    row: int
    address: str
    key: str
    added: AccountAdded
    command: accounts.AddAccount
    secret: SecretStr | None
    source: str
    owner_key: str | None = None
    employee: employees.AddEmployee | None = None
    owner_id: str | None = None
    result: RowResult | None = field(default=None)


class RowError(MailroomError):
    def __init__(self, message: str, code: str, column: str | None = None) -> None:
        super().__init__(message, code=code, details={"field": column} if column else None)
        self.column = column


def _choice(cells: dict[str, str], column: str, allowed: tuple[str, ...]) -> Any:
    value = cells.get(column, "").lower()
    if not value:
        return None
    if value not in allowed:
        raise RowError(f"{column} must be one of {', '.join(allowed)}", f"invalid_{column}", column)
    return value


def _int(cells: dict[str, str], column: str) -> int | None:
    value = cells.get(column, "")
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise RowError(f"{column} must be a whole number", "invalid_number", column)
    return int(value)


def _bool(cells: dict[str, str], column: str) -> bool | None:
    value = cells.get(column, "").lower()
    if not value:
        return None
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise RowError(f"{column} must be true or false", "invalid_boolean", column)


def _list(cells: dict[str, str], column: str) -> list[str] | None:
    value = cells.get(column, "")
    return [x for x in _LIST.split(value) if x] if value else None


def _server(cells: dict[str, str], slot: str) -> v.ServerSpec | None:
    host = cells.get(f"{slot}_host") or None
    url = (cells.get("ews_url") or None) if slot == "incoming" else None
    if host is None and url is None:
        return None
    protocol: v.ServerProtocol | None = (
        _choice(cells, "incoming_protocol", ("imap", "pop3", "ews"))
        if slot == "incoming"
        else "smtp"
    )
    return v.ServerSpec(
        host,
        _int(cells, f"{slot}_port"),
        _choice(cells, f"{slot}_security", get_args(Security)),
        protocol,
        url,
    )


def values_of(cells: dict[str, str]) -> dict[str, Any]:
    """The account values of a row (keys of ``AccountIn``; servers as ServerSpec)."""
    values: dict[str, Any] = {
        "display_name": cells.get("display_name") or None,
        "incoming": _server(cells, "incoming"),
        "outgoing": _server(cells, "outgoing"),
        "username": cells.get("username") or None,
        "auth_mode": _choice(cells, "auth_mode", get_args(AuthMode)),
        "allow_insecure": _bool(cells, "allow_insecure"),
        "polling_interval_s": _int(cells, "polling_interval_s"),
        "daily_send_limit": _int(cells, "daily_send_limit"),
        "forwarding": _list(cells, "forwarding"),
        "auto_bcc": _list(cells, "auto_bcc"),
        "send_as_name": cells.get("send_as_name") or None,
        "send_as_address": cells.get("send_as_address") or None,
        "leave_on_server": _bool(cells, "leave_on_server"),
        "folders": [f for f in cells.get("folders", "").split(";") if f.strip()] or None,
    }
    return {k: val for k, val in values.items() if val is not None}


def error_result(row: int, address: str, exc: MailroomError) -> RowResult:
    column = exc.details.get("field") if isinstance(exc.details.get("field"), str) else None
    return RowResult(
        row=row,
        address=address,
        status="error",
        code=exc.code,
        message=f"row {row}: {exc.message}",
        column=column,
    )


def problem_result(p: RowProblem, address: str = "") -> RowResult:
    return RowResult(
        row=p.number,
        address=address,
        status="error",
        code=p.code,
        message=f"row {p.number}: {p.message}",
        column=p.column,
    )


async def plan_row(row: Row, autofill: Autofill) -> Planned | RowResult:
    cells = row.cells
    raw = cells.get("address", "")
    shown = safe_text(raw)
    try:
        if not raw:
            raise RowError("address is empty", "address_required", "address")
        address = v.normalise_address(raw)
        shown = address
        protocol: Protocol | None = _choice(
            cells, "protocol", ("imap", "pop3", "exchange", "office365", "gmail", "custom")
        )
        ownership: Ownership = _choice(cells, "ownership", ("personal", "shared")) or "personal"
        fill = await autofill.fill(address, protocol, cells.get("preset") or None, values_of(cells))
        command = accounts.AddAccount(
            address=address,
            protocol=fill.protocol,
            preset_id=fill.preset_id,
            ownership=ownership,
            values=fill.values,
        )
        [added] = accounts.decide(command, AccountState("import"))
        assert isinstance(added, AccountAdded)
        planned = Planned(
            row=row.number,
            address=added.address,
            key=v.address_key(added.address),
            added=added,
            command=command,
            secret=SecretStr(cells["password"]) if cells.get("password") else None,
            source=fill.source,
        )
        owner = cells.get("owner_email")
        if owner:
            email = v.normalise_address(owner, what="owner_email")
            planned.owner_key = v.address_key(email)
            name = cells.get("employee_name") or email.split("@")[0]
            planned.employee = employees.AddEmployee(
                name=name,
                email=email,
                title=cells.get("employee_title", ""),
                department=cells.get("department") or None,
            )
            employees.decide(planned.employee, employees.EmployeeState("import"))
    except MailroomError as exc:
        return error_result(row.number, shown, exc)
    except (ValueError, TypeError):  # a value no check above foresaw: this row only
        return error_result(
            row.number,
            shown,
            MailroomError("a value of this row is not usable", code="invalid_row"),
        )
    return planned
