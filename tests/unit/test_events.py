"""Events: envelope on the wire, catalogue, versioning with upcasting, subjects, ids."""

from __future__ import annotations

import os
import re
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.events import (
    CATALOGUE,
    AccountAdded,
    AccountSettings,
    Catalogue,
    CommandContext,
    Envelope,
    Event,
    EventDecodeError,
    MessageReceived,
    UnknownEventType,
)
from libs.common.ids import uuid7
from libs.common.rebuild import subject_matches
from libs.common.subjects import SubjectError, event_subject, parse_subject

REQUIRED = [
    "AccountAdded", "AccountUpdated", "AccountDisabled", "AccountReactivated", "AccountDeleted",
    "CredentialRotated", "EmployeeAdded", "EmployeeOffboarded", "MailboxHandedOver",
    "AccessGranted", "AccessRevoked", "SyncFailed", "SyncRecovered", "AccountStatusChanged",
    "MailMissingDetected", "MessageReceived", "MessageSent", "SendFailed",
]  # fmt: skip


def test_catalogue_has_every_required_event() -> None:
    assert set(REQUIRED) <= set(CATALOGUE.names())


def test_uuid7_is_version_7_and_time_ordered() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(u.version == 7 for u in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_uuid7_random_bits_differ_across_pool_refills_and_after_fork() -> None:
    """The random part comes from a pooled OS CSPRNG: 2,000 ids cross several refills without
    a repeat, and a forked child does not replay its parent's pool."""
    tails = {u.int & ((1 << 62) - 1) for u in (uuid7() for _ in range(2000))}
    assert len(tails) == 2000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id's random bits, then out
        os.write(write, str(uuid7().int & ((1 << 62) - 1)).encode())
        os._exit(0)
    os.close(write)
    child = int(os.read(read, 64))
    os.waitpid(pid, 0)
    os.close(read)
    parent = uuid7().int & ((1 << 62) - 1)
    assert child != parent


def _account() -> Envelope:
    event = AccountAdded(
        address="sales@acme.example", protocol="imap", settings=AccountSettings(display_name="S")
    )
    return Envelope.wrap(
        event, CommandContext("acme", "admin:a"), aggregate_id="a1", aggregate_version=1
    )


def test_envelope_binary_mode_roundtrip() -> None:
    env = _account()
    headers = env.to_headers()
    assert headers["Nats-Msg-Id"] == env.id == headers["ce-id"]
    assert headers["ce-type"] == "mailroom.registry.AccountAdded.v1"
    assert headers["ce-source"] == "/mailroom/registry"
    assert headers["ce-tenantid"] == "acme"
    assert env.nats_subject == "mailroom.acme.registry.account.a1.AccountAdded"
    back = Envelope.from_nats(headers, env.body())
    assert back == env
    assert isinstance(back.event(), AccountAdded)


def test_alias_fields_survive_the_wire() -> None:
    m = MessageReceived.model_validate(
        {"folder": "INBOX", "uidvalidity": 1, "uid": 7, "from": "a@b"}
    )
    env = Envelope.wrap(m, CommandContext("t", "sync"), aggregate_id="m1", aggregate_version=1)
    assert env.data["from"] == "a@b"
    assert env.event() == m


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        (None, b"{}", "no CloudEvents headers"),
        ({"ce-id": "x"}, b"[1]", "not a JSON object"),
        ({"ce-id": "x"}, b"\xff", "not JSON"),
        ({"ce-id": "x"}, b"{}", "invalid envelope"),
    ],
)
def test_garbage_is_a_decode_error(headers: dict[str, str] | None, body: bytes, match: str) -> None:
    with pytest.raises(EventDecodeError, match=match):
        Envelope.from_nats(headers, body)


@given(st.binary(max_size=200), st.dictionaries(st.text(max_size=20), st.text(max_size=40)))
def test_decoder_never_crashes_on_garbage(body: bytes, headers: dict[str, str]) -> None:
    try:
        env = Envelope.from_nats(headers, body)
    except EventDecodeError:
        return
    with pytest.raises((EventDecodeError, UnknownEventType)):
        env.event()


def test_a_v1_event_stored_today_is_read_after_v2_exists() -> None:
    """Simulates the catalogue of today (v1) and of tomorrow (v1 and v2 with an upcaster)."""
    today = Catalogue()

    @today.register
    class RenamedV1(Event):
        event_name: ClassVar[str] = "Renamed"
        service: ClassVar[str] = "registry"
        aggregate: ClassVar[str] = "account"
        name: str

    stored = Envelope.wrap(
        RenamedV1(name="Ada Lovelace"),
        CommandContext("t", "a"),
        aggregate_id="x",
        aggregate_version=1,
    )
    stored_json = stored.model_dump_json()

    tomorrow = Catalogue()
    tomorrow.register(RenamedV1)

    @tomorrow.register
    class RenamedV2(Event):
        event_name: ClassVar[str] = "Renamed"
        event_version: ClassVar[int] = 2
        service: ClassVar[str] = "registry"
        aggregate: ClassVar[str] = "account"
        given_name: str
        family_name: str

    @tomorrow.upcaster("Renamed", 1)
    def _split(data: dict[str, Any]) -> dict[str, Any]:
        given, _, family = data.pop("name").partition(" ")
        return {**data, "given_name": given, "family_name": family}

    old = Envelope.model_validate_json(stored_json)
    assert old.type == "mailroom.registry.Renamed.v1"
    event = old.event(tomorrow)
    assert isinstance(event, RenamedV2)
    assert (event.given_name, event.family_name) == ("Ada", "Lovelace")
    assert RenamedV2.ce_type() == "mailroom.registry.Renamed.v2"
    with pytest.raises(UnknownEventType):
        tomorrow.decode("mailroom.registry.Renamed.v3", {})


def test_subjects() -> None:
    s = event_subject("acme", "registry", "account", "a1", "AccountAdded")
    parsed = parse_subject(s)
    assert parsed.template == "registry.account.AccountAdded"
    with pytest.raises(SubjectError):
        event_subject("ac.me", "registry", "account", "a1", "AccountAdded")
    with pytest.raises(SubjectError):
        event_subject("acme", "registry", "account", "a>", "AccountAdded")
    with pytest.raises(SubjectError, match="aggregate id"):
        event_subject("acme", "registry", "account", "", "AccountAdded")
    with pytest.raises(SubjectError, match="event"):
        event_subject("acme", "registry", "account", "a1", "Added\n")
    assert subject_matches("mailroom.>", s)
    assert subject_matches("mailroom.*.registry.>", s)
    assert not subject_matches("mailroom.*.authz.>", s)
    assert subject_matches("mailroom.acme.registry.account.*.AccountAdded", s)
    assert not subject_matches("mailroom.acme", s)


_PART = st.text(alphabet="aZ09_-. >*\n\u00e9", max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.tuples(_PART, _PART, _PART, _PART, _PART))
def test_event_subject_accepts_exactly_five_valid_tokens(parts: tuple[str, ...]) -> None:
    """The whole-subject check agrees with checking each token on its own."""
    valid = all(re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in parts)
    if valid:
        assert event_subject(*parts) == ".".join(("mailroom", *parts))
    else:
        with pytest.raises(SubjectError):
            event_subject(*parts)
