"""The admin's main flow in headless Chromium against `mailroom up`, Dovecot and aiosmtpd:
sign in with the printed link, add a mailbox (a failing then a correct password, each test step
shown), watch it go online without a reload, grant access, set a signature, offboard the owner
with a successor, import a CSV (dry run with row errors, then with progress), read the audit
log and the sync dashboard. Screenshots of each page land in tests/e2e/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import browser as support
from tests.support.browser import ConsoleStack, new_page, shot, sign_in
from tests.support.dovecot import Dovecot
from tests.support.smtpd import SmtpServer

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

console_stack = support.console_stack  # the fixtures
browser = support.browser

CSV = (
    "address,display_name,protocol,incoming_host,incoming_port,incoming_security,"
    "outgoing_host,outgoing_port,outgoing_security,owner_email\n"
    "sales@imported.example,Sales,imap,imap.imported.example,993,ssl,"
    "smtp.imported.example,465,ssl,rita@imported.example\n"
    "not-an-address,Broken,imap,imap.imported.example,993,ssl,smtp.imported.example,465,ssl,\n"
    "help@imported.example,Help desk,imap,imap.imported.example,993,ssl,"
    "smtp.imported.example,465,ssl,\n"
)


def fill_servers(page: Any, dovecot: Dovecot, smtpd: SmtpServer) -> None:
    page.locator("#incoming_protocol").select_option("imap")
    page.locator("#incoming_host").fill("127.0.0.1")
    page.locator("#incoming_port").fill(str(dovecot.imaps_port))
    page.locator("#incoming_security").select_option("ssl")
    page.locator("#outgoing_host").fill("localhost")
    page.locator("#outgoing_port").fill(str(smtpd.starttls_port))
    page.locator("#outgoing_security").select_option("starttls")


def test_admin_flow(
    console_stack: ConsoleStack,
    browser: Any,
    dovecot: Dovecot,
    smtpd: SmtpServer,
    tmp_path: Path,
) -> None:
    stack = console_stack
    user, password = dovecot.new_user("console")
    smtpd.add_user(user, password)
    address = f"{user}@acme.example"
    leaver = stack.employee("Lee Leaver")
    successor = stack.employee("Sam Successor")
    stack.employee("Gail Grantee")
    page = new_page(browser)

    sign_in(page, stack)
    assert page.get_by_role("heading", name="Mailboxes").is_visible()
    shot(page, "01-library")

    # --- add a mailbox: a wrong password first, each step's friendly result -------------------
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Add mailbox").click()
    page.get_by_label("Email address").fill(address)
    page.get_by_label("Password or app password").fill("wrong-password")
    page.get_by_label("Login name (optional)").fill(user)
    fill_servers(page, dovecot, smtpd)
    page.locator("#owner_id").select_option(leaver["id"])
    page.get_by_role("button", name="Test", exact=True).click()
    result = page.locator("#test-result")
    result.get_by_text("Connection failed").wait_for()
    failed = result.locator(".step-failed")
    assert failed.count() >= 1
    assert "Sign in" in failed.first.inner_text()
    assert result.locator(".step-ok").count() >= 3  # found, connected, secured, greeted
    shot(page, "02-add-mailbox-failed-test")

    page.get_by_label("Password or app password").fill(password)
    page.get_by_role("button", name="Test", exact=True).click()
    result.get_by_text("Connection works").wait_for()
    assert result.locator(".step-failed").count() == 0
    assert password not in page.content()  # never echoed back
    shot(page, "03-add-mailbox-test-ok")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(re.compile(r".*/console/mailboxes/[^/?#]+\?notice=added"))
    mailbox_id = page.url.split("/console/mailboxes/")[1].split("?")[0]
    assert page.get_by_role("heading", name=address).is_visible()

    # --- the library shows it going online without a reload -----------------------------------
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Mailboxes").click()
    page.evaluate("window.__sameDocument = true")
    status = page.locator(f"#st-{mailbox_id}")
    status.get_by_text("Online").wait_for(timeout=45_000)
    assert page.evaluate("window.__sameDocument === true")  # htmx swapped it in place
    row = page.get_by_role("row").filter(has_text=address)
    assert "Lee Leaver" in row.inner_text()
    shot(page, "04-library-online")

    # --- grant access, set a signature --------------------------------------------------------
    row.get_by_role("link", name=address).click()
    page.get_by_label("Person or department").select_option(
        label="Gail Grantee (gail.grantee@acme.example)"
    )
    page.get_by_label("Level", exact=True).select_option("send")
    page.get_by_role("button", name="Grant", exact=True).click()
    page.get_by_text("Access granted.").wait_for()
    people = page.locator("#people table")
    assert "Gail Grantee" in people.inner_text() and "Send" in people.inner_text()
    page.get_by_label("Signature (HTML)").fill(
        "<p><b>{employee.name}</b></p><script>alert(1)</script>"
    )
    page.get_by_role("button", name="Save signature").click()
    page.get_by_text("Signature saved.").wait_for()
    preview = page.frame_locator("iframe[title^='Preview of the default']")
    assert preview.locator("b").inner_text() == "{employee.name}"
    assert "<script" not in page.locator("iframe").first.get_attribute("srcdoc")  # sanitised
    shot(page, "05-mailbox-detail")

    # --- offboard the owner with a successor: the plan first, then the result -----------------
    page.get_by_role("navigation", name="Main").get_by_role("link", name="People").click()
    page.get_by_role("link", name="Lee Leaver").click()
    page.get_by_role("link", name="Offboard…").click()
    page.get_by_label(re.compile("^Successor")).select_option(successor["id"])
    page.get_by_label(re.compile("^Automatic reply")).fill("Lee has left; write to Sam.")
    page.get_by_role("button", name="Review what will happen").click()
    plan = page.locator(".plan")
    plan.wait_for()
    text = plan.inner_text()
    assert address in text and "handed over to Sam Successor" in text
    assert "Lee has left; write to Sam." in text
    recorded = plan.locator("details").text_content() or ""  # the registry's dry run
    assert "EmployeeOffboarded on Lee Leaver" in recorded
    assert f"MailboxHandedOver on {address}" in recorded
    shot(page, "06-offboard-review")
    page.get_by_role("button", name="Offboard Lee Leaver").click()
    page.get_by_role("heading", name="Lee Leaver is offboarded").wait_for()
    assert f"{address}: handed over to Sam Successor" in page.locator("main").inner_text()
    shot(page, "07-offboarded")

    # --- bulk import: dry run with per-row errors, then the import with progress --------------
    csv = tmp_path / "accounts.csv"
    csv.write_text(CSV)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Bulk import").click()
    page.get_by_label("CSV file").set_input_files(str(csv))
    page.get_by_role("button", name="Check (dry run)").click()
    report = page.locator("#import-result")
    report.get_by_text("Dry run: nothing was written").wait_for()
    counts = report.locator("dl").inner_text()
    assert re.search(r"Would be added\s+2", counts) and re.search(r"Errors\s+1", counts)
    errors = report.locator("tbody tr")
    assert errors.count() == 1
    assert re.match(r"3\s+not-an-address\s+address", errors.inner_text())  # row 3, its column
    shot(page, "08-import-dry-run")
    page.get_by_role("button", name="Import", exact=True).click()
    report.get_by_text("Import finished").wait_for()
    assert page.locator("#import-bar").evaluate("bar => bar.value === bar.max")
    counts = report.locator("dl").inner_text()
    assert re.search(r"Added\s+2", counts) and re.search(r"New people\s+1", counts)
    shot(page, "09-import-done")

    # --- the audit log: chain verified, the flow's events, filtered by mailbox ----------------
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    assert page.locator("#chain").get_by_text("Chain intact.").is_visible()
    body = page.locator("table").inner_text()
    for name in ("AccountAdded", "AccessGranted", "EmployeeOffboarded", "SignatureSet"):
        assert name in body, name
    page.get_by_label("Mailbox").select_option(label=address)
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r".*mailbox=.*"))
    filtered = page.locator("table").inner_text()
    assert "MailboxHandedOver" in filtered and "EmployeeAdded" not in filtered
    shot(page, "10-audit-log")

    # --- the sync dashboard --------------------------------------------------------------------
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sync").click()
    tiles = page.locator(".tiles").inner_text()
    assert "Online" in tiles
    assert (page.locator("svg[role=img] title").first.text_content() or "").startswith("Sync fail")
    shot(page, "11-sync-dashboard")
    assert page.js_errors == []
