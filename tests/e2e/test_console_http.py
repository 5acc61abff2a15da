"""The console (backend-for-frontend) over plain HTTP, against `mailroom up`: sign-in and its
cookie, CSRF refusal on every form POST, the redirect when signed out, clear 4xx pages for bad
input, secrets never rendered, and an employee kept to their own mailboxes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from libs.common.auth import TokenIssuer
from tests.support import browser as support
from tests.support.browser import ConsoleStack

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

console_stack = support.console_stack  # the fixture


def client(stack: ConsoleStack, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=stack.base, timeout=30, follow_redirects=False, **kw)


def csrf(c: httpx.Client) -> str:
    if "mailroom_console_csrf" not in c.cookies:
        c.get("/console/signin")
    return str(c.cookies["mailroom_console_csrf"])


@contextmanager
def signed_in(stack: ConsoleStack, token: str | None = None) -> Iterator[httpx.Client]:
    with client(stack) as c:
        r = c.post(
            "/console/signin",
            data={"csrf_token": csrf(c), "token": token or stack.token, "next": "/console/"},
        )
        assert r.status_code == 303, r.text
        yield c


def test_signed_out_pages_send_to_sign_in(console_stack: ConsoleStack) -> None:
    with client(console_stack) as c:
        r = c.get("/console/people?q=x")
        assert r.status_code == 303
        assert r.headers["location"] == "/console/signin?next=/console/people%3Fq%3Dx"
        r = c.get("/console/", headers={"HX-Request": "true"})  # htmx follows HX-Redirect
        assert r.status_code == 401 and r.headers["hx-redirect"].startswith("/console/signin")
        assert c.get("/console").headers["location"] == "/console/"
        page = c.get("/console/signin")
        assert page.status_code == 200 and 'name="csrf_token"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        cookie = page.headers["set-cookie"].lower()
        assert "mailroom_console_csrf=" in cookie and "httponly" in cookie
        assert "samesite=strict" in cookie and "path=/console" in cookie
        js = c.get("/console/static/htmx.min.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert c.get("/console/static/app.py").status_code == 404
        assert c.get("/console/static/..%2Fapp.py").status_code == 404
        assert c.get("/console/no/such/page").status_code == 404
        paths = c.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if p.startswith("/console")]  # pages, not API


def test_sign_in_cookie_and_refused_tokens(console_stack: ConsoleStack, tmp_path: Any) -> None:
    with client(console_stack) as c:
        token = csrf(c)
        r = c.post("/console/signin", data={"token": console_stack.token})  # no CSRF token
        assert r.status_code == 403 and "security token" in r.text
        r = c.post("/console/signin", data={"csrf_token": token, "token": "not a token"})
        assert r.status_code == 422 and "not a token" in r.text
        from libs.common.auth import load_or_create_key

        stranger = TokenIssuer(load_or_create_key(tmp_path / "other.pem"))
        r = c.post(
            "/console/signin",
            data={"csrf_token": token, "token": stranger.issue("demo", "admin", "admin")},
        )
        assert r.status_code == 401 and "refused" in r.text
        service = TokenIssuer(load_or_create_key(console_stack.data_dir / "auth_ed25519.pem"))
        r = c.post(
            "/console/signin",
            data={"csrf_token": token, "token": service.issue("demo", "bot", "service")},
        )
        assert r.status_code == 401 and "service tokens" in r.text
        r = c.post(
            "/console/signin",
            data={"csrf_token": token, "token": console_stack.token, "next": "//evil.example/"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/console/"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("mailroom_console_session=")
        low = cookie.lower()
        assert "httponly" in low and "samesite=strict" in low and "path=/console" in low
        assert "secure" not in low  # plain http here
        assert console_stack.token not in c.get("/console/").text  # never rendered back
        r = c.post(
            "/console/signin",
            data={"csrf_token": token, "token": console_stack.token},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert "; secure" in r.headers["set-cookie"].lower()
        assert c.post("/console/signout").status_code == 403  # CSRF here too
        r = c.post("/console/signout", data={"csrf_token": token})
        assert r.status_code == 303 and 'mailroom_console_session=""' in r.headers["set-cookie"]


POSTS = (
    "/console/people",
    "/console/accounts/new",
    "/console/accounts/new/test",
    "/console/import/check",
    "/console/import/run",
    "/console/people/e1/offboard/review",
    "/console/people/e1/offboard",
    "/console/people/e1/reinstate",
    "/console/mailboxes/m1/grant",
    "/console/mailboxes/m1/revoke",
    "/console/mailboxes/m1/settings",
    "/console/mailboxes/m1/credential",
    "/console/mailboxes/m1/signatures",
    "/console/mailboxes/m1/disable",
    "/console/mailboxes/m1/sync",
)


def test_every_form_post_needs_the_csrf_token(console_stack: ConsoleStack) -> None:
    with signed_in(console_stack) as c:
        good = csrf(c)
        for path in POSTS:
            missing = c.post(path, data={"name": "Mallory", "email": "m@acme.example"})
            assert missing.status_code == 403, (path, missing.status_code)
            wrong = c.post(path, data={"csrf_token": "x" * 43, "name": "Mallory"})
            assert wrong.status_code == 403, path
        r = c.post(
            "/console/people",
            data={"name": "Mallory", "email": "mallory@acme.example"},
            headers={"X-CSRF-Token": "y" * 43},
        )
        assert r.status_code == 403
        with console_stack.api() as api:
            emails = [p["email"] for p in api.get("/v1/employees").json()["items"]]
        assert "mallory@acme.example" not in emails
        r = c.post(  # the htmx header carries the same token
            "/console/people",
            data={"name": "Trent", "email": "trent@acme.example"},
            headers={"X-CSRF-Token": good},
        )
        assert r.status_code == 303 and r.headers["location"].startswith("/console/people/")


def test_bad_input_is_a_clear_4xx_page(console_stack: ConsoleStack) -> None:
    with signed_in(console_stack) as c:
        token = csrf(c)
        cases = [
            ("GET", "/console/mailboxes/no-such-mailbox", {}, 404),
            ("GET", "/console/mailboxes/bad%20id", {}, 404),
            ("GET", "/console/people/no-such-person", {}, 404),
            ("GET", "/console/audit?since=yesterday", {}, 422),
            ("GET", "/console/?q=" + "x" * 300, {}, 422),
            ("GET", "/console/sync?days=400", {}, 422),
            ("POST", "/console/mailboxes/m1/grant", {"grantee": "employee:e1", "level": "x"}, 422),
            ("POST", "/console/mailboxes/m1/grant", {"grantee": "nobody"}, 422),
            ("POST", "/console/accounts/new", {"address": ""}, 422),
            (
                "POST",
                "/console/accounts/new",
                {"address": "a@b.io", "incoming_host": "h", "incoming_port": "x"},
                422,
            ),
            ("POST", "/console/import/check", {}, 422),
            ("POST", "/console/people/e1/offboard", {"successor_id": "e2"}, 422),
            ("POST", "/console/people", {"name": "", "email": ""}, 422),
        ]
        for method, path, data, status in cases:
            form = {"csrf_token": token, **data} if method == "POST" else None
            r = c.request(method, path, data=form)
            assert r.status_code == status, (path, r.status_code, r.text[-500:])
            assert 'role="alert"' in r.text, path
        r = c.get("/console/mailboxes/no-such-mailbox", headers={"HX-Request": "true"})
        assert r.status_code == 404 and r.text.lstrip().startswith('<div class="alert')


def test_secrets_are_never_rendered(console_stack: ConsoleStack) -> None:
    secret = "s3cret-Pa55-never-shown"
    with console_stack.api() as api:
        r = api.post(
            "/v1/accounts",
            json={
                "address": "vault@acme.example",
                "protocol": "imap",
                "incoming": {"host": "imap.acme.example", "port": 993, "security": "ssl"},
                "outgoing": {"host": "smtp.acme.example", "port": 465, "security": "ssl"},
                "password": secret,
            },
        )
        assert r.status_code == 201, r.text
        account_id = r.json()["id"]
    with signed_in(console_stack) as c:
        for path in ("/console/", f"/console/mailboxes/{account_id}", "/console/audit"):
            page = c.get(path)
            assert page.status_code == 200, path
            assert secret not in page.text and console_stack.token not in page.text
        assert "stored (never shown)" in c.get(f"/console/mailboxes/{account_id}").text


def test_employee_sees_only_their_mailboxes_and_no_admin_pages(
    console_stack: ConsoleStack,
) -> None:
    me = console_stack.employee("Erin Employee")
    with console_stack.api() as api:
        mine = api.post(
            "/v1/accounts",
            json={
                "address": "erin@acme.example",
                "protocol": "imap",
                "incoming": {"host": "imap.acme.example", "port": 993, "security": "ssl"},
                "outgoing": {"host": "smtp.acme.example", "port": 465, "security": "ssl"},
                "owner_id": me["id"],
            },
        ).json()
        other = api.post(
            "/v1/accounts",
            json={
                "address": "boss@acme.example",
                "protocol": "imap",
                "incoming": {"host": "imap.acme.example", "port": 993, "security": "ssl"},
                "outgoing": {"host": "smtp.acme.example", "port": 465, "security": "ssl"},
            },
        ).json()
    with signed_in(console_stack, console_stack.token_for(me["id"])) as c:
        deadline = time.monotonic() + 15
        while True:  # authz learns of the new mailbox from the event stream
            page = c.get("/console/")
            if "erin@acme.example" in page.text or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert page.status_code == 200 and "My mailboxes" in page.text
        assert "erin@acme.example" in page.text and "boss@acme.example" not in page.text
        for admin_link in ("/console/people", "/console/import", "/console/audit"):
            assert f'href="{admin_link}"' not in page.text
            assert c.get(admin_link).status_code == 403
        assert c.get(f"/console/mailboxes/{other['id']}").status_code in (403, 404)
        own = c.get(f"/console/mailboxes/{mine['id']}")
        assert own.status_code == 200 and "erin@acme.example" in own.text
        token = csrf(c)
        r = c.post("/console/people", data={"csrf_token": token, "name": "X", "email": "x@a.io"})
        assert r.status_code == 403
        r = c.post(
            f"/console/mailboxes/{other['id']}/grant",
            data={"csrf_token": token, "grantee": f"employee:{me['id']}", "level": "read"},
        )
        assert r.status_code in (403, 404)  # refused by authz, not only hidden


def test_up_prints_a_console_sign_in_link(console_stack: ConsoleStack) -> None:
    """On stdout after the token (the logs on stderr never hold a token)."""
    assert console_stack.proc is not None and console_stack.proc.stdout is not None
    line = console_stack.proc.stdout.readline().strip()
    assert line == f"{console_stack.base}/console/signin#token={console_stack.token}"
    assert console_stack.token not in (console_stack.data_dir / "up.log").read_text()
