"""OAuth2 accounts through the API, against a real local authorization server (authlib):
authorization code with PKCE, single-use states bound to their starter, tokens stored sealed
and never returned, access tokens refreshed before expiry and on demand, a revoked grant
refused with reconnect guidance. Registry and audit on a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from sqlalchemy import update

from libs.common.leases import Lease, LeaseRefused, lease_credential
from libs.common.natsserver import NatsServer
from services.registry.tables import oauth_states
from tests.support.oauthflow import (
    PROVIDER,
    authorize,
    browse,
    configure_mailroom,
    connect,
    running_oauth_server,
)
from tests.support.oauthserver import OAuthServer
from tests.support.registry import imap_account, stop
from tests.support.stack import Stack, start_stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.connected]


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    yield from running_oauth_server()


@pytest.fixture
async def stack(
    tmp_path: Path, nats_server: NatsServer, oauth: OAuthServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    configure_mailroom(oauth, monkeypatch)
    monkeypatch.setenv("MAILROOM_REGISTRY_OAUTH_FORCED_REFRESH_MIN_AGE_S", "1")
    s = await start_stack(tmp_path, nats_server, ("registry", "audit"))
    try:
        yield s
    finally:
        await stop(s)


async def oauth_account(stack: Stack, address: str = "olga@corp.example") -> str:
    body = imap_account(address, auth_mode="oauth2", username=address)
    del body["password"]
    r = await stack.call("POST", "/v1/accounts", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def lease(stack: Stack, account_id: str, refresh: bool = False) -> Lease:
    nc = stack.host.runtime.nc
    return await lease_credential(nc, "acme", account_id, "sync", "test", refresh=refresh)


async def trail(stack: Stack, account_id: str, n: int) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        r = await stack.call("GET", "/v1/audit/events", params={"aggregate_id": account_id})
        items = [i["event"] for i in r.json()["items"]]
        return items if len(items) >= n else None

    return await wait_until(check)


def kind(event: dict[str, Any]) -> str:
    return str(event["type"]).split(".")[2]


async def test_pkce_flow_stores_the_tokens_sealed_and_never_returns_them(
    stack: Stack, oauth: OAuthServer
) -> None:
    seen: list[str] = []
    account = await oauth_account(stack)
    r = await stack.call("GET", f"/v1/oauth/{PROVIDER}/start", params={"account": account})
    assert r.status_code == 302 and r.headers["cache-control"] == "no-store"
    to = urlsplit(r.headers["location"])
    params = dict(parse_qsl(to.query))
    assert f"{to.scheme}://{to.netloc}{to.path}" == f"{oauth.url}/authorize"  # discovered
    assert params["response_type"] == "code" and params["client_id"] == "mailroom"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["redirect_uri"] == f"http://mailroom/v1/oauth/{PROVIDER}/callback"
    assert params["login_hint"] == "olga@corp.example" and len(params["state"]) > 40
    assert "httponly" in r.headers["set-cookie"].lower()

    back = await browse(r.headers["location"])
    cb = urlsplit(back.headers["location"])
    done = await stack.client.get(f"{cb.path}?{cb.query}")
    assert done.status_code == 200, done.text
    seen.append(done.text)
    body = done.json()
    assert body["account_id"] == account and body["connected"] is True
    assert body["credential_version"] == 1 and body["provider"] == PROVIDER
    # the code went back with the verifier of the challenge (authlib checked S256 of it)
    [exchange] = oauth.stats.token_forms
    assert exchange["grant_type"] == "authorization_code" and exchange["code_verifier"] == "<set>"
    assert oauth.stats.code_grants == 1

    replay = await stack.client.get(f"{cb.path}?{cb.query}")
    assert replay.status_code == 400 and replay.json()["error"]["code"] == "oauth_state_invalid"

    got = await stack.call("GET", f"/v1/accounts/{account}")
    seen.append(got.text)
    assert got.json()["has_credential"] is True

    granted = await lease(stack, account)
    [issued] = oauth.tokens
    assert granted.auth_mode == "oauth2" and granted.username == "olga@corp.example"
    assert granted.secret.get_secret_value() == issued.access_token  # the access token only
    assert granted.lease_expires_at <= datetime.now(UTC) + timedelta(seconds=300)

    events = await trail(stack, account, 3)
    assert [kind(e) for e in events][:3] == [
        "AccountAdded",
        "CredentialRotated",
        "CredentialAccessed",
    ]
    assert events[1]["data"]["cause"] == "replaced"
    export = await stack.call("GET", "/v1/audit/export")
    seen += [export.text, json.dumps(events)]
    assert issued.refresh_token is not None
    for text in seen:
        assert issued.access_token not in text and issued.refresh_token not in text
        assert "mailroom-client-secret" not in text


async def test_bad_or_replayed_states_are_400_with_a_code(stack: Stack, oauth: OAuthServer) -> None:
    account = await oauth_account(stack)

    async def code_of(url: str, **kw: Any) -> tuple[int, str]:
        r = await stack.client.get(url, **kw)
        return r.status_code, r.json()["error"]["code"]

    cb = f"/v1/oauth/{PROVIDER}/callback"
    assert await code_of(f"{cb}?code=x") == (400, "oauth_state_missing")
    assert await code_of(f"{cb}?code=x&state=nonsense") == (400, "oauth_state_invalid")
    forged = "YWNtZQ." + "A" * 43  # tenant acme, a state never issued
    assert await code_of(f"{cb}?code=x&state={forged}") == (400, "oauth_state_invalid")

    # another browser (no cookie, no bearer) cannot finish it -- and it is used up
    async def stranger(url: str, **kw: Any) -> tuple[int, str]:
        async with httpx.AsyncClient(transport=stack.client._transport, base_url="http://x") as c:
            r = await c.get(url, **kw)
        return r.status_code, r.json()["error"]["code"] if r.status_code != 200 else ""

    callback, _ = await authorize(stack, account)
    assert await stranger(callback) == (400, "oauth_state_unbound")
    assert await code_of(callback) == (400, "oauth_state_invalid")
    # a bearer token must be the starter's (even with the starter's cookie)
    callback, _ = await authorize(stack, account)
    other = stack.auth(subject="mallory", role="admin")
    assert await code_of(callback, headers=other) == (400, "oauth_state_mismatch")
    callback, _ = await authorize(stack, account)
    assert await stranger(callback, headers=stack.auth()) == (200, "")

    # expired
    callback, _ = await authorize(stack, account)
    async with stack.host.service("registry").db.transaction() as tx:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await tx.conn.execute(update(oauth_states).values(expires_at=past))
    assert await code_of(callback) == (400, "oauth_state_expired")

    # the user said no at the provider; a code the provider does not know
    callback, state = await authorize(stack, account)
    assert await code_of(f"{cb}?state={state}&error=access_denied") == (400, "oauth_denied")
    callback, state = await authorize(stack, account)
    assert await code_of(f"{cb}?state={state}&code=forged") == (400, "oauth_code_rejected")


async def test_start_needs_an_oauth_account_a_known_provider_and_configure(
    stack: Stack,
) -> None:
    account = await oauth_account(stack)
    start = f"/v1/oauth/{PROVIDER}/start"
    r = await stack.call("GET", "/v1/oauth/nope/start", params={"account": account})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_oauth_provider")
    pw = await stack.call("POST", "/v1/accounts", json=imap_account("pw@corp.example"))
    r = await stack.call("GET", start, params={"account": pw.json()["id"]})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "not_oauth_account")
    r = await stack.call("GET", start, params={"account": account}, subject="e1", role="employee")
    assert r.status_code == 403
    r = await stack.call("GET", start, params={"account": account}, tenant="globex")
    assert r.status_code == 404  # no provider (and no such account) for another tenant
    r = await stack.call("GET", start, params={"account": "x" * 65})
    assert r.status_code == 422


async def test_access_token_is_refreshed_before_expiry_and_on_demand(
    stack: Stack, oauth: OAuthServer
) -> None:
    oauth.expires_in = 4  # refreshed once less than half its lifetime is left
    oauth.rotate_refresh = True  # and each refresh rotates the refresh token
    account = await oauth_account(stack)
    await connect(stack, account)
    first = await lease(stack, account)
    assert oauth.stats.refresh_grants == 0
    assert first.lease_expires_at <= datetime.now(UTC) + timedelta(seconds=4)

    await asyncio.sleep(2.2)
    second = await lease(stack, account)
    assert oauth.stats.refresh_grants == 1
    assert second.secret.get_secret_value() != first.secret.get_secret_value()
    assert second.credential_version == 2

    again = await lease(stack, account, refresh=True)  # just refreshed: not again
    assert again.secret.get_secret_value() == second.secret.get_secret_value()
    await asyncio.sleep(1.1)
    forced = await lease(stack, account, refresh=True)  # the rotated refresh token works
    assert oauth.stats.refresh_grants == 2 and oauth.stats.refused == []
    assert forced.secret.get_secret_value() != second.secret.get_secret_value()

    events = await trail(stack, account, 8)
    rotated = [e["data"]["cause"] for e in events if kind(e) == "CredentialRotated"]
    assert rotated == ["replaced", "oauth_refresh", "oauth_refresh"]
    text = json.dumps(events)
    for t in oauth.tokens:
        assert t.access_token not in text and (t.refresh_token or "") not in text


async def test_revoked_grant_refuses_the_lease_with_reconnect_guidance(
    stack: Stack, oauth: OAuthServer
) -> None:
    account = await oauth_account(stack)
    await connect(stack, account)
    await lease(stack, account)
    oauth.revoke_user("olga@corp.example")
    await asyncio.sleep(1.1)
    with pytest.raises(LeaseRefused) as refused:
        await lease(stack, account, refresh=True)
    assert refused.value.code == "oauth_reconnect_required"
    assert "reconnect" in refused.value.message
    assert f"/v1/oauth/{PROVIDER}/start?account={account}" in refused.value.message
    assert oauth.stats.refused == ["invalid_grant"]

    # reconnecting stores a new grant; leases work again
    done = await connect(stack, account)
    assert done["credential_version"] == 2
    assert (await lease(stack, account)).secret.get_secret_value() == oauth.tokens[-1].access_token
