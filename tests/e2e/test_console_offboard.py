"""The console's Offboard wizard in headless Chromium against `mailroom up`: the plan shown is
the registry's own dry run (nothing done while reviewing), the confirm commits exactly that
plan, and a plan that changed in between is shown again instead of being carried out."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support import browser as support
from tests.support.browser import ConsoleStack, new_page, shot, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

console_stack = support.console_stack  # the fixtures
browser = support.browser


def owner_of(stack: ConsoleStack, account_id: str) -> str | None:
    with stack.api() as api:
        owner = api.get(f"/v1/accounts/{account_id}").json()["owner_id"]
        return str(owner) if owner else None


def test_the_plan_is_the_registry_dry_run_and_the_confirm_does_it(
    console_stack: ConsoleStack, browser: Any
) -> None:
    stack = console_stack
    leaver = stack.employee("Olive Outgoing")
    stack.employee("Nina Next")
    successor = stack.employee("Nora Newcomer")
    first = stack.mailbox("olive@acme.example", leaver["id"])
    page = new_page(browser)
    sign_in(page, stack)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="People").click()
    page.get_by_role("link", name="Olive Outgoing").click()
    page.get_by_role("link", name="Offboard…").click()
    page.get_by_label(re.compile("^Successor")).select_option(successor["id"])
    page.get_by_label(re.compile("^Automatic reply")).fill("Olive has left; write to Nora.")
    page.get_by_role("button", name="Review what will happen").click()
    plan = page.locator(".plan")
    plan.wait_for()
    text = plan.inner_text()
    assert "olive@acme.example: handed over to Nora Newcomer" in text
    assert "Olive has left; write to Nora." in text and "Nina Next" not in text
    plan.locator("summary").click()
    events = plan.locator("details li").all_inner_texts()
    assert events == [
        "EmployeeOffboarded on Olive Outgoing",
        "MailboxHandedOver on olive@acme.example",
    ]
    shot(page, "offboard-01-plan")
    # Reviewing did nothing: the registry answered a dry run.
    with stack.api() as api:
        assert api.get(f"/v1/employees/{leaver['id']}").json()["status"] == "active"
    assert owner_of(stack, first) == leaver["id"]

    # A mailbox given to Olive while the plan is on screen: the confirm is refused and the
    # wizard shows the plan as it is now, with nothing done.
    second = stack.mailbox("olive.sales@acme.example", leaver["id"])
    page.get_by_role("button", name="Offboard Olive Outgoing").click()
    page.get_by_text("The plan changed since you reviewed it").wait_for()
    text = page.locator(".plan").inner_text()
    assert "olive.sales@acme.example: handed over to Nora Newcomer" in text
    assert owner_of(stack, first) == leaver["id"]
    shot(page, "offboard-02-plan-changed")

    page.get_by_role("button", name="Offboard Olive Outgoing").click()
    page.get_by_role("heading", name="Olive Outgoing is offboarded").wait_for()
    done = page.locator("main").inner_text()
    for address in ("olive@acme.example", "olive.sales@acme.example"):
        assert f"{address}: handed over to Nora Newcomer" in done
    assert owner_of(stack, first) == owner_of(stack, second) == successor["id"]
    shot(page, "offboard-03-done")
    assert [e for e in page.js_errors if "409" not in e] == []
