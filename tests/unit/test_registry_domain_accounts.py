"""The account aggregate, pure: decide/evolve for every command and invalid transition."""

from __future__ import annotations

from typing import Any

import pytest

from libs.common.errors import Conflict, MailroomError, NotFound
from libs.common.events import (
    AccountAdded,
    AccountDeleted,
    AccountDisabled,
    AccountReactivated,
    AccountUpdated,
    CredentialAccessed,
    CredentialRef,
    CredentialRotated,
    MailboxHandedOver,
)
from libs.common.events.base import Event
from services.registry.domain import accounts as d
from services.registry.validation import Invalid, ServerSpec

IMAPS = ServerSpec("imap.example.com", 993, "ssl")
SUBMISSION = ServerSpec("smtp.example.com", 587, "starttls")
REF = CredentialRef(blob_id="b1", version=1, kek_version=1)


def add(**over: Any) -> d.AddAccount:
    values = {"incoming": IMAPS, "outgoing": SUBMISSION, **over.pop("values", {})}
    return d.AddAccount(
        **{"address": "Alice@Example.COM", "protocol": "imap", "values": values, **over}
    )


def history(*events: Event) -> d.AccountState:
    return d.fold("a1", events)


def added(**over: Any) -> d.AccountState:
    return history(*d.decide(add(**over), d.AccountState("a1")))


def fail(command: d.Command, state: d.AccountState, exc: type[Exception], code: str) -> None:
    with pytest.raises(exc) as info:
        d.decide(command, state)
    assert getattr(info.value, "code", None) == code, info.value


def test_add_normalises_and_evolves_to_active() -> None:
    [event] = d.decide(add(credential=REF), d.AccountState("a1"))
    assert isinstance(event, AccountAdded)
    assert event.address == "Alice@example.com"  # domain lower-cased, local part kept
    assert event.settings.incoming is not None and event.settings.incoming.protocol == "imap"
    assert event.settings.outgoing is not None and event.settings.outgoing.protocol == "smtp"
    assert event.settings.username == "Alice@example.com" and event.credential == REF
    state = history(event)
    assert (state.status, state.version, state.credential) == ("active", 1, REF)


def test_add_twice_is_a_conflict() -> None:
    fail(add(), added(), Conflict, "account_exists")


@pytest.mark.parametrize(
    ("values", "code"),
    [
        ({"incoming": ServerSpec("imap.example.com", 993, "starttls")}, "invalid_server"),
        ({"incoming": ServerSpec("imap.example.com", 143, "ssl")}, "invalid_server"),
        ({"outgoing": ServerSpec("smtp.example.com", 587, "ssl")}, "invalid_server"),
        ({"outgoing": ServerSpec("smtp.example.com", 465, "starttls")}, "invalid_server"),
        ({"incoming": ServerSpec("imap.example.com", 995, "ssl")}, "invalid_server"),
        ({"incoming": ServerSpec("bad host!", 993, "ssl")}, "invalid_server"),
        ({"incoming": ServerSpec("imap.example.com", 993, "ssl", "pop3")}, "invalid_server"),
        ({"incoming": ServerSpec("imap.example.com", 1143, "none")}, "insecure_not_allowed"),
        ({"outgoing": None}, "invalid_server"),
        ({"forwarding": [f"f{i}@example.com" for i in range(21)]}, "too_many_forwards"),
        ({"auto_bcc": [f"b{i}@example.com" for i in range(21)]}, "too_many_bcc"),
        ({"forwarding": ["not an address"]}, "invalid_address"),
        ({"forwarding": ["alice@example.com"]}, "forwarding_loop"),
        ({"send_as_address": "nope@"}, "invalid_address"),
        ({"polling_interval_s": 5}, "invalid_polling_interval"),
        ({"daily_send_limit": 0}, "invalid_send_limit"),
    ],
)
def test_add_refuses_invalid_settings(values: dict[str, Any], code: str) -> None:
    fail(add(values=values), d.AccountState("a1"), Invalid, code)


def test_add_refuses_bad_address_unknown_preset_and_missing_protocol() -> None:
    fail(add(address="no-at-sign"), d.AccountState("a1"), Invalid, "invalid_address")
    fail(add(preset_id="nope"), d.AccountState("a1"), Invalid, "unknown_preset")
    fail(add(protocol=None), d.AccountState("a1"), Invalid, "protocol_required")


def test_insecure_server_needs_the_opt_in() -> None:
    plain = ServerSpec("imap.example.com", 143, "none")
    [event] = d.decide(
        add(values={"incoming": plain, "allow_insecure": True}), d.AccountState("a1")
    )
    assert isinstance(event, AccountAdded) and event.settings.allow_insecure


def test_preset_fills_servers_username_and_auth_mode() -> None:
    [event] = d.decide(
        d.AddAccount(address="bob@gmail.com", preset_id="gmail", values={}), d.AccountState("a1")
    )
    assert isinstance(event, AccountAdded)
    assert event.protocol == "gmail" and event.preset_id == "gmail"
    assert event.settings.incoming is not None
    assert event.settings.incoming.host == "imap.gmail.com"
    assert event.settings.auth_mode == "app_password"
    pop = d.decide(
        d.AddAccount(address="bob@gmail.com", protocol="pop3", preset_id="gmail"),
        d.AccountState("a1"),
    )[0]
    assert isinstance(pop, AccountAdded) and pop.settings.incoming is not None
    assert pop.settings.incoming.protocol == "pop3"
    fail(
        d.AddAccount(address="bob@gmail.com", preset_id="gmail", values={"auth_mode": "password"}),
        d.AccountState("a1"),
        Invalid,
        "unsupported_auth_mode",
    )


def test_exchange_needs_an_ews_url_and_sends_through_it() -> None:
    fail(
        d.AddAccount(address="c@corp.example", preset_id="exchange"),
        d.AccountState("a1"),
        Invalid,
        "invalid_server",
    )
    ews = ServerSpec(url="https://mail.corp.example/EWS/Exchange.asmx")
    [event] = d.decide(
        d.AddAccount(address="c@corp.example", preset_id="exchange", values={"incoming": ews}),
        d.AccountState("a1"),
    )
    assert isinstance(event, AccountAdded) and event.settings.incoming is not None
    assert (event.settings.incoming.protocol, event.settings.incoming.port) == ("ews", 443)
    assert event.settings.outgoing == event.settings.incoming
    http = ServerSpec(url="http://mail.corp.example/EWS/Exchange.asmx")
    fail(
        d.AddAccount(address="c@corp.example", protocol="exchange", values={"incoming": http}),
        d.AccountState("a1"),
        Invalid,
        "insecure_not_allowed",
    )


def test_custom_account_infers_or_needs_the_protocol() -> None:
    [event] = d.decide(
        d.AddAccount(
            address="x@example.com",
            protocol="custom",
            values={"incoming": ServerSpec("mx.example.com", 995, "ssl")},
        ),
        d.AccountState("a1"),
    )
    assert isinstance(event, AccountAdded) and event.settings.incoming is not None
    assert event.settings.incoming.protocol == "pop3" and event.settings.outgoing is None
    odd = ServerSpec("mx.example.com", 2000, "ssl")
    fail(
        d.AddAccount(address="x@example.com", protocol="custom", values={"incoming": odd}),
        d.AccountState("a1"),
        Invalid,
        "invalid_server",
    )


def test_update_emits_only_changed_fields_and_nothing_for_a_no_op() -> None:
    state = added()
    [event] = d.decide(
        d.UpdateAccount({"display_name": "Alice", "owner_id": "e1", "polling_interval_s": 120}),
        state,
    )
    assert isinstance(event, AccountUpdated)
    assert event.changed == ["display_name", "polling_interval_s", "owner_id"]
    after = d.evolve(state, event)
    assert after.settings.display_name == "Alice" and after.owner_id == "e1"
    assert d.decide(d.UpdateAccount({"display_name": "Alice"}), after) == []
    fail(d.UpdateAccount({"address": "x@example.com"}), state, MailroomError, "not_updatable")
    fail(
        d.UpdateAccount({"incoming": ServerSpec("imap.example.com", 993, "none")}),
        state,
        Invalid,
        "insecure_not_allowed",
    )


def test_update_revalidates_servers_against_allow_insecure() -> None:
    plain = ServerSpec("imap.example.com", 143, "none")
    state = added(values={"incoming": plain, "allow_insecure": True})
    fail(d.UpdateAccount({"allow_insecure": False}), state, Invalid, "insecure_not_allowed")


def test_disable_reactivate_and_their_invalid_transitions() -> None:
    state = added()
    fail(d.ReactivateAccount(), state, Conflict, "not_disabled")
    [off] = d.decide(d.DisableAccount("left"), state)
    assert off == AccountDisabled(reason="left")
    disabled = d.evolve(state, off)
    assert disabled.status == "disabled"
    fail(d.DisableAccount(), disabled, Conflict, "already_disabled")
    fail(d.UpdateAccount({"display_name": "x"}), disabled, Conflict, "account_disabled")
    fail(
        d.ReplaceCredential(REF.model_copy(update={"version": 1})),
        disabled,
        Conflict,
        "account_disabled",
    )
    fail(d.AccessCredential("sync", "poll", "t"), disabled, Conflict, "account_disabled")
    [on] = d.decide(d.ReactivateAccount(), disabled)
    assert on == AccountReactivated() and d.evolve(disabled, on).status == "active"


def test_delete_keeps_only_non_secret_facts_and_ends_the_aggregate() -> None:
    state = added(credential=REF)
    [event] = d.decide(d.DeleteAccount(), state)
    assert event == AccountDeleted(address="Alice@example.com", credential_shredded=True)
    gone = d.evolve(state, event)
    assert gone.status == "deleted" and gone.credential is None
    for command in (
        d.UpdateAccount({}),
        d.DisableAccount(),
        d.ReactivateAccount(),
        d.DeleteAccount(),
        d.ReplaceCredential(REF),
        d.RewrapCredential(REF),
        d.AccessCredential("sync", "p", "t"),
    ):
        fail(command, gone, NotFound, "account_deleted")
    disabled = history(*d.decide(add(), d.AccountState("a1")), AccountDisabled())
    assert d.decide(d.DeleteAccount(), disabled) == [
        AccountDeleted(address="Alice@example.com", credential_shredded=False)
    ]


def test_commands_on_an_unknown_account_are_not_found() -> None:
    fail(d.DisableAccount(), d.AccountState("a1"), NotFound, "not_found")
    fail(d.AccessCredential("sync", "p", "t"), d.AccountState("a1"), NotFound, "not_found")


def test_replace_credential_needs_the_next_version() -> None:
    state = added(credential=REF)
    assert d.next_credential_version(state) == 2
    v2 = CredentialRef(blob_id="b2", version=2, kek_version=1)
    [event] = d.decide(d.ReplaceCredential(v2), state)
    assert event == CredentialRotated(credential=v2, cause="replaced")
    assert d.evolve(state, event).credential == v2
    fail(d.ReplaceCredential(REF), state, Conflict, "credential_version")
    assert d.next_credential_version(added()) == 1


def test_rewrap_changes_only_the_kek_version() -> None:
    state = added(credential=REF)
    moved = REF.model_copy(update={"kek_version": 2})
    assert d.decide(d.RewrapCredential(moved), state) == [
        CredentialRotated(credential=moved, cause="kek_rotation")
    ]
    assert d.decide(d.RewrapCredential(REF), state) == []
    fail(
        d.RewrapCredential(moved.model_copy(update={"version": 5})),
        state,
        Conflict,
        "credential_version",
    )
    fail(d.RewrapCredential(moved), added(), Conflict, "no_credential")
    disabled = d.evolve(state, AccountDisabled())
    assert d.decide(d.RewrapCredential(moved), disabled)  # rotation must reach every blob


def test_access_credential_audits_the_lease() -> None:
    state = added(credential=REF)
    [event] = d.decide(d.AccessCredential("sender", "send", "2030-01-01T00:00:00Z"), state)
    assert event == CredentialAccessed(
        credential=REF, by_service="sender", purpose="send", lease_expires_at="2030-01-01T00:00:00Z"
    )
    after = d.evolve(state, event)
    assert after.version == state.version + 1 and after.credential == REF
    fail(d.AccessCredential("mallory", "p", "t"), state, Invalid, "unknown_service")
    fail(d.AccessCredential("sync", "p", "t"), added(), Conflict, "no_credential")


def test_handover_changes_the_owner() -> None:
    state = d.evolve(added(owner_id="e1"), MailboxHandedOver(from_owner_id="e1", to_owner_id="e2"))
    assert state.owner_id == "e2"
