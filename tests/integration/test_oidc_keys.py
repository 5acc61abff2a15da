"""The OIDC verifier against a real JWKS server on loopback (``tests.support.jwks``, standing in
for the identity provider, which cannot run here): key parsing, claim mapping, the cache under
concurrent use, and a provider that serves garbage or errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from libs.common.auth import TokenVerifier
from libs.common.errors import MailroomError
from libs.common.oidc import OidcConfig, parse_jwks
from libs.common.settings import Settings
from tests.support.jwks import Clock, IdentityProvider, idp  # noqa: F401 -- fixture


def verifier(idp: IdentityProvider, **over: Any) -> tuple[TokenVerifier, Clock]:  # noqa: F811
    cfg = OidcConfig(idp.issuer, idp.audience, idp.jwks_url, jwks_refresh_min_s=30, **over)
    v = TokenVerifier(None, oidc=cfg)
    clock = Clock()
    assert v.jwks is not None
    v.jwks.clock = clock
    return v, clock


def refused(v: TokenVerifier, token: str) -> tuple[int, str]:
    with pytest.raises(MailroomError) as err:
        v.verify(token)
    return err.value.status, err.value.code


def test_claims_map_to_tenant_role_subject_and_scopes(idp: IdentityProvider) -> None:  # noqa: F811
    v, _ = verifier(idp)
    kid = idp.add_key("ed25519")
    p = v.verify(idp.token(kid, mailroom_tenant="acme", scope="a b", scp=["c"]))
    assert (p.tenant_id, p.role, p.scopes) == ("acme", "employee", frozenset("abc"))
    p = v.verify(idp.token(kid, mailroom_tenant="acme", mailroom_role=["service", "employee"]))
    assert p.role == "employee"  # employee over service
    assert refused(v, idp.token(kid)) == (403, "no_tenant")
    assert refused(v, idp.token(kid, mailroom_tenant="a.b")) == (403, "invalid_tenant")
    assert refused(v, idp.token(kid, mailroom_tenant="acme.>")) == (403, "invalid_tenant")
    assert refused(v, idp.token(kid, mailroom_tenant="acme", mailroom_role="root")) == (
        403,
        "unknown_role",
    )
    assert refused(v, idp.token(kid, mailroom_tenant="acme", sub="x" * 129)) == (
        401,
        "invalid_token",
    )
    for bad in ("emp-1\r\nce-actor: admin:root", "emp\x00", " emp-1", "emp\u2028"):
        assert refused(v, idp.token(kid, mailroom_tenant="acme", sub=bad)) == (
            401, "invalid_token"
        ), bad  # fmt: skip
    p = v.verify(idp.token(kid, mailroom_tenant="acme", sub="Zoë Müller"))
    assert p.actor == "employee:Zoë Müller"
    custom, _ = verifier(idp, tenant_claim="org", role_claim="roles", default_role="service")
    p = custom.verify(idp.token(kid, org="globex", sub="bot-1"))
    assert (p.tenant_id, p.subject, p.role) == ("globex", "bot-1", "service")


def test_token_without_kid_needs_an_unambiguous_key(idp: IdentityProvider) -> None:  # noqa: F811
    v, clock = verifier(idp)
    kid = idp.add_key("rsa")
    token = idp.token(kid, headers={"kid": None}, mailroom_tenant="acme")
    assert v.verify(token).tenant_id == "acme"
    idp.add_key("ec")
    clock.advance(301)  # the TTL passes: the second key is seen
    assert refused(v, token) == (401, "unknown_key")


def test_only_asymmetric_signing_keys_are_used() -> None:
    provider = IdentityProvider()
    rsa_kid = provider.add_key("rsa")
    enc = {**provider.public_jwk(rsa_kid), "kid": "enc", "use": "enc"}
    doc = {
        "keys": [
            provider.public_jwk(rsa_kid),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            enc,
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            "not a key",
        ]
    }
    assert list(parse_jwks(doc)) == [rsa_kid]
    bad_docs: list[Any] = [{}, {"keys": "x"}, []]
    for bad in bad_docs:
        with pytest.raises(ValueError):
            parse_jwks(bad)


def test_garbage_or_errors_from_the_provider_are_503_until_it_recovers(
    idp: IdentityProvider,  # noqa: F811
) -> None:
    v, clock = verifier(idp)
    kid = idp.add_key("rsa")
    token = idp.token(kid, mailroom_tenant="acme")
    idp.raw = b"<html>maintenance</html>"
    assert refused(v, token) == (503, "jwks_unavailable")
    idp.raw, idp.status = None, 500
    assert refused(v, token) == (503, "jwks_unavailable")  # rate-limited: no new attempt
    assert idp.requests == 1
    clock.advance(31)
    assert refused(v, token) == (503, "jwks_unavailable")
    idp.status = 200
    clock.advance(31)
    assert v.verify(token).tenant_id == "acme"
    assert idp.requests == 3


def test_concurrent_first_use_fetches_once(idp: IdentityProvider) -> None:  # noqa: F811
    v, _ = verifier(idp)
    kid = idp.add_key("ec")
    tokens = [idp.token(kid, mailroom_tenant="acme") for _ in range(32)]
    with ThreadPoolExecutor(8) as pool:
        principals = list(pool.map(v.verify, tokens))
    assert {p.tenant_id for p in principals} == {"acme"} and idp.requests == 1


def test_configuration_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OidcConfig.from_settings(Settings()) is None
    monkeypatch.setenv("MAILROOM_OIDC_ISSUER", "https://idp.example")
    with pytest.raises(ValueError, match="AUDIENCE"):
        OidcConfig.from_settings(Settings())
    monkeypatch.setenv("MAILROOM_OIDC_AUDIENCE", "mailroom")
    monkeypatch.setenv("MAILROOM_OIDC_JWKS_URL", "https://idp.example/jwks")
    monkeypatch.setenv("MAILROOM_OIDC_ROLE_MAP", '{"mr-admins": "admin"}')
    monkeypatch.setenv("MAILROOM_OIDC_TENANT", "acme")
    cfg = OidcConfig.from_settings(Settings())
    assert cfg is not None
    assert (cfg.role_map, cfg.tenant, cfg.jwks_ttl_s) == ({"mr-admins": "admin"}, "acme", 300)
    with pytest.raises(ValueError):
        TokenVerifier(None, oidc_issuer="https://idp.example")
