"""Sync, pure: the health state machine, the back-off policy and what each observation emits.

States: ``syncing`` (added or reactivated, first sync not yet done), ``online``, ``offline``
(network, timeout or protocol failures), ``auth_failed``, ``tls_error`` and ``disabled``.

Back-off: network-like failures retry exponentially (base * 2^(n-1), capped) with jitter;
authentication and TLS failures are configuration problems a retry cannot fix, so they retry
after a long delay that doubles up to hours — repeated bad logins lock accounts at many
providers, and a tight loop would hammer the server. A rotated credential retries at once.

Events: ``AccountStatusChanged`` on every change of state; ``SyncFailed`` on the first failure
of an episode, when the reason class changes and then on attempts 2, 4, 8, ... (a reminder
on a log scale, so a long outage cannot flood the audit trail); ``SyncRecovered`` on the first
success after a failure.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import get_args

from libs.common.events.base import Event
from libs.common.events.sync import (
    AccountStatusChanged,
    FailureClass,
    SyncFailed,
    SyncRecovered,
    SyncState,
)

STATES: tuple[SyncState, ...] = get_args(SyncState)
FAILURE_CLASSES: tuple[FailureClass, ...] = get_args(FailureClass)
FAILED_STATE: dict[FailureClass, SyncState] = {
    "network": "offline",
    "timeout": "offline",
    "protocol": "offline",
    "unknown": "offline",
    "auth": "auth_failed",
    "tls": "tls_error",
}


class SyncError(Exception):
    """A failed sync attempt, classified. ``detail`` never holds a secret."""

    def __init__(self, reason_class: FailureClass, detail: str) -> None:
        super().__init__(f"{reason_class}: {detail}")
        self.reason_class: FailureClass = reason_class
        self.detail = detail[:500]


@dataclass(frozen=True)
class Health:
    """An account's health as stored (one row of ``sync_status``)."""

    state: SyncState
    since: datetime
    failures: int = 0
    failure_class: FailureClass | None = None
    last_error: str | None = None
    down_since: datetime | None = None
    last_success_at: datetime | None = None


@dataclass(frozen=True)
class BackoffPolicy:
    base_s: float = 5.0
    max_s: float = 900.0
    auth_s: float = 1800.0
    auth_max_s: float = 6 * 3600.0
    tls_s: float = 600.0
    tls_max_s: float = 6 * 3600.0
    jitter: float = 0.5
    """The delay is drawn uniformly from [(1 - jitter) * d, d]."""

    def delay(self, reason: FailureClass, attempt: int, rng: random.Random | None = None) -> float:
        first, cap = {
            "auth": (self.auth_s, self.auth_max_s),
            "tls": (self.tls_s, self.tls_max_s),
        }.get(reason, (self.base_s, self.max_s))
        d = min(cap, first * 2 ** max(0, min(attempt - 1, 30)))
        r: float = (rng or random).random()
        return float(d * (1.0 - self.jitter * r))


@dataclass(frozen=True)
class Outcome:
    health: Health
    events: list[Event] = field(default_factory=list)
    retry_in_s: float | None = None

    @property
    def changed(self) -> bool:
        return any(isinstance(e, AccountStatusChanged) for e in self.events)


def _change(h: Health, state: SyncState, now: datetime, detail: str = "") -> list[Event]:
    if h.state == state:
        return []
    return [AccountStatusChanged(status=state, previous=h.state, detail=detail)]


def added(now: datetime) -> Outcome:
    """A newly watched account."""
    h = Health(state="syncing", since=now)
    return Outcome(h, [AccountStatusChanged(status="syncing", previous=None)])


def reactivated(h: Health, now: datetime) -> Outcome:
    if h.state != "disabled":
        return Outcome(h)
    new = Health(state="syncing", since=now, last_success_at=h.last_success_at)
    return Outcome(new, _change(h, "syncing", now, "account reactivated"))


def disabled(h: Health, now: datetime, reason: str = "") -> Outcome:
    if h.state == "disabled":
        return Outcome(h)
    new = Health(state="disabled", since=now, last_success_at=h.last_success_at)
    return Outcome(new, _change(h, "disabled", now, reason or "account disabled"))


def succeeded(h: Health, now: datetime) -> Outcome:
    """A sync attempt completed (all folders checked)."""
    if h.state == "disabled":
        return Outcome(h)
    events = _change(h, "online", now)
    if h.down_since is not None:
        events.append(SyncRecovered(down_since=h.down_since.isoformat()))
    new = Health(
        state="online",
        since=now if h.state != "online" else h.since,
        last_success_at=now,
    )
    return Outcome(new, events)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def failed(
    h: Health,
    reason: FailureClass,
    detail: str,
    now: datetime,
    policy: BackoffPolicy,
    rng: random.Random | None = None,
) -> Outcome:
    """A sync attempt failed with ``reason``; decide the state, the events and the retry."""
    if h.state == "disabled":
        return Outcome(h)
    attempt = h.failures + 1
    state = FAILED_STATE[reason]
    retry = policy.delay(reason, attempt, rng)
    events = _change(h, state, now, f"{reason}: {detail}"[:300])
    if attempt == 1 or reason != h.failure_class or _power_of_two(attempt):
        events.append(
            SyncFailed(reason_class=reason, detail=detail, attempt=attempt, retry_in_s=retry)
        )
    new = Health(
        state=state,
        since=now if state != h.state else h.since,
        failures=attempt,
        failure_class=reason,
        last_error=detail,
        down_since=h.down_since or now,
        last_success_at=h.last_success_at,
    )
    return Outcome(new, events, retry)


def credential_rotated(h: Health) -> Health:
    """A new credential: the next attempt counts as a first attempt again (its failure is
    reported, its back-off starts over); the outage itself goes on until a success."""
    return replace(h, failures=0) if h.state == "auth_failed" else h


# --- folders --------------------------------------------------------------------------------
def vanished(known: Iterable[int], on_server: Iterable[int]) -> list[int]:
    """Known UIDs the server no longer has (the hub never deletes IMAP mail)."""
    return sorted(set(known) - set(on_server))


def uid_set(uids: Iterable[int]) -> str:
    """A compact IMAP sequence set: 1,2,3,7 -> ``1:3,7``."""
    out: list[str] = []
    run: list[int] = []
    for u in sorted(set(uids)):
        if run and u == run[-1] + 1:
            run.append(u)
            continue
        if run:
            out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [u]
    if run:
        out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def silent_too_long(
    last_mail_at: datetime | None,
    watching_since: datetime,
    now: datetime,
    expected_s: float | None,
    already_reported: bool,
) -> bool:
    """True once per silence: no mail for longer than expected, not yet reported."""
    if expected_s is None or already_reported:
        return False
    return (now - (last_mail_at or watching_since)).total_seconds() > expected_s


def interval(account_interval_s: int | None, default_s: float, min_s: float) -> float:
    return max(min_s, float(account_interval_s) if account_interval_s else default_s)
