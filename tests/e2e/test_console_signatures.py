"""The signature editor in headless Chromium against `mailroom up`: write a signature with the
toolbar (mouse and keyboard alone), see the live preview fill the placeholders and render the
bold as the registry sanitised it, save, reload and find it stored; without JavaScript the
plain HTML field still saves, previews, and an alternate can be made the default.
Screenshots land in tests/e2e/screenshots/."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.test_console_http import csrf, signed_in
from tests.support import browser as support
from tests.support.browser import ConsoleStack, a11y_problems, new_page, shot, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

console_stack = support.console_stack  # the fixtures
browser = support.browser


def stored(stack: ConsoleStack, mailbox_id: str, name: str = "default") -> dict[str, Any]:
    with stack.api() as api:
        r = api.get(f"/v1/accounts/{mailbox_id}/signatures/{name}")
        assert r.status_code == 200, r.text
        return dict(r.json())


def mailbox_page(
    stack: ConsoleStack, browser: Any, owner: str, local: str, display: str
) -> tuple[Any, str]:
    """A signed-in page on a new mailbox ``<local>@acme.example`` of a new employee."""
    employee = stack.employee(owner)
    mailbox_id = stack.mailbox(f"{local}@acme.example", employee["id"], display_name=display)
    page = new_page(browser)
    sign_in(page, stack)
    page.goto(f"{stack.base}/console/mailboxes/{mailbox_id}")
    return page, mailbox_id


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\xa0", " ")).strip()


def test_rich_text_editor_with_live_preview(console_stack: ConsoleStack, browser: Any) -> None:
    from playwright.sync_api import expect

    stack = console_stack
    page, mailbox_id = mailbox_page(stack, browser, "Ada Lovelace", "sales", "Acme Sales")

    editor = page.get_by_role("textbox", name="Signature", exact=True)
    toolbar = page.get_by_role("toolbar", name="Formatting")
    bold = toolbar.get_by_role("button", name="Bold")
    expect(editor).to_be_visible()
    assert a11y_problems(page) == []

    # --- mouse: Bold, type, a placeholder from the menu ---------------------------------------
    editor.click()
    bold.click()
    expect(bold).to_have_attribute("aria-pressed", "true")
    page.keyboard.type("Best, ")
    menu_button = toolbar.get_by_role("button", name="Insert placeholder")
    menu_button.click()
    expect(menu_button).to_have_attribute("aria-expanded", "true")
    page.get_by_role("menuitem", name=re.compile(r"^Employee name")).click()
    expect(page.get_by_role("menu")).to_be_hidden()
    source = page.get_by_label("Signature (HTML)")
    expect(source).to_have_value(re.compile(r"<b>Best,(\s|&nbsp;)\{employee\.name\}</b>"))

    # --- keyboard alone: a new line, then the toolbar's menu by arrow keys ---------------------
    page.keyboard.press("Enter")
    page.keyboard.press("Shift+Tab")  # the toolbar: one Tab stop (Bold)
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Bold"
    page.keyboard.press("End")  # the last toolbar button: the placeholder menu
    assert page.evaluate("document.activeElement.id") == "sig-ph-button"
    page.keyboard.press("ArrowUp")  # opens the menu on its last item
    focused = page.evaluate("document.activeElement.getAttribute('data-placeholder')")
    assert focused == "mailbox.display_name"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "sig-editor"  # back to writing
    expect(editor).to_contain_text("{mailbox.display_name}")

    # --- the live preview: the registry's rendering, placeholders filled ----------------------
    preview = page.frame_locator("iframe[title^='Live preview']")
    expect(preview.locator("b").first).to_have_text(re.compile(r"^Best,\s+Ada Lovelace$"))
    text = page.locator("[data-sig-text]")
    expect(text).to_have_text(re.compile(r"^Best,\s+Ada Lovelace\s*\nAcme Sales$"))
    assert "as for Ada Lovelace" in page.locator("#sig-preview").inner_text()
    shot(page, "signature-editor-live-preview")

    # --- a draft the registry refuses shows why, in place -------------------------------------
    page.keyboard.type(" {employee.nmae}")
    expect(page.locator("[data-sig-problem]")).to_contain_text("unknown placeholder")
    for _ in range(len(" {employee.nmae}")):
        page.keyboard.press("Backspace")
    expect(preview.locator("b").first).to_have_text(re.compile(r"^Best,\s+Ada Lovelace$"))

    # --- save, reload: stored as written ------------------------------------------------------
    page.get_by_role("button", name="Save signature").click()
    page.get_by_text("Signature saved.").wait_for()
    saved = stored(stack, mailbox_id)
    assert re.search(r"<b>Best,(\s|&nbsp;)\{employee\.name\}</b>", saved["html"]), saved
    assert flat(saved["text"]) == "Best, {employee.name} {mailbox.display_name}"
    page.reload()
    listed = page.frame_locator("iframe[title='Preview of the default signature']")
    expect(listed.locator("b").first).to_have_text(re.compile(r"^Best,\s+\{employee\.name\}$"))
    expect(editor).to_contain_text("{mailbox.display_name}")
    assert "<b>" in editor.inner_html()
    expect(text).to_have_text(re.compile(r"^Best,\s+Ada Lovelace"))  # previewed on load
    shot(page, "signature-editor-saved")

    # --- an alternate loads into the editor with its name ------------------------------------
    with stack.api() as api:
        alt = {"html": "<i>Sales team</i>"}
        assert api.put(f"/v1/accounts/{mailbox_id}/signatures/team", json=alt).status_code == 200
    page.reload()
    page.get_by_role("button", name="Edit the team signature").click()
    expect(page.get_by_label("Save as")).to_have_value("team")
    expect(editor).to_have_text("Sales team")
    expect(text).to_have_text("Sales team")
    assert page.js_errors == []
    page.context.close()


def test_a_placeholder_goes_where_the_caret_is_when_focus_leaves_at_once(
    console_stack: ConsoleStack, browser: Any
) -> None:
    """A new line, then straight to the toolbar before the browser's (queued) selectionchange
    runs: the placeholder still goes on the new line. Chromium may drop the editor's selection
    when focus moves to a button; here that is done in the same task, so the race that once
    failed this file's first test is not left to timing."""
    from playwright.sync_api import expect

    page, _ = mailbox_page(console_stack, browser, "Grace Hopper", "ops", "Acme Ops")
    editor = page.get_by_role("textbox", name="Signature", exact=True)
    editor.click()
    page.keyboard.type("Regards")
    expect(page.get_by_label("Signature (HTML)")).to_have_value("Regards")
    page.evaluate(
        """() => {
            document.execCommand("insertParagraph");  // Enter
            document.querySelector("#sig-ph-button").focus();  // Shift+Tab, End: same task
            window.getSelection().removeAllRanges();
        }"""
    )
    page.keyboard.press("ArrowUp")  # the menu, on its last item
    page.keyboard.press("Enter")
    expect(editor).to_contain_text("{mailbox.display_name}")
    expect(page.locator("[data-sig-text]")).to_have_text(re.compile(r"^Regards\s*\nAcme Ops$"))
    assert page.js_errors == []
    page.context.close()


def test_without_javascript_the_html_field_saves(console_stack: ConsoleStack, browser: Any) -> None:
    stack = console_stack
    owner = stack.employee("Nora Noscript")
    mailbox_id = stack.mailbox("plain@acme.example", owner["id"], display_name="Acme Sales")
    context = browser.new_context(java_script_enabled=False)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(f"{stack.base}/console/signin")
    page.get_by_label("Access token").fill(stack.token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/console/(\?.*)?$"))
    page.goto(f"{stack.base}/console/mailboxes/{mailbox_id}")
    assert not page.get_by_role("toolbar", name="Formatting").is_visible()  # the editor needs JS

    page.get_by_label("Save as").fill("short")
    page.get_by_label("Signature (HTML)").fill(
        '<i>{employee.name}</i> <img src="https://tracker.example/p.gif"> {mailbox.address}'
    )
    page.get_by_role("button", name="Preview", exact=True).click()
    page.get_by_role("heading", name="Signature preview").wait_for()
    assert "signature of plain@acme.example" in page.locator("main").inner_text()
    assert flat(page.locator("[data-sig-text]").inner_text()) == "Nora Noscript plain@acme.example"
    removed = page.locator(".sig-removed").inner_text()
    assert "src on <img>" in removed
    shot(page, "signature-preview-no-js")
    page.get_by_role("button", name="Save signature").click()  # saved from the preview page
    page.get_by_text("Signature saved.").wait_for()
    short = stored(stack, mailbox_id, "short")
    assert short["html"] == "<i>{employee.name}</i> <img> {mailbox.address}"

    page.get_by_role("button", name="Make default: short").click()
    page.get_by_text("Signature saved.").wait_for()
    assert stored(stack, mailbox_id)["html"] == short["html"]  # the default is now a copy
    assert stored(stack, mailbox_id, "short")["html"] == short["html"]  # the alternate stays
    default = page.frame_locator("iframe[title='Preview of the default signature']")
    assert default.locator("i").inner_text() == "{employee.name}"
    shot(page, "signature-no-js-saved")
    context.close()


def test_console_preview_route_is_csrf_checked_and_shows_refusals_in_place(
    console_stack: ConsoleStack,
) -> None:
    stack = console_stack
    owner = stack.employee("Hank Http")
    mailbox_id = stack.mailbox("http@acme.example", owner["id"], display_name="Acme Sales")
    base = f"/console/mailboxes/{mailbox_id}/signatures"
    with signed_in(stack) as c:
        for path in (f"{base}/preview", f"{base}/make-default"):
            assert c.post(path, data={"html": "<b>x</b>", "name": "x"}).status_code == 403, path
        token, htmx = csrf(c), {"HX-Request": "true"}
        r = c.post(f"{base}/preview", data={"csrf_token": token, "html": ""}, headers=htmx)
        assert r.status_code == 200 and "Type a signature" in r.text and "<html" not in r.text
        draft = {"csrf_token": token, "html": "<b onclick='x()'>{employee.name}</b>"}
        r = c.post(f"{base}/preview", data=draft, headers=htmx)
        assert r.status_code == 200 and "&lt;b&gt;Hank Http&lt;/b&gt;" in r.text  # in srcdoc
        assert "onclick" in r.text.split("Removed when saved")[1]  # listed, not rendered
        assert 'hx-swap-oob="innerHTML"' in r.text
        bad = {"csrf_token": token, "html": "{employee.nmae}"}
        r = c.post(f"{base}/preview", data=bad, headers=htmx)
        assert r.status_code == 200 and "data-sig-problem" in r.text and "nmae" in r.text
        r = c.post(f"{base}/preview", data={**bad, "html": "x" * 20_001}, headers=htmx)
        assert r.status_code == 200 and "longer than" in r.text
        r = c.post(f"{base}/make-default", data={"csrf_token": token, "name": "default"})
        assert r.status_code == 422
        r = c.post(f"{base}/make-default", data={"csrf_token": token, "name": "missing"})
        assert r.status_code == 404
        with stack.api() as api:
            assert api.get(f"/v1/accounts/{mailbox_id}/signatures").json()["items"] == []
