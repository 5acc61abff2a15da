"""Signatures, pure: a mailbox's default and named alternates (facts of the account aggregate)
and an employee's personal signature (a fact of the employee aggregate).

``decide_*`` sanitise the HTML (``signatures.prepare``), refuse unknown placeholders, and
return no event when the stored signature is already the same (idempotent); ``evolve``/``fold``
rebuild the signatures from the aggregate's events (other events pass through).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from libs.common.errors import Conflict, NotFound
from libs.common.events.base import Event
from libs.common.events.registry import (
    PersonalSignatureRemoved,
    PersonalSignatureSet,
    SignatureRemoved,
    SignatureSet,
)
from services.registry import signatures
from services.registry.domain_accounts import AccountState
from services.registry.domain_employees import EmployeeState
from services.registry.validation import Invalid

DEFAULT = "default"
MAX_ALTERNATES = 50
NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?\Z")


@dataclass(frozen=True, slots=True)
class Stored:
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class MailboxSignatures:
    by_name: Mapping[str, Stored] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def alternates(self) -> int:
        return sum(1 for n in self.by_name if n != DEFAULT)


# --- commands ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SetSignature:
    name: str
    html: str


@dataclass(frozen=True, slots=True)
class RemoveSignature:
    name: str


@dataclass(frozen=True, slots=True)
class SetPersonal:
    html: str


@dataclass(frozen=True, slots=True)
class RemovePersonal:
    pass


# --- evolve -----------------------------------------------------------------------------------
def evolve_mailbox(state: MailboxSignatures, event: Event) -> MailboxSignatures:
    match event:
        case SignatureSet():
            found = {**state.by_name, event.name: Stored(event.html, event.text)}
        case SignatureRemoved():
            found = {k: v for k, v in state.by_name.items() if k != event.name}
        case _:
            return state
    return MailboxSignatures(MappingProxyType(found))


def fold_mailbox(events: Iterable[Event]) -> MailboxSignatures:
    state = MailboxSignatures()
    for e in events:
        state = evolve_mailbox(state, e)
    return state


def evolve_personal(state: Stored | None, event: Event) -> Stored | None:
    match event:
        case PersonalSignatureSet():
            return Stored(event.html, event.text)
        case PersonalSignatureRemoved():
            return None
    return state


def fold_personal(events: Iterable[Event]) -> Stored | None:
    state: Stored | None = None
    for e in events:
        state = evolve_personal(state, e)
    return state


# --- decide -----------------------------------------------------------------------------------
def check_name(name: str) -> str:
    if not NAME.match(name):
        raise Invalid(
            "a signature name is 'default' or 1-64 lower-case letters, digits, '-' or '_'",
            code="invalid_signature_name",
            details={"field": "name"},
        )
    return name


def prepare(raw_html: str) -> Stored:
    """Sanitise; refuse unknown placeholders and a signature left empty by the sanitiser."""
    try:
        html, text = signatures.prepare(raw_html)
    except signatures.SignatureError as exc:
        raise Invalid(str(exc), code=exc.code, details={"field": "html"}) from None
    if not text.strip() and "<img src=" not in html:  # e.g. only a script, or a remote image
        raise Invalid(
            "the signature is empty once sanitised (DELETE removes a signature)",
            code="empty_signature",
            details={"field": "html"},
        )
    return Stored(html, text)


def _require_account(state: AccountState) -> None:
    if state.status == "new":
        raise NotFound(f"no account {state.id}")
    if state.status == "deleted":
        raise NotFound(f"account {state.id} was deleted", code="account_deleted")
    if state.status == "disabled":
        raise Conflict(
            "the account is disabled: reactivate it before changing it", code="account_disabled"
        )


def decide_mailbox(
    command: SetSignature | RemoveSignature, account: AccountState, state: MailboxSignatures
) -> list[Event]:
    name = check_name(command.name)
    _require_account(account)
    current = state.by_name.get(name)
    if isinstance(command, RemoveSignature):
        return [] if current is None else [SignatureRemoved(name=name)]
    new = prepare(command.html)
    if new == current:
        return []
    if current is None and name != DEFAULT and state.alternates >= MAX_ALTERNATES:
        raise Invalid(
            f"a mailbox may have at most {MAX_ALTERNATES} alternate signatures",
            code="too_many_signatures",
        )
    return [SignatureSet(name=name, html=new.html, text=new.text)]


def decide_personal(
    command: SetPersonal | RemovePersonal, employee: EmployeeState, current: Stored | None
) -> list[Event]:
    if employee.status == "new":
        raise NotFound(f"no employee {employee.id}")
    if isinstance(command, RemovePersonal):
        return [] if current is None else [PersonalSignatureRemoved()]
    if employee.status == "offboarded":
        raise Conflict("the employee is offboarded", code="employee_offboarded")
    new = prepare(command.html)
    if new == current:
        return []
    return [PersonalSignatureSet(html=new.html, text=new.text)]
