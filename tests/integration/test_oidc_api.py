"""OIDC tokens through the HTTP API of running services (authz + audit on a real nats-server).

The identity provider is the one thing that cannot run here: ``tests.support.jwks`` plays it
with a real HTTP server on loopback serving a JWKS document of real RSA/EC keys, and signs the
tokens with them. Mailroom's settings point at it as they would at a production provider.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from libs.common.natsserver import NatsServer
from tests.integration.test_authz_support import World
from tests.support.jwks import Clock, IdentityProvider, idp  # noqa: F401 -- fixture
from tests.support.stack import Stack, start_stack

pytestmark = pytest.mark.connected

ROLES = {"mailroom-admins": "admin", "staff": "employee", "robots": "service"}


@pytest.fixture
async def oidc(
    tmp_path: Path,
    nats_server: NatsServer,
    idp: IdentityProvider,  # noqa: F811
) -> AsyncIterator[tuple[Stack, IdentityProvider, Clock]]:
    settings = idp.settings(
        oidc_tenant="acme",
        oidc_subject_claim="employee_id",
        oidc_role_claim="groups",
        oidc_role_map=ROLES,
        oidc_jwks_ttl_s=300,
        oidc_jwks_refresh_min_s=30,
        oidc_jwks_max_stale_s=3600,
    )
    stack = await start_stack(tmp_path, nats_server, ("authz", "audit"), **settings)
    clock = Clock()
    jwks = stack.host.runtime.verifier.jwks
    assert jwks is not None
    jwks.clock = clock
    try:
        yield stack, idp, clock
    finally:
        await stack.client.aclose()
        await stack.host.stop()


async def get(stack: Stack, token: str, path: str = "/v1/audit/verify") -> Any:
    return await stack.client.get(path, headers={"Authorization": f"Bearer {token}"})


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def status(r: Any) -> tuple[int, str | None]:
    code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
    return r.status_code, code


async def test_provider_tokens_map_to_tenant_and_principal(
    oidc: tuple[Stack, IdentityProvider, Clock],
) -> None:
    stack, provider, _ = oidc
    rsa_kid, ec_kid = provider.add_key("rsa"), provider.add_key("ec")
    world = World(stack)
    owner = await world.employee()
    mb = await world.mailbox(owner)

    admin = provider.token(rsa_kid, employee_id="it-1", groups=["staff", "mailroom-admins"])
    assert status(await get(stack, admin)) == (200, None)

    employee = provider.token(ec_kid, employee_id=owner, groups=["staff"])
    r = await get(stack, employee, f"/v1/employees/{owner}/access")
    assert r.status_code == 200 and r.json()["mailboxes"][0]["mailbox_id"] == mb
    assert status(await get(stack, employee)) == (403, "admin_required")
    check = {"mailbox_id": mb, "action": "configure"}
    r = await stack.client.post(
        "/v1/check", json=check, headers={"Authorization": f"Bearer {employee}"}
    )
    assert (r.json()["allowed"], r.json()["reason"]) == (True, "owner")

    robot = provider.token(
        rsa_kid, employee_id="exporter", groups="robots", scp=[f"mailbox:{mb}:read"]
    )
    r = await stack.client.post(
        "/v1/check",
        json={"mailbox_id": mb, "action": "read"},
        headers={"Authorization": f"Bearer {robot}"},
    )
    assert (r.json()["allowed"], r.json()["reason"]) == (True, "service_scope")

    # The provider serves one tenant: tokens without the claim belong to it.
    plain = provider.token(rsa_kid, employee_id="it-1", groups=["mailroom-admins"])
    assert status(await get(stack, plain)) == (200, None)
    # Local tokens keep working next to the provider's.
    assert (await stack.call("GET", "/v1/audit/verify")).status_code == 200


async def test_bad_provider_tokens_get_clear_codes(
    oidc: tuple[Stack, IdentityProvider, Clock],
) -> None:
    stack, provider, _ = oidc
    kid, ec_kid = provider.add_key("rsa"), provider.add_key("ec")
    rogue = provider.add_key("rsa", publish=False)  # a key the provider never published
    ok: dict[str, Any] = {"employee_id": "it-1", "groups": ["mailroom-admins"]}
    pem = (
        provider.private[kid][1]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    other = IdentityProvider()
    other.port = provider.port + 1  # only its issuer name matters: never started
    other_kid = other.add_key("rsa")

    def hs256_with_public_key() -> str:  # algorithm confusion: HMAC keyed with the public key
        claims = jwt.decode(provider.token(kid, **ok), options={"verify_signature": False})
        header = {"alg": "HS256", "typ": "JWT", "kid": kid}
        signing_input = b".".join(_b64(json.dumps(x).encode()) for x in (header, claims))
        return (signing_input + b"." + _b64(hmac.digest(pem, signing_input, "sha256"))).decode()

    def unsigned() -> str:
        claims = jwt.decode(provider.token(kid, **ok), options={"verify_signature": False})
        return jwt.encode(claims, "", algorithm="none", headers={"kid": kid})

    def resigned() -> str:  # right kid, wrong key
        token = provider.token(rogue, **ok)
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        return jwt.encode(
            claims, provider.private[rogue][1], algorithm="RS256", headers={**header, "kid": kid}
        )

    tok = provider.token
    cases: list[tuple[str, Callable[[], str], int, str]] = [
        ("expired", lambda: tok(kid, ttl_s=-120, **ok), 401, "token_expired"),
        ("not yet valid", lambda: tok(kid, nbf=2**31, **ok), 401, "token_not_yet_valid"),
        ("wrong issuer", lambda: other.token(other_kid, **ok), 401, "untrusted_issuer"),
        ("wrong audience", lambda: tok(kid, aud="another-app", **ok), 401, "wrong_audience"),
        ("no audience", lambda: tok(kid, drop=("aud",), **ok), 401, "invalid_token"),
        ("no expiry", lambda: tok(kid, drop=("exp",), **ok), 401, "invalid_token"),
        ("unknown kid", lambda: tok(rogue, **ok), 401, "unknown_key"),
        ("bad signature", resigned, 401, "bad_signature"),
        ("alg none", unsigned, 401, "unsupported_algorithm"),
        ("hs256 confusion", hs256_with_public_key, 401, "unsupported_algorithm"),
        ("other key type", lambda: tok(ec_kid, headers={"kid": kid}, **ok), 401, "invalid_token"),
        ("wrong tenant", lambda: tok(kid, mailroom_tenant="globex", **ok), 403, "wrong_tenant"),
        ("unmapped role", lambda: tok(kid, employee_id="x", groups=["admin"]), 403, "unknown_role"),
        ("no subject", lambda: tok(kid, groups=["staff"]), 401, "invalid_token"),
        ("garbage", lambda: "not.a.token", 401, "invalid_token"),
    ]  # fmt: skip
    for name, make, code, error in cases:
        r = await get(stack, make())
        assert status(r) == (code, error), (name, r.text)


async def test_key_rotation_rate_limit_and_provider_outage(
    oidc: tuple[Stack, IdentityProvider, Clock],
) -> None:
    stack, provider, clock = oidc
    ok: dict[str, Any] = {"employee_id": "it-1", "groups": ["mailroom-admins"]}
    old = provider.add_key("rsa")
    old_token = provider.token(old, **ok)
    assert status(await get(stack, old_token)) == (200, None)
    assert provider.requests == 1

    # The provider rotates: a token with the new kid works without a restart (the cache
    # refetches on an unknown kid, at most once per jwks_refresh_min_s) ...
    new = provider.rotate("ec")
    new_token = provider.token(new, **ok)
    clock.advance(31)
    assert status(await get(stack, new_token)) == (200, None)
    assert provider.requests == 2
    # ... and the withdrawn key is refused at once.
    assert status(await get(stack, old_token)) == (401, "unknown_key")

    # Random kids cannot make us hammer the provider: one refetch per window.
    rogue = provider.add_key("rsa", publish=False)
    for _ in range(20):
        r = await get(stack, provider.token(rogue, headers={"kid": f"k{_}"}, **ok))
        assert status(r) == (401, "unknown_key")
    assert provider.requests == 2
    clock.advance(31)
    assert status(await get(stack, provider.token(rogue, **ok))) == (401, "unknown_key")
    assert provider.requests == 3

    # Past the TTL the set is refetched even for known kids.
    clock.advance(301)
    assert status(await get(stack, new_token)) == (200, None)
    assert provider.requests == 4

    # The provider goes down: cached keys keep working (also past the TTL) ...
    provider.stop()
    clock.advance(301)
    assert status(await get(stack, new_token)) == (200, None)
    # ... a key we do not have cannot be judged: 503, not 401 ...
    clock.advance(31)
    assert status(await get(stack, provider.token(rogue, **ok))) == (503, "jwks_unavailable")
    # ... and cached keys older than jwks_max_stale_s are no longer trusted.
    clock.advance(3600)
    assert status(await get(stack, new_token)) == (503, "jwks_unavailable")

    provider.start()  # back on the same port
    clock.advance(31)
    assert status(await get(stack, new_token)) == (200, None)


async def test_a_slow_key_fetch_does_not_stall_other_requests(
    oidc: tuple[Stack, IdentityProvider, Clock],
) -> None:
    """Fetching the provider's keys is blocking HTTP: it runs on a worker thread, so while it
    takes 1.5 s, requests with the deployment's own tokens are answered at once."""
    stack, provider, _clock = oidc
    kid = provider.add_key("rsa")
    provider.delay_s = 1.5
    oidc_token = provider.token(kid, employee_id="e-slow", groups=["mailroom-admins"])
    assert stack.host.runtime.issuer is not None
    local = stack.host.runtime.issuer.issue("acme", "ops", "admin")
    loop = asyncio.get_running_loop()
    slow = asyncio.create_task(get(stack, oidc_token))
    await asyncio.sleep(0.2)  # the fetch is under way
    t0 = loop.time()
    fast = await get(stack, local)
    took = loop.time() - t0
    assert fast.status_code == 200, fast.text
    assert took < 0.8, f"a local-token request waited {took:.2f}s behind the key fetch"
    assert not slow.done()
    assert (await slow).status_code == 200
