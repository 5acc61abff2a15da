"""The sender's pure decisions: identity, the rolling daily limit, failure classes, retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.common.events import AccountSettings, Server
from services.sender import domain
from services.sender.smtp import classify

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def mailbox(protocol: str = "imap", **settings: object) -> domain.Mailbox:
    return domain.Mailbox(
        "acme", "mb1", "olga@corp.example", protocol, "emp1", "active",
        AccountSettings.model_validate(settings),
    )  # fmt: skip


def test_identity_prefers_send_as_then_display_name_then_owner() -> None:
    p = domain.Person
    assert domain.identity(
        mailbox(send_as_name="Sales", send_as_address="sales@corp.example"), "Olga", None
    ).author == p("Sales", "sales@corp.example")
    assert domain.identity(mailbox(display_name="Olga O."), "Olga", None).author == p(
        "Olga O.", "olga@corp.example"
    )
    assert domain.identity(mailbox(), "Olga Owner", None).author == p(
        "Olga Owner", "olga@corp.example"
    )
    assert domain.identity(mailbox(), None, None).author == p("", "olga@corp.example")
    bob = p("Bob", "bob@corp.example")
    assert domain.identity(mailbox(), None, bob).sender == bob
    # sending as oneself is not "on behalf"
    assert domain.identity(mailbox(), None, p("Olga", "OLGA@corp.example")).sender is None


def test_rolling_limit_frees_when_the_oldest_counted_send_turns_24h_old() -> None:
    times = [NOW - timedelta(hours=h) for h in (20, 10, 1)]

    def verdict(limit: int | None) -> domain.LimitVerdict:
        rank = domain.blocking_rank(limit, len(times))
        return domain.check_limit(limit, len(times), None if rank is None else times[rank], NOW)

    assert verdict(None).allowed and verdict(4).allowed
    v = verdict(3)
    assert not v.allowed and v.used == 3
    assert v.frees_at == times[0] + timedelta(hours=24)
    assert v.retry_after_s(NOW) == 4 * 3600
    # lowered below what was already sent: wait until enough have left the window
    assert verdict(2).frees_at == times[1] + timedelta(hours=24)
    v = domain.check_limit(0, 0, None, NOW)
    assert not v.allowed and v.retry_after_s(NOW) == 24 * 3600


@pytest.mark.parametrize(
    ("code", "stage", "reason", "permanent"),
    [
        (421, "connect", "server_down", False),
        (451, "data", "server_down", False),
        (450, "rcpt", "server_down", False),
        (454, "auth", "server_down", False),
        (535, "auth", "auth_failed", True),
        (530, "mail", "auth_failed", True),
        (550, "rcpt", "recipient_refused", True),
        (552, "data", "other", True),
        (554, "mail", "other", True),
    ],
)
def test_smtp_replies_are_classified(code: int, stage: str, reason: str, permanent: bool) -> None:
    f = domain.smtp_reply_failure(code, "text", stage)
    assert (f.reason_class, f.permanent) == (reason, permanent)


def test_network_errors_are_transient() -> None:
    for exc in (ConnectionRefusedError(111, "refused"), TimeoutError(), OSError("reset")):
        f = classify(exc, "connect")
        assert (f.reason_class, f.permanent) == ("server_down", False)


def test_retries_stop_at_permanent_failures_and_max_attempts() -> None:
    transient = domain.DeliveryFailed("server_down", "x", False)
    assert domain.after_failure(transient, 1, 3, 30, NOW).retry_at == NOW + timedelta(seconds=30)
    assert domain.after_failure(transient, 3, 3, 30, NOW).final
    assert domain.after_failure(domain.DeliveryFailed("other", "x", True), 1, 3, 30, NOW).final


def test_sent_copy_only_for_imap_accounts_that_do_not_file_it_themselves() -> None:
    imap = Server(protocol="imap", host="h", port=993, security="ssl")
    assert domain.wants_sent_copy(mailbox(incoming=imap), None, True)
    assert not domain.wants_sent_copy(mailbox(incoming=imap), False, True)
    assert domain.wants_sent_copy(mailbox(incoming=imap), True, False)
    assert not domain.wants_sent_copy(mailbox("gmail", incoming=imap), True, True)
    assert not domain.wants_sent_copy(mailbox(), True, True)


def test_public_status() -> None:
    assert domain.public_status("queued", 0) == "queued"
    assert domain.public_status("queued", 2) == "retrying"
    assert domain.public_status("delivering", 1) == "sending"
