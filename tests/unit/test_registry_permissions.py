"""The authz service's decisions as registry Permissions (AuthzClient over a fake NATS)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from libs.common.auth import Principal
from libs.common.authz_client import AuthzClient
from libs.common.errors import Forbidden, NotFound
from services.registry.permissions import AuthzPermissions, Permissions

ADMIN = Principal("acme", "admin", "admin")
EVE = Principal("acme", "eve", "employee")


@dataclass
class Msg:
    data: bytes


class FakeNats:
    def __init__(self, reply: dict[str, Any] | None) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []

    async def request(self, subject: str, body: bytes, timeout: float) -> Msg:
        self.requests.append(json.loads(body))
        if self.reply is None:
            raise TimeoutError
        return Msg(json.dumps(self.reply).encode())


def perms(reply: dict[str, Any] | None) -> tuple[Permissions, FakeNats]:
    nc = FakeNats(reply)
    return AuthzPermissions(AuthzClient(nc)), nc


async def test_allowed_and_freshness_is_passed_on() -> None:
    p, nc = perms({"allowed": True, "reason": "grant", "revision": 7})
    await p.require(EVE, "m1", "configure", at_least_as_fresh=5)
    assert nc.requests[0]["at_least_as_fresh"] == 5
    assert nc.requests[0]["action"] == "configure" and nc.requests[0]["mailbox_id"] == "m1"
    await p.require(EVE, "m1", "read")  # then the newest revision seen is required
    assert nc.requests[1]["at_least_as_fresh"] == 7


@pytest.mark.parametrize(
    ("reason", "exc"),
    [
        ("no_access", Forbidden),
        ("insufficient_level", Forbidden),
        ("stale", Forbidden),
        ("unknown_mailbox", NotFound),
        ("other_tenant", NotFound),
        ("mailbox_deleted", NotFound),
    ],
)
async def test_denials_map_to_403_or_404(reason: str, exc: type[Exception]) -> None:
    p, _ = perms({"allowed": False, "reason": reason, "revision": 1})
    with pytest.raises(exc):
        await p.require(EVE, "m1", "configure")


async def test_no_answer_is_a_denial_and_adding_an_account_needs_an_admin() -> None:
    p, nc = perms(None)
    with pytest.raises(Forbidden):
        await p.require(EVE, "m1", "configure")
    await p.require(ADMIN, "m1", "configure")  # admins cannot be excluded: decided locally
    await p.require(ADMIN, None, "configure")
    with pytest.raises(Forbidden):
        await p.require(EVE, None, "configure")
    assert len(nc.requests) == 1  # admin and tenant-level checks do not ask authz
