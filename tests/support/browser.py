"""Headless Chromium (Debian's ``chromium``) driven by Playwright, and the console's stack.

Playwright is pointed at ``/usr/bin/chromium`` (``.ci/install-debian-deps.sh`` installs it);
``playwright install`` is never needed. Missing chromium or playwright skips, or fails under
``CI=true``. Screenshots go to ``tests/e2e/screenshots/`` (CI artifacts, not committed).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.common.auth import TokenIssuer, load_or_create_key
from tests.support.embedded import Up
from tests.support.infra import unavailable
from tests.support.tlsca import session_pki

CHROMIUM = os.environ.get("MAILROOM_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parents[1] / "e2e" / "screenshots"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}


def require_browser() -> None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        unavailable(f"{CHROMIUM} missing: run `.ci/install-debian-deps.sh` (installs chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is missing: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield b
        finally:
            b.close()


def new_page(browser: Any, viewport: dict[str, int] = LAPTOP) -> Any:
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if msg.type == "error" else None,
    )
    page.js_errors = errors
    return page


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class ConsoleStack(Up):
    """``mailroom up`` whose registry, sync and sender trust the test CA and may reach the
    loopback Dovecot (as an organisation's own private servers would be)."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir)
        self.extra_env = extra_env or {}

    def start(self) -> None:
        env = {
            "MAILROOM_REGISTRY_ALLOW_PRIVATE_TARGETS": "true",
            "MAILROOM_REGISTRY_CONNECT_TIMEOUT_S": "5",
            "MAILROOM_REGISTRY_CA_FILE": str(session_pki().ca_path),
            "MAILROOM_SYNC_CA_FILE": str(session_pki().ca_path),
            "MAILROOM_SENDER_CA_FILE": str(session_pki().ca_path),
            "MAILROOM_SYNC_STARTUP_SPREAD_S": "0",
            "MAILROOM_CONSOLE_STATUS_POLL_S": "1",
            **self.extra_env,
        }
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            super().start()

    @property
    def console(self) -> str:
        return f"{self.base}/console/"

    def api(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=30,
        )

    def employee(self, name: str) -> dict[str, Any]:
        email = re.sub(r"[^a-z]+", ".", name.lower()).strip(".") + "@acme.example"
        with self.api() as c:
            r = c.post("/v1/employees", json={"name": name, "email": email})
            assert r.status_code == 201, r.text
            return dict(r.json())

    def mailbox(self, address: str, owner_id: str, **extra: Any) -> str:
        """A mailbox (IMAP/SMTP settings that are never dialled) owned by ``owner_id``."""
        body = {
            "address": address,
            "protocol": "imap",
            "incoming": {"host": "imap.acme.example", "port": 993, "security": "ssl"},
            "outgoing": {"host": "smtp.acme.example", "port": 465, "security": "ssl"},
            "owner_id": owner_id,
            **extra,
        }
        with self.api() as c:
            r = c.post("/v1/accounts", json=body)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

    def token_for(self, employee_id: str) -> str:
        """An employee's token, signed with the running stack's local key."""
        key = load_or_create_key(self.data_dir / "auth_ed25519.pem")
        return TokenIssuer(key).issue("demo", employee_id, "employee")


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    data = tmp_path_factory.mktemp("console") / "data"
    data.mkdir()
    stack = ConsoleStack(data)
    stack.start()
    try:
        yield stack
    finally:
        if stack.proc is not None:
            stack.stop()


def sign_in(page: Any, stack: ConsoleStack, token: str | None = None) -> None:
    """The sign-in link ``mailroom up`` prints: the token fills the field from the fragment."""
    page.goto(f"{stack.base}/console/signin#token={token or stack.token}")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/console/(\?.*)?$"))


A11Y_CHECK = """
() => {
  const problems = [];
  const text = (el) => (el ? el.textContent : '') || '';
  const name = (el) => {
    if (el.getAttribute('aria-label')) return el.getAttribute('aria-label');
    const by = el.getAttribute('aria-labelledby');
    if (by) return by.split(/\\s+/).map(id => text(document.getElementById(id))).join(' ');
    if (el.id) {
      const label = document.querySelector(`label[for="${CSS.escape(el.id)}"]`);
      if (label) return text(label);
    }
    return text(el.closest('label')) || el.title || '';
  };
  const all = (sel, fn) => document.querySelectorAll(sel).forEach(fn);
  if (!document.documentElement.lang) problems.push('html has no lang');
  if (!document.title.trim()) problems.push('page has no title');
  if (document.querySelectorAll('main').length !== 1) problems.push('not one main landmark');
  if (!document.querySelector('h1')) problems.push('no h1');
  all('nav', n => { if (!n.getAttribute('aria-label')) problems.push('nav without a label'); });
  all('input, select, textarea', el => {
    if (el.type === 'hidden' || el.type === 'submit' || el.closest('[hidden]')) return;
    if (!name(el).trim()) problems.push(`no label: ${el.outerHTML.slice(0, 80)}`);
  });
  all('button, a[href]', el => {
    const label = text(el).trim() || el.getAttribute('aria-label') || el.title;
    if (!label) problems.push(`no accessible name: ${el.outerHTML.slice(0, 80)}`);
  });
  all('img', el => { if (!el.hasAttribute('alt')) problems.push('img without alt'); });
  all('iframe', el => { if (!el.title) problems.push('iframe without title'); });
  all('[tabindex]', el => {
    if (+el.getAttribute('tabindex') > 0) problems.push('positive tabindex');
  });
  const ids = {};
  all('[id]', el => { ids[el.id] = (ids[el.id] || 0) + 1; });
  Object.entries(ids).forEach(([id, n]) => { if (n > 1) problems.push(`duplicate id ${id}`); });
  const levels = [...document.querySelectorAll('h1,h2,h3,h4')].map(h => +h.tagName[1]);
  levels.forEach((lvl, i) => {
    if (i && lvl > levels[i - 1] + 1) problems.push(`heading h${levels[i - 1]} -> h${lvl}`);
  });
  return problems;
}
"""


def a11y_problems(page: Any) -> list[str]:
    """An axe-like smoke check: labels, names, landmarks, headings, unique ids."""
    return list(page.evaluate(A11Y_CHECK))


def horizontal_overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than the viewport (0: no sideways scrolling)."""
    return int(
        page.evaluate(
            "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
            " - window.innerWidth"
        )
    )
