"""Alert channels: the signed webhook, the email through the sender, and the sealed secrets.

Webhook: ``POST`` of the alert as JSON with

* ``Mailroom-Timestamp``: Unix seconds of this attempt,
* ``Mailroom-Signature: v1=<hex>``: HMAC-SHA256 with the rule's secret over
  ``<timestamp> "." <body>`` (receivers check it and refuse old timestamps),
* ``Mailroom-Alert-Id``: the same on every attempt (receivers deduplicate by it).

A 2xx answer is delivered; anything else, a timeout or a refused connection is retried.

Email: ``mailroom-rpc.sender.send`` (services/sender/rpc.py) from the rule's mailbox, with the
alert id as Idempotency-Key, so a retry after a lost answer sends nothing twice.

Secrets are sealed with AES-256-GCM (associated data: tenant and rule) under
``MAILROOM_SYNC_ALERT_KEY`` / ``..._KEY_FILE`` (embedded: a key file made on first start). They
never leave the service: not in events, answers or logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from libs.common.subjects import rpc_subject
from services.sync.settings import SyncSettings

log = logging.getLogger("mailroom.sync.alerts")
SEND_SUBJECT = rpc_subject("sender", "send")
KEY_FILE = "sync-alert.key"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does (tests, docs)."""
    return hmac.compare_digest(signature(secret, timestamp, body), header)


class SecretBox:
    """Seals webhook secrets at rest."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the alert key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_settings(cls, settings: SyncSettings, data_dir: Path) -> SecretBox:
        if settings.alert_key is not None:
            return cls(base64.b64decode(settings.alert_key.get_secret_value()))
        path = settings.alert_key_file or data_dir / KEY_FILE
        if not path.exists():
            log.warning(
                "no MAILROOM_SYNC_ALERT_KEY: generated %s (every sync worker needs the same key)",
                path,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(secrets.token_bytes(32)).decode())
        return cls(base64.b64decode(path.read_text().strip()))

    @staticmethod
    def _aad(tenant_id: str, rule_id: str) -> bytes:
        return f"mailroom-alert-webhook|{len(tenant_id)}:{tenant_id}|{rule_id}".encode()

    def seal(self, tenant_id: str, rule_id: str, secret: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, secret.encode(), self._aad(tenant_id, rule_id))

    def open(self, tenant_id: str, rule_id: str, blob: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], self._aad(tenant_id, rule_id))


@dataclass
class Outcome:
    ok: bool
    detail: str


async def post_webhook(
    url: str, secret: bytes, alert_id: str, body: bytes, *, timeout: float, verify: ssl.SSLContext
) -> Outcome:
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Mailroom-Alerts/1",
        "Mailroom-Alert-Id": alert_id,
        "Mailroom-Timestamp": timestamp,
        "Mailroom-Signature": signature(secret, timestamp, body),
    }
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=verify, follow_redirects=False) as c:
            r = await c.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(False, f"{type(exc).__name__}: {str(exc)[:200]}")
    if 200 <= r.status_code < 300:
        return Outcome(True, f"HTTP {r.status_code}")
    return Outcome(False, f"HTTP {r.status_code}")


async def send_email(
    nc: Any,
    *,
    tenant_id: str,
    mailbox_id: str,
    alert_id: str,
    to: list[str],
    subject: str,
    text: str,
    correlation_id: str | None,
    timeout: float,
) -> Outcome:
    request = {
        "tenant_id": tenant_id,
        "mailbox_id": mailbox_id,
        "idempotency_key": f"alert-{alert_id}",
        "service": "sync",
        "correlation_id": correlation_id,
        "wait": True,
        "message": {
            "to": [{"address": a} for a in to],
            "subject": subject,
            "text": text,
            "signature": {"mode": "none"},
            "save_sent_copy": False,
        },
    }
    try:
        msg = await nc.request(SEND_SUBJECT, json.dumps(request).encode(), timeout=timeout)
        reply = json.loads(msg.data)
    except Exception as exc:  # no sender, a timeout: retried with the same key
        return Outcome(False, f"sender: {type(exc).__name__}: {str(exc)[:200]}")
    if reply.get("ok"):
        send = reply.get("send") or {}
        return Outcome(True, f"send {send.get('id', '?')} {send.get('status', '')}".strip())
    err = reply.get("error") or {}
    return Outcome(False, f"sender: {err.get('code', 'error')}: {str(err.get('message'))[:200]}")
