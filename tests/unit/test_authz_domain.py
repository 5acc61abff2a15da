"""Authz commands (decide), listings (views), scopes and the client, without any server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.common.auth import Principal
from libs.common.authz_client import AuthzClient, Decision
from libs.common.errors import Conflict, Forbidden, MailroomError, NotFound
from libs.common.events import AccessGranted, AccessRevoked, CommandContext, Envelope
from services.authz import domain, views
from services.authz.rules import scope_level
from tests.unit.test_authz_cases import NOW, STATE

assert NOW is not None
ADMIN = Principal("acme", "root", "admin")


def emp(subject: str, tenant: str = "acme") -> Principal:
    return Principal(tenant, subject, "employee")


def grant(mb: str, who: str, level: str = "read", **kw: Any) -> domain.GrantAccess:
    return domain.GrantAccess(mb, "employee", who, level, **kw)  # type: ignore[arg-type]


def test_owner_and_configure_collaborators_grant_with_the_next_revision() -> None:
    for actor in (emp("alice"), emp("ivan"), ADMIN):
        out = domain.decide(grant("mb-alice", "newbie", "configure"), STATE, actor, NOW)
        assert out.refused is None and len(out.events) == 1
        ev = out.events[0]
        assert isinstance(ev, AccessGranted) and ev.revision == STATE.revision + 1


def test_without_configure_a_grant_change_is_refused() -> None:
    for actor in (emp("bob"), emp("gina"), emp("stranger"), emp("dave")):
        out = domain.decide(grant("mb-alice", "newbie"), STATE, actor, NOW)
        assert out.events == [] and out.refused and "configure" in out.refused
    out = domain.decide(
        domain.RevokeAccess("mb-alice", "employee", "carol"), STATE, emp("bob"), NOW
    )
    assert out.refused is not None
    svc = Principal("acme", "bot", "service", scopes=frozenset({"mailboxes:send"}))
    assert domain.decide(grant("mb-alice", "x"), STATE, svc, NOW).refused is not None


def test_granting_the_same_again_changes_nothing() -> None:
    existing = STATE.grants["mb-alice"][("employee", "bob")]
    out = domain.decide(grant("mb-alice", "bob", "write"), STATE, ADMIN, NOW)
    assert out.events == [] and out.revision == existing.revision
    changed = domain.decide(grant("mb-alice", "bob", "send"), STATE, ADMIN, NOW)
    assert len(changed.events) == 1
    # An expired grant given again is a change: it works again.
    later = NOW + timedelta(hours=1)
    renewed = domain.decide(grant("mb-alice", "jack", "send", expires_at=later), STATE, ADMIN, NOW)
    assert len(renewed.events) == 1


def test_invalid_grants() -> None:
    with pytest.raises(MailroomError) as err:
        domain.decide(grant("mb-alice", "bob", "write", on_behalf=True), STATE, ADMIN, NOW)
    assert err.value.code == "invalid_grant"
    with pytest.raises(MailroomError) as err:
        domain.decide(grant("mb-alice", "bob", expires_at=NOW), STATE, ADMIN, NOW)
    assert err.value.code == "invalid_expiry"
    with pytest.raises(Conflict):
        domain.decide(grant("mb-alice", "dave"), STATE, ADMIN, NOW)
    for mb in ("mb-nope", "mb-deleted"):
        with pytest.raises(NotFound):
            domain.decide(grant(mb, "bob"), STATE, ADMIN, NOW)
    with pytest.raises(NotFound):
        domain.decide(grant("mb-alice", "bob"), STATE, Principal("globex", "root", "admin"), NOW)


def test_revoke_missing_is_unchanged_and_leaving_is_always_allowed() -> None:
    out = domain.decide(domain.RevokeAccess("mb-alice", "employee", "nobody"), STATE, ADMIN, NOW)
    assert out.events == [] and out.revision == STATE.revision
    out = domain.decide(domain.RevokeAccess("mb-alice", "employee", "bob"), STATE, emp("bob"), NOW)
    ev = out.events[0]
    assert isinstance(ev, AccessRevoked) and ev.reason == "left"


def test_views_list_who_has_what() -> None:
    entries = views.mailbox_access(STATE, "mb-shared", NOW)
    got = {(e.grantee_kind, e.grantee_id, e.level, e.source) for e in entries}
    assert ("role", "admin", "configure", "admin") in got
    assert ("department", "sales", "read", "department") in got
    sales = next(e for e in entries if e.grantee_id == "sales")
    assert sales.members == ["alice", "bob", "erin"]
    alice = {a.mailbox_id: a for a in views.employee_access(STATE, "alice", NOW)}
    assert alice["mb-alice"].source == "owner" and "mb-deleted" not in alice
    assert alice["mb-shared"].source == "department" and alice["mb-disabled"].disabled
    assert views.employee_access(STATE, "dave", NOW) == []
    jack = views.mailbox_access(STATE, "mb-alice", NOW)
    assert "jack" not in {e.grantee_id for e in jack}  # expired exactly now


def test_scopes() -> None:
    assert scope_level({"events:read"}, "m") == ("read", "events:read")
    assert scope_level({"events:read", "mailboxes:send"}, "m") == ("send", "mailboxes:send")
    assert scope_level({"mailbox:m:configure", "mailbox:x:send"}, "m") == (
        "configure",
        "mailbox:m:configure",
    )
    assert scope_level({"mailbox:m:owner", "other"}, "m") is None


class FakeNats:
    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.sent: list[dict[str, Any]] = []

    async def request(self, subject: str, data: bytes, timeout: float) -> Any:
        self.sent.append(json.loads(data))
        if isinstance(self.reply, Exception):
            raise self.reply
        return type("Msg", (), {"data": json.dumps(self.reply).encode()})()


async def test_client_checks_requires_and_tracks_revisions() -> None:
    ok = Decision(True, "grant", "g", "send", "grant", "employee:bob", True, 12)
    nc = FakeNats({**ok.to_json(), "tenant_id": "acme"})
    client = AuthzClient(nc)
    p = Principal("acme", "bob", "employee", scopes=frozenset({"b", "a"}))
    assert await client.check(p, "mb", "send", at_least_as_fresh=3) == ok
    assert nc.sent[0] == {
        "principal": {
            "tenant_id": "acme",
            "subject": "bob",
            "role": "employee",
            "scopes": ["a", "b"],
        },
        "mailbox_id": "mb",
        "action": "send",
        "at_least_as_fresh": 3,
    }
    assert client.latest_revision("acme") == 12 and client.latest_revision("globex") is None
    env = Envelope.wrap(
        AccessRevoked(grantee_kind="employee", grantee_id="bob", revision=40),
        CommandContext("acme", "admin:x"),
        aggregate_id="mb",
        aggregate_version=1,
    )
    client.observe_envelope(env)
    client.observe("acme", 5)
    assert client.latest_revision("acme") == 40

    nc.reply = {**Decision(False, "stale", "behind").to_json()}
    with pytest.raises(Forbidden) as err:
        await client.require(p, "mb", "read")
    assert err.value.code == "forbidden" and err.value.details["reason"] == "stale"
    for reply in (TimeoutError(), ["not", "a", "decision"]):
        nc.reply = reply
        d = await client.check(p, "mb", "read")
        assert (d.allowed, d.reason) == (False, "unavailable")


def test_now_is_the_table_instant() -> None:
    assert datetime(2025, 6, 1, 12, tzinfo=UTC) == NOW
