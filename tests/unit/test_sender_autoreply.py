"""The autoresponder's decisions (RFC 3834), pure; and the header facts sync reports for them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.events import CATALOGUE, CommandContext, Envelope, MessageReceived
from services.sender import autoreply, domain
from services.sender.autoreply import Incoming, Rule, decide
from services.sync.mailmeta import MessageMeta, parse_headers

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
OWN = frozenset({"leaver@corp.example", "team@corp.example"})
RULE = Rule(text="I am away.", set_at=NOW - timedelta(hours=1))


def mail(**over: object) -> Incoming:
    base = Incoming(
        folder="INBOX",
        seen_at=NOW - timedelta(minutes=1),
        message_id="<m1@example.org>",
        from_="Alice Example <Alice@Example.org>",
        subject="Lunch?",
    )
    return replace(base, **over)  # type: ignore[arg-type]


def test_a_plain_message_is_answered_with_rfc3834_headers() -> None:
    v = decide(RULE, mail(), OWN, None, NOW)
    assert v.skipped is None and v.reply is not None
    assert v.reply.to == "alice@example.org"  # From, as there is no Return-Path
    assert v.reply.subject == "Auto: Lunch?"  # §3.1.5
    assert v.reply.in_reply_to == "<m1@example.org>"  # §3.1.6
    assert v.reply.references == ["<m1@example.org>"]
    assert ("Auto-Submitted", "auto-replied") in autoreply.REPLY_HEADERS  # §5


def test_the_reply_goes_to_the_return_path() -> None:
    v = decide(RULE, mail(return_path="bounces-alice@lists.example.org"), OWN, None, NOW)
    assert v.skipped == "robot_sender"  # a VERP bounce address is a robot's
    v = decide(RULE, mail(return_path="alice.private@example.org"), OWN, None, NOW)
    assert v.reply is not None and v.reply.to == "alice.private@example.org"


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"auto_submitted": "auto-replied"}, "auto_submitted"),
        ({"auto_submitted": "auto-generated"}, "auto_submitted"),
        ({"auto_submitted": "auto-notified; owner-email=x@y.z"}, "auto_submitted"),
        ({"precedence": "bulk"}, "bulk"),
        ({"precedence": "List"}, "bulk"),
        ({"precedence": "junk"}, "bulk"),
        ({"mailing_list": True}, "mailing_list"),
        ({"auto_response_suppress": "OOF, AutoReply"}, "suppressed"),
        ({"auto_response_suppress": "All"}, "suppressed"),
        ({"return_path": ""}, "null_sender"),
        ({"from_": None}, "no_sender"),
        ({"from_": "a@x.example, b@x.example"}, "no_sender"),
        ({"from_": "not an address"}, "no_sender"),
        ({"from_": "MAILER-DAEMON@mx.example.org"}, "robot_sender"),
        ({"from_": "no-reply@shop.example"}, "robot_sender"),
        ({"from_": "noreply@shop.example"}, "robot_sender"),
        ({"from_": "postmaster@example.org"}, "robot_sender"),
        ({"from_": "owner-staff@lists.example.org"}, "robot_sender"),
        ({"from_": "staff-request@lists.example.org"}, "robot_sender"),
        ({"from_": "Leaver <LEAVER@corp.example>"}, "own_address"),
        ({"return_path": "team@corp.example"}, "own_address"),
        ({"folder": "Junk"}, "not_inbox"),
        ({"seen_at": NOW - timedelta(hours=2)}, "before_autoreply"),
    ],
)
def test_automatic_list_robot_and_own_mail_is_never_answered(
    over: dict[str, object], why: str
) -> None:
    v = decide(RULE, mail(**over), OWN, None, NOW)
    assert v.reply is None and v.skipped == why


def test_auto_submitted_no_is_a_person() -> None:
    assert decide(RULE, mail(auto_submitted="no"), OWN, None, NOW).reply is not None
    assert decide(RULE, mail(auto_response_suppress="DR, NDR"), OWN, None, NOW).reply


def test_once_per_correspondent_per_interval() -> None:
    week = Rule(text="away", interval_days=7, set_at=RULE.set_at)
    assert decide(week, mail(), OWN, NOW - timedelta(days=6, hours=23), NOW).skipped == (
        "recently_replied"
    )
    assert decide(week, mail(), OWN, NOW - timedelta(days=7), NOW).reply is not None
    day = replace(week, interval_days=1)
    assert decide(day, mail(), OWN, NOW - timedelta(days=2), NOW).reply is not None


def test_the_window() -> None:
    later = replace(RULE, starts_at=NOW + timedelta(hours=1))
    over = replace(RULE, ends_at=NOW)
    inside = replace(RULE, starts_at=NOW - timedelta(days=1), ends_at=NOW + timedelta(days=1))
    assert decide(later, mail(), OWN, None, NOW).skipped == "inactive"
    assert decide(over, mail(), OWN, None, NOW).skipped == "inactive"
    assert decide(inside, mail(), OWN, None, NOW).reply is not None
    assert decide(None, mail(), OWN, None, NOW).skipped == "inactive"


def test_subjects() -> None:
    assert autoreply.reply_subject("Lunch?", "Out of office") == "Out of office"
    assert autoreply.reply_subject(None, None) == "Automatic reply"
    assert autoreply.reply_subject("evil\u202etxt", None) == "Automatic reply"
    v = decide(RULE, mail(message_id="no angle brackets"), OWN, None, NOW)
    assert v.reply is not None and v.reply.in_reply_to is None and v.reply.references == []


@given(st.text(max_size=2000))
def test_a_reply_subject_is_always_a_safe_header(original: str) -> None:
    subject = autoreply.reply_subject(original, None)
    assert domain.check_header_text(subject, "subject") == subject
    assert len(subject) <= 998


def test_the_idempotency_key_follows_the_message() -> None:
    a = autoreply.idempotency_key("mb1", mail(), "INBOX/1/7")
    assert a == autoreply.idempotency_key("mb1", mail(folder="Archive"), "Archive/1/3")
    assert a != autoreply.idempotency_key("mb2", mail(), "INBOX/1/7")
    no_id = mail(message_id=None)
    b = autoreply.idempotency_key("mb1", no_id, "INBOX/1/7")
    assert b != autoreply.idempotency_key("mb1", no_id, "INBOX/1/8")
    assert a.isascii() and len(a) <= 255


def test_prepended_headers_are_checked() -> None:
    raw = autoreply.prepend_headers(b"From: a@b\r\n\r\nhi", autoreply.REPLY_HEADERS)
    assert raw.startswith(b"Auto-Submitted: auto-replied\r\nX-Auto-Response-Suppress: All\r\n")
    with pytest.raises(ValueError):
        autoreply.prepend_headers(b"", [("X-Evil", "a\r\nBcc: x@y")])
    with pytest.raises(ValueError):
        autoreply.prepend_headers(b"", [("X Evil:", "a")])


# --- what sync reports ------------------------------------------------------------------------
def test_sync_reads_the_header_facts() -> None:
    raw = (
        b"Return-Path: <bounce@lists.example.org>\r\nFrom: Alice <alice@example.org>\r\n"
        b"Auto-Submitted: Auto-Generated\r\nPrecedence: BULK\r\n"
        b"List-Unsubscribe: <mailto:u@lists.example.org>\r\n"
        b"X-Auto-Response-Suppress: OOF\r\nSubject: News\r\n\r\n"
    )
    facts = parse_headers(MessageMeta(uid=1), raw).autoreply_facts()
    assert facts == {
        "return_path": "bounce@lists.example.org",
        "auto_submitted": "auto-generated",
        "precedence": "bulk",
        "mailing_list": True,
        "auto_response_suppress": "oof",
    }
    bounce = parse_headers(MessageMeta(uid=2), b"Return-Path: <>\r\nFrom: x@y.z\r\n\r\n")
    assert bounce.return_path == ""
    plain = parse_headers(MessageMeta(uid=3), b"From: x@y.z\r\n\r\n").autoreply_facts()
    assert plain["return_path"] is None and plain["mailing_list"] is False


def test_a_message_received_stored_before_the_facts_existed_still_decodes() -> None:
    old = {"folder": "INBOX", "uidvalidity": 1, "uid": 7, "from": "a@b.c", "subject": "x"}
    event = CATALOGUE.decode("mailroom.sync.MessageReceived.v1", old)
    assert isinstance(event, MessageReceived)
    assert event.return_path is None and event.auto_submitted is None
    assert event.mailing_list is False
    new = MessageReceived.model_validate({**old, "auto_submitted": "auto-replied"})
    env = Envelope.wrap(new, CommandContext("t", "sync"), aggregate_id="m", aggregate_version=1)
    assert env.event() == new
