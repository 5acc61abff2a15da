"""The sync domain, pure: state machine, back-off, what each observation emits."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from libs.common.events.sync import AccountStatusChanged, SyncFailed, SyncRecovered
from services.sync import domain
from services.sync.checks import imap_date
from services.sync.imap import imap_utf7
from services.sync.mailmeta import MessageMeta, parse_headers, parse_internaldate

T0 = datetime(2024, 1, 1, tzinfo=UTC)
POLICY = domain.BackoffPolicy(base_s=5, max_s=900, auth_s=1800, auth_max_s=21600)


def names(outcome: domain.Outcome) -> list[str]:
    return [type(e).__name__ for e in outcome.events]


def test_added_then_first_success_goes_online_without_recovery() -> None:
    o = domain.added(T0)
    assert o.health.state == "syncing" and names(o) == ["AccountStatusChanged"]
    o2 = domain.succeeded(o.health, T0 + timedelta(seconds=1))
    assert o2.health.state == "online" and names(o2) == ["AccountStatusChanged"]
    again = domain.succeeded(o2.health, T0 + timedelta(seconds=61))
    assert again.events == [] and again.health.since == o2.health.since


def test_network_failures_back_off_exponentially_with_jitter_and_recover() -> None:
    h = domain.succeeded(domain.added(T0).health, T0).health
    rng = random.Random(7)
    delays, emitted = [], []
    for i in range(12):
        o = domain.failed(h, "network", "refused", T0 + timedelta(seconds=i), POLICY, rng)
        delays.append(o.retry_in_s)
        emitted.append([e.attempt for e in o.events if isinstance(e, SyncFailed)])
        h = o.health
    assert h.state == "offline" and h.failures == 12 and h.down_since == T0
    assert all(d is not None and d <= 900 for d in delays)
    assert 2.5 <= delays[0] <= 5 and 5 <= delays[1] <= 10 and delays[-1] >= 450
    assert [a for x in emitted for a in x] == [1, 2, 4, 8]  # log-scale reminders only
    back = domain.succeeded(h, T0 + timedelta(hours=1))
    assert names(back) == ["AccountStatusChanged", "SyncRecovered"]
    rec = back.events[1]
    assert isinstance(rec, SyncRecovered) and rec.down_since == T0.isoformat()
    assert back.health.failures == 0 and back.health.last_error is None


def test_auth_failures_back_off_long_and_a_new_credential_starts_over() -> None:
    h = domain.succeeded(domain.added(T0).health, T0).health
    o = domain.failed(h, "auth", "bad password", T0, POLICY, random.Random(1))
    assert o.health.state == "auth_failed"
    assert o.retry_in_s is not None and o.retry_in_s >= 900
    o2 = domain.failed(o.health, "auth", "bad password", T0, POLICY, random.Random(1))
    assert o2.retry_in_s is not None and o2.retry_in_s >= 1800
    fresh = domain.credential_rotated(o2.health)
    o3 = domain.failed(fresh, "auth", "still bad", T0, POLICY)
    assert [e.attempt for e in o3.events if isinstance(e, SyncFailed)] == [1]
    assert names(domain.succeeded(fresh, T0)) == ["AccountStatusChanged", "SyncRecovered"]


def test_a_changing_reason_is_reported_and_changes_state() -> None:
    h = domain.failed(domain.added(T0).health, "network", "x", T0, POLICY).health
    h = domain.failed(h, "network", "x", T0, POLICY).health
    o = domain.failed(h, "tls", "certificate verify failed", T0, POLICY)
    assert o.health.state == "tls_error"
    assert names(o) == ["AccountStatusChanged", "SyncFailed"]
    change = o.events[0]
    assert isinstance(change, AccountStatusChanged) and change.previous == "offline"


def test_disabled_ignores_observations_until_reactivated() -> None:
    h = domain.disabled(domain.added(T0).health, T0, "left the company").health
    assert domain.succeeded(h, T0).events == []
    assert domain.failed(h, "network", "x", T0, POLICY).events == []
    assert domain.disabled(h, T0).events == []
    o = domain.reactivated(h, T0)
    assert o.health.state == "syncing" and names(o) == ["AccountStatusChanged"]


def test_silence_is_reported_once() -> None:
    now = T0 + timedelta(hours=5)
    assert domain.silent_too_long(None, T0, now, 3600, False)
    assert not domain.silent_too_long(None, T0, now, 3600, True)
    assert not domain.silent_too_long(now, T0, now, 3600, False)
    assert not domain.silent_too_long(None, T0, now, None, False)


def test_helpers() -> None:
    assert domain.uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"
    assert domain.vanished([1, 2, 3], [1, 3, 4]) == [2]
    assert domain.interval(None, 60, 5) == 60 and domain.interval(1, 60, 5) == 5
    assert imap_utf7("Gesendete Objekte") == '"Gesendete Objekte"'
    assert imap_utf7("Entwürfe") == '"Entw&APw-rfe"'
    assert imap_utf7('a&"b') == '"a&-\\"b"'
    assert imap_date(datetime(2024, 3, 5, 23, 0, tzinfo=UTC)) == "5-Mar-2024"
    assert parse_internaldate(" 7-Jul-2024 10:00:00 +0200") == datetime(
        2024, 7, 7, 8, 0, tzinfo=UTC
    )


def test_headers_are_parsed_defensively() -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>\r\nTo: a@x.test,\r\n b@y.test\r\n"
        b"Subject: =?utf-8?b?w5xiZXI=?=\r\nDate: not a date\r\nMessage-ID: <1@x>\r\n\r\n"
    )
    m = parse_headers(MessageMeta(uid=1), raw)
    assert m.from_ == "Jürgen <j@example.test>" and m.subject == "Über"
    assert m.to == ["a@x.test", "b@y.test"] and m.date == "not a date"
    assert m.message_id == "<1@x>"
    broken = parse_headers(MessageMeta(uid=2), b"From: <<<\r\nSubject: \xff\xfe\r\n\r\n")
    assert broken.uid == 2
