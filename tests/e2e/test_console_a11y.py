"""The console for everyone: an axe-like smoke check of every page, no sideways scrolling at
phone width, the main flow by keyboard alone, and an employee who sees only their own
mailboxes and is offered no admin action (headless Chromium against `mailroom up`)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support import browser as support
from tests.support.browser import (
    PHONE,
    ConsoleStack,
    a11y_problems,
    horizontal_overflow,
    new_page,
    shot,
    sign_in,
)

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

console_stack = support.console_stack  # the fixtures
browser = support.browser


def account(stack: ConsoleStack, address: str, **over: Any) -> dict[str, Any]:
    with stack.api() as api:
        r = api.post(
            "/v1/accounts",
            json={
                "address": address,
                "protocol": "imap",
                "incoming": {"host": "imap.acme.example", "port": 993, "security": "ssl"},
                "outgoing": {"host": "smtp.acme.example", "port": 465, "security": "ssl"},
                **over,
            },
        )
        assert r.status_code == 201, r.text
        return dict(r.json())


def grant(stack: ConsoleStack, mailbox_id: str, employee_id: str, level: str) -> None:
    deadline = time.monotonic() + 15
    with stack.api() as api:
        while True:  # authz learns of a new mailbox from the event stream
            r = api.post(
                f"/v1/mailboxes/{mailbox_id}/grants",
                json={"grantee_kind": "employee", "grantee_id": employee_id, "level": level},
            )
            if r.status_code in (200, 201) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert r.status_code in (200, 201), r.text


def test_every_page_passes_the_smoke_check_at_laptop_and_phone_width(
    console_stack: ConsoleStack, browser: Any
) -> None:
    person = console_stack.employee("Ada Accessible")
    mailbox = account(console_stack, "a11y@acme.example", owner_id=person["id"])
    pages = {
        "library": "/console/",
        "add": "/console/accounts/new?preset=gmail",
        "mailbox": f"/console/mailboxes/{mailbox['id']}",
        "people": "/console/people",
        "person": f"/console/people/{person['id']}",
        "offboard": f"/console/people/{person['id']}/offboard",
        "import": "/console/import",
        "audit": "/console/audit",
        "sync": "/console/sync",
    }
    for viewport, label in (({"width": 1280, "height": 800}, "laptop"), (PHONE, "phone")):
        page = new_page(browser, viewport)
        page.goto(f"{console_stack.base}/console/signin")
        assert a11y_problems(page) == [], "signin"
        assert horizontal_overflow(page) <= 0
        sign_in(page, console_stack)
        for name, path in pages.items():
            page.goto(console_stack.base + path)
            assert a11y_problems(page) == [], name
            overflow = horizontal_overflow(page)
            assert overflow <= 0, f"{name} is {overflow}px wider than a {label} screen"
            shot(page, f"{label}-{name}")
        assert page.js_errors == []
        page.goto(f"{console_stack.base}/console/no/such/page")  # a 404 page is a page too
        assert a11y_problems(page) == [] and horizontal_overflow(page) <= 0
        page.context.close()


def focused(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """() => { const el = document.activeElement; const s = getComputedStyle(el);
            return {tag: el.tagName, id: el.id, text: (el.textContent || '').trim(),
                    outline: s.outlineStyle, width: parseFloat(s.outlineWidth) || 0}; }"""
        )
    )


def tab_to(page: Any, text: str = "", element_id: str = "", limit: int = 200) -> dict[str, Any]:
    """Press Tab until the named element has the focus; its focus must be visible."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        now = focused(page)
        if (text and now["text"] == text) or (element_id and now["id"] == element_id):
            assert now["outline"] != "none" and now["width"] >= 2, now  # a visible focus ring
            return now
    pytest.fail(f"Tab never reached {text or element_id!r}")


def test_keyboard_only_main_flow(console_stack: ConsoleStack, browser: Any) -> None:
    person = console_stack.employee("Kay Keyboard")
    mailbox = account(console_stack, "keys@acme.example")
    page = new_page(browser)
    page.goto(f"{console_stack.base}/console/signin")
    tab_to(page, element_id="token")
    page.keyboard.type(console_stack.token)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{console_stack.base}/console/")

    page.keyboard.press("Tab")
    assert focused(page)["text"] == "Skip to content"
    page.keyboard.press("Enter")
    assert focused(page)["id"] == "main"

    tab_to(page, text="keys@acme.example")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/console/mailboxes/{mailbox['id']}")
    tab_to(page, element_id="grantee")
    option = f"Kay Keyboard ({person['email']})"
    labels = page.eval_on_selector_all("#grantee option", "els => els.map(e => e.textContent)")
    for _ in range(labels.index(option)):
        page.keyboard.press("ArrowDown")
    tab_to(page, element_id="level")
    page.keyboard.press("ArrowDown")  # Write
    tab_to(page, text="Grant")
    page.keyboard.press("Enter")
    page.get_by_text("Access granted.").wait_for()
    assert "Kay Keyboard" in page.locator("#people table").inner_text()

    tab_to(page, text="People")
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/people")
    tab_to(page, text="Kay Keyboard")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/console/people/{person['id']}")
    assert "keys@acme.example" in page.locator("main").inner_text()  # their mailbox and level
    shot(page, "keyboard-person")
    assert page.js_errors == []


def test_employee_sees_only_their_mailboxes_and_no_admin_actions(
    console_stack: ConsoleStack, browser: Any
) -> None:
    me = console_stack.employee("Eve Employee")
    own = account(console_stack, "eve@acme.example", owner_id=me["id"])
    shared = account(console_stack, "team@acme.example", ownership="shared")
    hidden = account(console_stack, "ceo@acme.example")
    grant(console_stack, shared["id"], me["id"], "read")
    page = new_page(browser)
    sign_in(page, console_stack, console_stack.token_for(me["id"]))
    main = page.locator("main")
    assert page.get_by_role("heading", name="My mailboxes").is_visible()
    text = main.inner_text()
    assert "eve@acme.example" in text and "team@acme.example" in text
    assert "ceo@acme.example" not in text
    nav = page.get_by_role("navigation", name="Main").inner_text()
    for admin_only in ("People", "Bulk import", "Audit log", "Sync", "Add mailbox"):
        assert admin_only not in nav
    shot(page, "employee-library")

    page.get_by_role("link", name="team@acme.example").click()
    for action in ("Disable", "Test connection", "Grant", "Save settings", "Save signature"):
        assert page.get_by_role("button", name=action).count() == 0, action
    assert page.locator("#people").count() == 0  # who has access: configure only
    shot(page, "employee-shared-mailbox")

    page.goto(f"{console_stack.base}/console/mailboxes/{own['id']}")
    assert page.get_by_role("button", name="Save settings").count() == 1  # their own
    response = page.goto(f"{console_stack.base}/console/mailboxes/{hidden['id']}")
    assert response is not None and response.status in (403, 404)
    response = page.goto(f"{console_stack.base}/console/people")
    assert response is not None and response.status == 403
    # Refused by the backends too, not only hidden: a forged grant on the shared mailbox.
    result = page.evaluate(
        """async ([id, me]) => {
            const csrf = document.querySelector('input[name=csrf_token]').value;
            const body = new URLSearchParams({csrf_token: csrf, grantee: 'employee:' + me,
                                              level: 'configure'});
            const r = await fetch(`/console/mailboxes/${id}/grant`, {method: 'POST', body});
            return r.status; }""",
        [shared["id"], me["id"]],
    )
    assert result == 403, json.dumps(result)
