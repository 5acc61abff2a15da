"""Canary over a full e2e run: `mailroom up` (DEBUG logs, OTel tracing) driven over HTTP.

Passwords planted through the API (accounts on a real Dovecot and aiosmtpd so that sync logs
in and the sender sends with leased secrets, a rotated credential, connection tests, a CSV
import, an offboarding, a key rotation, dead letters) must appear in no byte the system
produced: HTTP responses, stdout/stderr, the exported spans (raw OTLP bodies), every file of the
data dir (SQLite and WAL files, the embedded nats-server's JetStream store with the MAILROOM
and MAILROOM_DLQ streams) and the audit export — plain, base64 (every alignment) or
URL-encoded. The only place a secret may go is a lease reply on NATS, which is never stored.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.common.nats import connect
from libs.common.subjects import DLQ_STREAM, STREAM
from tests.integration.test_sync_support import FAST
from tests.support.dovecot import Dovecot
from tests.support.embedded import Up
from tests.support.otlp import Collector, collector
from tests.support.sending import SENDER_ENV
from tests.support.smtpd import SmtpServer
from tests.support.stack import wait_until

__all__ = ["collector"]  # the fixture
pytestmark = [pytest.mark.e2e, pytest.mark.connected]


# --- what a leak looks like --------------------------------------------------------------------
def canary(tag: str) -> str:
    """A password that changes under base64, URL, JSON and IMAP quoting (valid for IMAP and
    SMTP logins)."""
    return f'cAnArY{tag}{secrets.token_hex(8)}+/ &=?%~"\\x'


def forms(secret: str) -> list[bytes]:
    """Byte strings any copy of ``secret`` would contain: plain, its random core, URL-encoded,
    and base64 / URL-safe base64 at each of the three alignments inside a longer encoding."""
    raw = secret.encode()
    out = {raw, secret.split("+")[0][-16:].encode()}  # the hex core survives escaping
    out |= {urllib.parse.quote(secret, safe="").encode(), urllib.parse.quote_plus(secret).encode()}
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * pad + raw)
            start, end = -(-pad // 3) * 4, (pad + len(raw)) // 3 * 4
            out.add(text[start:end])
    return sorted(out)


def leaks(secret: str, blobs: dict[str, bytes]) -> list[str]:
    found = []
    for form in forms(secret):
        for where, data in blobs.items():
            at = data.find(form)
            if at >= 0:
                context = data[max(0, at - 120) : at + len(form) + 60]
                found.append(f"{form!r} in {where} at {at}: {context!r}")
    return found


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- the run -----------------------------------------------------------------------------------
def _env(mp: pytest.MonkeyPatch, dovecot: Dovecot, smtpd: SmtpServer, otlp: str) -> None:
    env = {
        **FAST,
        **SENDER_ENV,
        "MAILROOM_LOG_LEVEL": "DEBUG",
        "MAILROOM_OTEL_ENABLED": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "MAILROOM_SYNC_CA_FILE": str(dovecot.ca_path),
        "MAILROOM_SENDER_CA_FILE": str(smtpd.ca_path),
        "MAILROOM_REGISTRY_CA_FILE": str(dovecot.ca_path),
        "MAILROOM_REGISTRY_ALLOW_PRIVATE_TARGETS": "true",
        "MAILROOM_REGISTRY_LEASE_TTL_S": "31",  # sync and sender lease again after ~1 s
        "MAILROOM_CONSUMER_MAX_DELIVER": "2",
        "MAILROOM_CONSUMER_BACKOFF_S": "[0.1]",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    for k in ("MAILROOM_KEKS", "MAILROOM_KEKS_FILE"):
        mp.delenv(k, raising=False)


class Driver:
    """The HTTP client of the run: every response (status, headers, body) is kept."""

    def __init__(self, up: Up, dovecot: Dovecot, smtpd: SmtpServer) -> None:
        self.responses: list[bytes] = []
        self.dovecot, self.smtpd = dovecot, smtpd
        self.client = httpx.AsyncClient(
            base_url=up.base,
            headers={"Authorization": f"Bearer {up.token}"},
            timeout=30,
            event_hooks={"response": [self._keep]},
        )

    async def _keep(self, r: httpx.Response) -> None:
        await r.aread()
        head = f"{r.status_code} {r.request.method} {r.request.url}\n{r.headers}\n".encode()
        self.responses.append(head + r.content)

    async def call(self, method: str, url: str, expect: int | None = None, **kw: Any) -> Any:
        r = await self.client.request(method, url, **kw)
        if expect is not None:
            assert r.status_code == expect, f"{method} {url}: {r.status_code} {r.text[:500]}"
        return r.json() if r.content and "json" in r.headers.get("content-type", "") else r

    def servers(self) -> dict[str, Any]:
        d, s = self.dovecot, self.smtpd
        return {
            "protocol": "imap",
            "incoming": {"host": d.host, "port": d.imap_port, "security": "starttls"},
            "outgoing": {"host": "127.0.0.1", "port": s.starttls_port, "security": "starttls"},
            "polling_interval_s": 30,
        }

    async def state(self, account: str, want: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            doc = await self.call("GET", f"/v1/sync/mailboxes/{account}")
            ok = isinstance(doc, dict) and doc.get("status", {}).get("state") == want
            return doc if ok else None

        doc = await wait_until(check, timeout=20, interval=0.2)
        assert doc is not None
        return doc

    async def send(self, mailbox: str, key: str, want: int = 201) -> dict[str, Any]:
        """Send as the admin (once authz and the sender know the mailbox)."""
        body = {"to": ["rcpt@canary.example.com"], "subject": "canary", "text": "hello"}
        url = f"/v1/mailboxes/{mailbox}/messages"

        async def sent() -> dict[str, Any] | None:
            r = await self.client.post(url, json=body, headers={"Idempotency-Key": key})
            return dict(r.json()) if r.status_code == want else None

        doc = await wait_until(sent, timeout=15, interval=0.2)
        assert doc is not None
        return doc

    async def delivered(self, n: int) -> None:
        await wait_until(lambda: _true(len(self.smtpd.messages) >= n), timeout=20, interval=0.1)


async def _true(value: bool) -> bool:
    return value


def import_csv(d: Driver, user: str, pw: str) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["address", "username", "password", "display_name", "protocol", "incoming_host",
                "incoming_port", "incoming_security", "incoming_protocol", "outgoing_host",
                "outgoing_port", "outgoing_security", "owner_email"])  # fmt: skip
    inc = ["imap", d.dovecot.host, d.dovecot.imap_port, "starttls", "imap"]
    out = ["127.0.0.1", d.smtpd.starttls_port, "starttls"]
    w.writerow(
        ["csv1@canary.example.com", user, pw, "Imported", *inc, *out, "carol@canary.example.com"]
    )
    w.writerow(["csv2@canary.example.com", user, pw, "=HYPERLINK(1)", *inc, *out, ""])  # formula
    bad_port = ["imap", d.dovecot.host, "99999", *inc[3:]]
    w.writerow(["csv3@canary.example.com", user, pw, "Bad port", *bad_port, *out, ""])
    w.writerow(["csv1@canary.example.com", user, pw, "Duplicate", *inc, *out, ""])
    w.writerow(["csv4@canary.example.com", "nobody", pw, "Wrong login", *inc, *out, ""])
    return buf.getvalue().encode()


async def test_canaries_leak_nowhere_in_a_full_run(
    up: Up,
    dovecot: Dovecot,
    smtpd: SmtpServer,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = time.monotonic()
    pw = {k: canary(k) for k in ("add", "rot", "csv", "bad", "tst", "new")}
    user, _ = dovecot.new_user("canary")
    dovecot.set_password(user, pw["add"])
    smtpd.add_user(user, pw["add"])
    wrong_user, _ = dovecot.new_user("canarywrong")  # its real password is not pw["bad"]
    csv_user, _ = dovecot.new_user("canarycsv")
    dovecot.set_password(csv_user, pw["csv"])
    smtpd.add_user(csv_user, pw["csv"])
    _env(monkeypatch, dovecot, smtpd, collector.url)
    up.start()
    d = Driver(up, dovecot, smtpd)
    nats_url = (up.data_dir / "nats.url").read_text()
    try:
        account = await drive(d, user, wrong_user, csv_user, pw, nats_url)
    finally:
        await d.client.aclose()
        proc = up.proc
        assert up.stop() == 0
    assert proc is not None and proc.stdout is not None
    stdout = proc.stdout.read().encode()
    await asyncio.sleep(0.5)  # the last OTLP export (at exit) has arrived

    names = collector.span_names()
    assert "mailroom-rpc.registry.lease process" in names, sorted(set(names))
    assert any(n.endswith("CredentialRotated publish") for n in names)
    assert any(n.startswith("POST /v1/accounts/import") for n in names)
    data = files_under(up.data_dir)
    assert any(p.endswith("registry.db") for p in data) and any("MAILROOM_DLQ" in p for p in data)
    assert any("streams/MAILROOM/" in p for p in data)
    dlq = b"".join(v for k, v in data.items() if "MAILROOM_DLQ" in k)
    assert account.encode() in dlq  # the store is plain bytes: a leak there would be seen
    log = data["up.log"].decode(errors="replace")
    assert '"level": "debug", "logger": "mailroom.consumer"' in log, log[-2000:]
    blobs: dict[str, bytes] = {f"data/{k}": v for k, v in data.items()}
    blobs["stdout"] = stdout
    blobs |= {f"response {i}": r for i, r in enumerate(d.responses)}
    blobs |= {f"otlp body {i}": b for i, b in enumerate(collector.bodies)}
    assert len(d.responses) > 40 and len(collector.bodies) > 0
    auth_plain = base64.b64encode(b"\0user\0" + pw["add"].encode())  # the scan sees this
    assert leaks(pw["add"], {"x": b"AUTH PLAIN " + auth_plain})
    found = [hit for secret in pw.values() for hit in leaks(secret, blobs)]
    assert not found, "\n".join(found[:20])
    assert time.monotonic() - started < 90


async def drive(
    d: Driver, user: str, wrong_user: str, csv_user: str, pw: dict[str, str], nats_url: str
) -> str:
    alice = (await d.call("POST", "/v1/employees", 201, json=_person("alice")))["id"]
    bob = (await d.call("POST", "/v1/employees", 201, json=_person("bob")))["id"]
    body = {
        **d.servers(),
        "address": "alice@canary.example.com",
        "username": user,
        "owner_id": alice,
    }
    key = {"Idempotency-Key": "canary-add"}
    first = {**body, "password": pw["add"]}
    a = (await d.call("POST", "/v1/accounts", 201, json=first, headers=key))["id"]
    await d.call("POST", "/v1/accounts", json={**body, "password": pw["add"]}, headers=key)
    await d.call("POST", "/v1/accounts", 409, json={**body, "password": pw["add"]})
    await d.call("POST", "/v1/accounts", 422, json={**body, "password": pw["add"], "x": 1})
    bad = {**d.servers(), "address": "w@canary.example.com", "username": wrong_user}
    w = (await d.call("POST", "/v1/accounts", 201, json={**bad, "password": pw["bad"]}))["id"]
    await d.state(a, "online")
    await d.state(w, "auth_failed")
    replay = await d.call(
        "POST", "/v1/accounts", 201, json={**first, "password": pw["bad"]}, headers=key
    )
    assert replay["id"] == a  # the fingerprint leaves the secret out, by design
    await d.call("PATCH", f"/v1/accounts/{a}", 422, json={"password": pw["bad"]})
    refused = await d.send(w, "sw", want=502)
    assert refused["error"]["code"] == "auth_failed"  # its SMTP login is refused

    await d.send(a, "s1")
    await d.delivered(1)
    dovecot_rotate(d, user, pw["rot"])
    await d.call("PUT", f"/v1/accounts/{a}/credential", 200, json={"password": pw["rot"]})
    await d.call("PUT", f"/v1/accounts/{a}/credential", 422, json={"password": pw["rot"], "y": 2})
    sent = await d.send(a, "s2")
    await d.delivered(2)
    await d.call("GET", f"/v1/mailboxes/{a}/messages/{sent['id']}")
    await d.call("POST", f"/v1/accounts/{a}/sync", 202)

    report = await d.call("POST", f"/v1/accounts/{a}/test", 200)
    assert report["ok"] is True, report
    report = await d.call("POST", f"/v1/accounts/{a}/test", 200, json={"password": pw["tst"]})
    assert report["ok"] is False
    probe = {**body, "address": "probe@canary.example.com", "owner_id": None, "password": pw["tst"]}
    await d.call("POST", "/v1/accounts/test", 200, json=probe)
    await d.call("POST", "/v1/accounts/test", 422, json={**probe, "incoming": {"port": pw["tst"]}})

    csv_body = import_csv(d, csv_user, pw["csv"])
    hdr = {"Content-Type": "text/csv"}
    tested = {"test_connections": "true"}
    dry = await d.call(
        "POST",
        "/v1/accounts/import",
        200,
        content=csv_body,
        headers=hdr,
        params={**tested, "dry_run": "true"},
    )
    assert dry["errors"] >= 3, dry
    ndjson = {**hdr, "Accept": "application/x-ndjson"}
    stream = await d.client.post(
        "/v1/accounts/import", content=csv_body, params=tested, headers=ndjson
    )
    assert stream.status_code == 200, stream.text
    again = await d.call("POST", "/v1/accounts/import", 200, content=csv_body, headers=hdr)
    assert again["unchanged"] == 1, again
    imported = next(r for r in again["rows"] if r["status"] == "unchanged")["account_id"]
    await d.state(imported, "online")

    off = await d.call("POST", f"/v1/employees/{alice}/offboard", 200, json={"successor_id": bob})
    assert off["changed"] is True
    await d.call("GET", f"/v1/employees/{alice}/offboarding", 200)
    await d.call("POST", "/v1/admin/keys/retire", 409, json={"version": 1})
    await d.call("POST", "/v1/admin/keys/rotate", 200)
    await d.call("POST", "/v1/admin/keys/retire", 200, json={"version": 1})
    await d.call("PUT", f"/v1/accounts/{a}/credential", 200, json={"password": pw["new"]})
    await d.call("POST", f"/v1/accounts/{w}/disable", 200)
    await d.call("DELETE", f"/v1/accounts/{w}")
    await dead_letters(nats_url, a)

    for path in ("/v1/accounts", f"/v1/accounts/{a}", "/v1/sync/status",
                 f"/v1/sync/mailboxes/{a}/history", "/v1/admin/keys", "/v1/employees",
                 f"/v1/mailboxes/{a}/access", "/metrics", "/openapi.json"):  # fmt: skip
        await d.call("GET", path)
    await settled_audit(d)
    await d.call("GET", "/v1/audit/events", params={"limit": 500})
    export = await d.client.get("/v1/audit/export")
    assert export.status_code == 200 and export.content.count(b"\n") > 30
    assert b"CredentialRotated" in export.content and b"CredentialAccessed" in export.content
    return str(a)


def _person(name: str) -> dict[str, str]:
    return {"name": name, "email": f"{name}@canary.example.com"}


def dovecot_rotate(d: Driver, user: str, password: str) -> None:
    d.dovecot.set_password(user, password)
    d.smtpd.set_password(user, password)


async def dead_letters(nats_url: str, account: str) -> None:
    """A real event of the canary account republished under another tenant, and garbage:
    both dead-lettered by every consumer that reads them."""
    nc = await connect(nats_url, name="canary-dlq")
    try:
        js = nc.jetstream()
        subject = f"mailroom.demo.registry.account.{account}.>"
        sub = await js.subscribe(subject, stream=STREAM, ordered_consumer=True)
        msg = await sub.next_msg(timeout=5)
        await sub.unsubscribe()
        subject = msg.subject.replace("mailroom.demo.", "mailroom.other.")
        headers = {**(msg.headers or {}), "Nats-Msg-Id": f"canary-dlq-{account}"}
        await js.publish(subject, msg.data, headers=headers)
        await js.publish(msg.subject, b"\xffnot json{", headers={**headers, "Nats-Msg-Id": "g1"})

        async def dead() -> bool:
            return int((await js.stream_info(DLQ_STREAM)).state.messages or 0) >= 2

        await wait_until(dead, timeout=15, interval=0.1)
    finally:
        await nc.close()


async def settled_audit(d: Driver) -> None:
    """Wait until the audit trail stops growing (every event of the run is stored)."""
    last = {"n": -1, "since": time.monotonic()}

    async def check() -> bool:
        n = (await d.call("GET", "/v1/audit/verify"))["checked"]
        if n != last["n"]:
            last.update(n=n, since=time.monotonic())
        return time.monotonic() - last["since"] > 1.5

    await wait_until(check, timeout=20, interval=0.3)
    assert last["n"] > 30
