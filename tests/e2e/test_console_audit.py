"""The console's audit log in headless Chromium against `mailroom up`: the newest entry first,
Older/Newer pages carried by the audit API's cursor (the whole trail is never read), filters
kept across pages, the chain verification on every page, and a tampered cursor refused."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from services.console.pages_audit import PER_PAGE
from tests.support import browser as support
from tests.support.browser import ConsoleStack, new_page, shot, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

console_stack = support.console_stack  # the fixtures
browser = support.browser

PEOPLE = PER_PAGE + 10


def pager_name(i: int) -> str:
    return f"Pager {chr(65 + i // 26)}{chr(65 + i % 26)}"


def add_people(stack: ConsoleStack) -> None:
    with stack.api() as api:
        for i in range(PEOPLE):
            email = f"pager.{i}@acme.example"
            r = api.post("/v1/employees", json={"name": pager_name(i), "email": email})
            assert r.status_code == 201, r.text
        deadline = time.monotonic() + 30
        while True:  # the audit service consumes the events from the stream
            r = api.get("/v1/audit/events", params={"order": "desc", "type": "EmployeeAdded"})
            items = r.json()["items"]
            if items and items[0]["event"]["data"]["name"] == pager_name(PEOPLE - 1):
                return
            assert time.monotonic() < deadline, "the audit log did not catch up"
            time.sleep(0.2)


def rows(page: Any) -> list[tuple[int, str]]:
    """(#, text) of each row of the audit table, top to bottom."""
    out = []
    for text in page.locator("table.list tbody tr").all_inner_texts():
        number, _, rest = text.strip().partition("\t")
        out.append((int(number), rest))
    return out


def pager(page: Any) -> Any:
    return page.get_by_role("navigation", name="Audit log pages")


def test_newest_first_paged_with_the_cursor(console_stack: ConsoleStack, browser: Any) -> None:
    add_people(console_stack)
    page = new_page(browser)
    sign_in(page, console_stack)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    page.wait_for_url(re.compile(r".*/console/audit$"))
    assert page.locator("#chain").get_by_text("Chain intact.").is_visible()
    first = rows(page)
    numbers = [n for n, _ in first]
    assert len(first) == PER_PAGE and numbers == sorted(numbers, reverse=True)
    assert numbers == list(range(numbers[0], numbers[0] - PER_PAGE, -1))  # no gaps
    assert pager(page).get_by_role("link", name="Newer").count() == 0  # this is the newest
    shot(page, "audit-01-newest")

    pager(page).get_by_role("link", name="Older").click()
    page.wait_for_url(re.compile(r".*/console/audit\?cursor=.+"))
    second = rows(page)
    assert second[0][0] == numbers[-1] - 1  # right after the first page, going back in time
    assert page.locator("#chain").get_by_text("Chain intact.").is_visible()
    shot(page, "audit-02-older")
    pager(page).get_by_role("link", name="Newer").click()
    page.wait_for_url(re.compile(r".*/console/audit\?cursor=.+"))
    assert rows(page) == first  # the same first page on the way back

    # A filter is kept on every page: only the pagers' additions, newest first.
    page.get_by_label("Event").select_option("EmployeeAdded")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r".*type=EmployeeAdded.*"))
    added = rows(page)
    assert len(added) == PER_PAGE and all("EmployeeAdded" in text for _, text in added)
    assert pager_name(PEOPLE - 1) in added[0][1] and pager_name(10) in added[-1][1]
    pager(page).get_by_role("link", name="Older").click()
    page.wait_for_url(re.compile(r".*type=EmployeeAdded.*cursor=.+"))
    older = rows(page)
    assert all("EmployeeAdded" in text for _, text in older)
    assert all(pager_name(i) in older[9 - i][1] for i in range(9, -1, -1))  # AJ .. AA
    assert page.get_by_label("Event").input_value() == "EmployeeAdded"
    pager(page).get_by_role("link", name="Newest").click()
    page.wait_for_url(re.compile(r".*/console/audit\?type=EmployeeAdded$"))
    assert rows(page) == added
    assert page.js_errors == []

    answer = page.goto(f"{console_stack.base}/console/audit?cursor=not-a-cursor")
    assert answer is not None and answer.status == 400
    assert "cursor must come from" in page.locator("main").inner_text()
