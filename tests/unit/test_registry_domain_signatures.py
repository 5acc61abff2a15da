"""Mailbox and personal signatures as facts of the account and employee aggregates, pure."""

from __future__ import annotations

import pytest

from libs.common.errors import Conflict, NotFound
from libs.common.events.registry import (
    AccountAdded,
    AccountDisabled,
    AccountSettings,
    EmployeeAdded,
    EmployeeOffboarded,
    PersonalSignatureRemoved,
    PersonalSignatureSet,
    SignatureRemoved,
    SignatureSet,
)
from services.registry import domain_signatures as sig
from services.registry.domain import accounts, employees
from services.registry.validation import Invalid

ADDED = AccountAdded(address="a@x.io", protocol="imap", settings=AccountSettings())


def _account(*more: object) -> accounts.AccountState:
    return accounts.fold("a1", [ADDED, *more])  # type: ignore[list-item]


def test_set_sanitises_and_derives_text() -> None:
    [e] = sig.decide_mailbox(
        sig.SetSignature("default", "<b>{employee.name}</b><script>x</script>"),
        _account(),
        sig.MailboxSignatures(),
    )
    assert e == SignatureSet(name="default", html="<b>{employee.name}</b>", text="{employee.name}")


def test_same_content_again_changes_nothing_and_remove_is_idempotent() -> None:
    state = sig.fold_mailbox([SignatureSet(name="sales", html="<b>Hi</b>", text="Hi")])
    again = sig.decide_mailbox(sig.SetSignature("sales", "<b>Hi</b>"), _account(), state)
    assert again == []
    removed = sig.decide_mailbox(sig.RemoveSignature("sales"), _account(), state)
    assert removed == [SignatureRemoved(name="sales")]
    state = sig.evolve_mailbox(state, removed[0])
    assert sig.decide_mailbox(sig.RemoveSignature("sales"), _account(), state) == []


@pytest.mark.parametrize("name", ["", "Sales", "a b", "-x", "x" * 65, "../etc"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(Invalid) as info:
        sig.decide_mailbox(sig.SetSignature(name, "Hi"), _account(), sig.MailboxSignatures())
    assert info.value.code == "invalid_signature_name"


def test_unknown_placeholder_empty_and_too_many() -> None:
    none = sig.MailboxSignatures()
    with pytest.raises(Invalid) as info:
        sig.decide_mailbox(sig.SetSignature("default", "{employee.nmae}"), _account(), none)
    assert info.value.code == "unknown_placeholder"
    with pytest.raises(Invalid) as info:
        sig.decide_mailbox(sig.SetSignature("default", "<script>x</script>"), _account(), none)
    assert info.value.code == "empty_signature"
    full = sig.fold_mailbox(
        SignatureSet(name=f"n{i}", html="x", text="x") for i in range(sig.MAX_ALTERNATES)
    )
    with pytest.raises(Invalid) as info:
        sig.decide_mailbox(sig.SetSignature("one-more", "x"), _account(), full)
    assert info.value.code == "too_many_signatures"
    assert sig.decide_mailbox(sig.SetSignature("default", "x"), _account(), full)  # default ok


def test_account_must_exist_and_be_active() -> None:
    with pytest.raises(NotFound):
        sig.decide_mailbox(
            sig.SetSignature("default", "x"), accounts.AccountState("a1"), sig.MailboxSignatures()
        )
    with pytest.raises(Conflict):
        sig.decide_mailbox(
            sig.SetSignature("default", "x"), _account(AccountDisabled()), sig.MailboxSignatures()
        )


def test_personal_signature() -> None:
    emp = employees.fold("e1", [EmployeeAdded(name="Ada", email="ada@x.io")])
    [e] = sig.decide_personal(sig.SetPersonal("<i>Ada</i>"), emp, None)
    assert e == PersonalSignatureSet(html="<i>Ada</i>", text="Ada")
    current = sig.fold_personal([e])
    assert sig.decide_personal(sig.SetPersonal("<i>Ada</i>"), emp, current) == []
    assert sig.decide_personal(sig.RemovePersonal(), emp, current) == [PersonalSignatureRemoved()]
    assert sig.decide_personal(sig.RemovePersonal(), emp, None) == []
    gone = employees.evolve(emp, EmployeeOffboarded())
    with pytest.raises(Conflict):
        sig.decide_personal(sig.SetPersonal("x"), gone, None)
    with pytest.raises(NotFound):
        sig.decide_personal(sig.SetPersonal("x"), employees.EmployeeState("e2"), None)
