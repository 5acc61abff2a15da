"""Console sign-in with OIDC (authorization code + PKCE) against a stand-in provider: the
browser goes to the provider, comes back with a code, the console exchanges it (the provider
checks the PKCE verifier) and the services accept the provider's token (MAILROOM_OIDC_*)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from tests.support import browser as support
from tests.support.browser import ConsoleStack, new_page, shot
from tests.support.jwks import IdentityProvider

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

browser = support.browser  # the fixture
CLIENT_ID = "mailroom-console"


class Provider:
    """``/authorize`` approves at once and redirects back with a code; ``/token`` checks the
    code, the redirect URI and the PKCE verifier, and answers a JWT from the JWKS provider."""

    def __init__(self, idp: IdentityProvider) -> None:
        self.idp = idp
        self.kid = idp.add_key("rsa")
        self.codes: dict[str, dict[str, str]] = {}
        self.exchanged: list[dict[str, str]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                q = dict(parse_qsl(url.query))
                if url.path != "/authorize" or q.get("code_challenge_method") != "S256":
                    self.send_error(400)
                    return
                code = secrets.token_urlsafe(16)
                provider.codes[code] = q
                back = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
                self.send_response(302)
                self.send_header("Location", back)
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                provider.exchanged.append(form)
                asked = provider.codes.pop(form.get("code", ""), None)
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                ok = (
                    asked is not None
                    and asked["code_challenge"] == challenge
                    and asked["redirect_uri"] == form.get("redirect_uri")
                    and form.get("client_id") == CLIENT_ID
                )
                body: dict[str, Any] = (
                    {
                        "access_token": provider.idp.token(
                            provider.kid, mailroom_tenant="demo", mailroom_role="admin"
                        ),
                        "token_type": "Bearer",
                    }
                    if ok
                    else {"error": "invalid_grant"}
                )
                data = json.dumps(body).encode()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def oidc_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConsoleStack, Provider]]:
    idp = IdentityProvider(audience="mailroom")
    idp.start()
    provider = Provider(idp)
    env = {
        "MAILROOM_OIDC_ISSUER": idp.issuer,
        "MAILROOM_OIDC_AUDIENCE": "mailroom",
        "MAILROOM_OIDC_JWKS_URL": idp.jwks_url,
        "MAILROOM_CONSOLE_OIDC_AUTHORIZE_URL": provider.url + "/authorize",
        "MAILROOM_CONSOLE_OIDC_TOKEN_URL": provider.url + "/token",
        "MAILROOM_CONSOLE_OIDC_CLIENT_ID": CLIENT_ID,
        "MAILROOM_CONSOLE_DEMO_SIGN_IN": "false",
    }
    data: Path = tmp_path_factory.mktemp("console-oidc") / "data"
    data.mkdir()
    stack = ConsoleStack(data, env)
    stack.start()
    try:
        yield stack, provider
    finally:
        if stack.proc is not None:
            stack.stop()
        provider.stop()
        idp.stop()


def test_sign_in_with_the_organisations_provider(
    oidc_stack: tuple[ConsoleStack, Provider], browser: Any
) -> None:
    stack, provider = oidc_stack
    page = new_page(browser)
    page.goto(f"{stack.base}/console/people")
    page.wait_for_url(re.compile(r".*/console/signin\?next=.*"))
    assert page.get_by_label("Access token").count() == 0  # token sign-in switched off
    page.get_by_role("link", name="Sign in with your organisation").click()
    page.get_by_role("heading", name="Signed in").wait_for()
    page.get_by_role("link", name="Continue to the console").click()
    page.wait_for_url(f"{stack.base}/console/people")
    assert page.get_by_role("heading", name="People").is_visible()
    assert "Admin · idp|" in page.locator(".whoami").inner_text()
    assert len(provider.exchanged) == 1 and provider.exchanged[0]["code_verifier"]
    shot(page, "oidc-signed-in")
    assert page.js_errors == []


def test_a_callback_without_its_state_is_refused(
    oidc_stack: tuple[ConsoleStack, Provider],
) -> None:
    stack, _ = oidc_stack
    with httpx.Client(base_url=stack.base, follow_redirects=False) as c:
        start = c.get("/console/auth/start", params={"next": "/console/audit"})
        assert start.status_code == 303 and start.headers["location"].startswith(
            f"{stack.extra_env['MAILROOM_CONSOLE_OIDC_AUTHORIZE_URL']}?"
        )
        cookie = start.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "max-age=600" in cookie
        r = c.get("/console/auth/callback", params={"code": "x", "state": "forged"})
        assert r.status_code == 400 and "expired or came from elsewhere" in r.text
        r = c.get("/console/auth/callback", params={"error": "access_denied"})
        assert r.status_code == 401 and "access_denied" in r.text
        r = c.post("/console/signin", data={"csrf_token": "x", "token": stack.token})
        assert r.status_code == 403
        assert "mailroom_console_session" not in c.cookies
