"""OAuth2 pieces of the registry without I/O: PKCE, the client configuration, the sealed
token document and the state format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from libs.common.errors import MailroomError, NotFound
from services.registry.oauth_client import Pkce, TokenDoc, s256
from services.registry.oauth_config import OAuthClients, OAuthConfigError, parse_clients
from services.registry.oauth_flow import make_state, tenant_of


def test_s256_matches_rfc7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    p = Pkce.new()
    assert 43 <= len(p.verifier) <= 128 and p.challenge == s256(p.verifier)


def test_presets_know_endpoints_and_mail_scopes() -> None:
    clients = parse_clients(
        json.dumps(
            {
                "*": {"gmail": {"client_id": "g", "client_secret": "gs"}},
                "acme": {
                    "o365": {"client_id": "m", "client_secret": "ms", "ms_tenant": "contoso.com"},
                    "corp": {"issuer": "https://sso.example/realms/x", "client_id": "c"},
                },
            }
        )
    )
    gmail = clients["*"]["gmail"]
    assert gmail.kind == "gmail" and "https://mail.google.com/" in gmail.scope_list
    assert gmail.extra_params == {"access_type": "offline", "prompt": "consent"}
    assert gmail.preset_endpoints()[1] == "https://oauth2.googleapis.com/token"
    o365 = clients["acme"]["o365"]
    assert o365.preset_endpoints()[0] == (
        "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/authorize"
    )
    assert "offline_access" in o365.scope_list
    corp = clients["acme"]["corp"]
    assert corp.kind == "oidc" and corp.client_secret is None
    assert corp.preset_endpoints() == (None, None)  # discovered from the issuer


def test_a_tenant_sees_its_own_and_the_shared_clients(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"*": {"gmail": {"client_id": "shared"}}}))
    clients = OAuthClients.from_env({"MAILROOM_OAUTH_CLIENTS_FILE": str(path)})
    assert clients.get("acme", "gmail").client_id == "shared"
    with pytest.raises(NotFound) as missing:
        clients.get("acme", "corp")
    assert missing.value.code == "unknown_oauth_provider"
    doc = {"*": {"gmail": {"client_id": "shared"}}, "acme": {"gmail": {"client_id": "own"}}}
    path.write_text(json.dumps(doc))
    os.utime(path, (1, 1))  # a remounted secret: re-read on its next use
    assert clients.get("acme", "gmail").client_id == "own"
    assert clients.get("globex", "gmail").client_id == "shared"


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"acme": {"Bad Name": {"client_id": "x"}}}, "provider name"),
        ({"acme": {"corp": {"client_id": "x"}}}, "issuer, or authorize_url"),
        ({"acme": {"corp": {"client_id": "x", "issuer": "ftp://x"}}}, "http(s) URL"),
        ({"acme": {"gmail": {"client_secret": "hush-hush-42"}}}, "client_id"),
        ({"acme": []}, "object of providers"),
    ],
)
def test_bad_configuration_is_named_without_its_secrets(doc: object, needle: str) -> None:
    with pytest.raises(OAuthConfigError) as bad:
        parse_clients(json.dumps(doc))
    assert needle in str(bad.value) and "hush-hush" not in str(bad.value)


def test_both_sources_at_once_are_refused() -> None:
    with pytest.raises(OAuthConfigError):
        OAuthClients.from_env({"MAILROOM_OAUTH_CLIENTS": "{}", "MAILROOM_OAUTH_CLIENTS_FILE": "x"})


def test_token_document_round_trips_and_never_shows_its_tokens() -> None:
    doc = TokenDoc("corp", SecretStr("rt-secret-1"), SecretStr("at-secret-1"), 2e9, 1.9e9, "mail")
    assert "secret-1" not in repr(doc) and "secret-1" not in str(doc)
    back = TokenDoc.parse(doc.secret().get_secret_value())
    assert back is not None and back.refresh_token.get_secret_value() == "rt-secret-1"
    assert back.expires_at == 2e9 and back.scope == "mail"
    assert TokenDoc.parse("hunter2") is None and TokenDoc.parse('{"a": 1}') is None


def test_state_names_its_tenant_and_foreign_states_are_400() -> None:
    state = make_state("acme")
    assert tenant_of(state) == "acme" and len(state) > 40
    for bad in ("", "nodot", ".x", "!!." + "a" * 43, "YWNtZQ.short", "x" * 401):
        with pytest.raises(MailroomError) as refused:
            tenant_of(bad)
        assert refused.value.status == 400 and refused.value.code == "oauth_state_invalid"
