"""A small pool of authenticated SMTP sessions, so consecutive sends of one mailbox skip the
connect, TLS handshake, EHLO, STARTTLS, AUTH and QUIT of a new connection.

Sessions are keyed by (tenant, mailbox, server, EHLO name, credential): a session is only ever
reused for the mailbox, server and exact credential it authenticated with. The credential is
kept as a keyed digest (a random per-pool key), never in plain text. The credential is still
fetched before every send, so a revoked lease or disabled mailbox refuses the send as before; a
rotated credential (another secret, username or auth mode) or a changed account (another server)
gives a new key, and the mailbox's sessions under the old key are closed at once.

Only sessions whose transaction ended cleanly (the server's 250 to the end of DATA) come back to
the pool; RFC 5321 §4.1.1.4 resets the transaction there, so the next MAIL needs no RSET. Any
failure closes the session. A returned session is kept at most ``idle_s`` idle, used for at most
``max_uses`` messages and ``max_age_s`` seconds (servers limit messages per connection), with at
most ``per_key`` idle sessions per mailbox and ``max_idle`` in all. A session the server closed
while idle is noticed on checkout (aiosmtplib closes the client when the connection is lost);
one that died silently fails its MAIL, which ``smtp.deliver`` treats as "stale": nothing was
accepted, so the message goes over a fresh connection in the same attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib

from libs.common.events.registry import Server
from services.sender.settings import SenderSettings


@dataclass(frozen=True, slots=True)
class PoolKey:
    tenant_id: str
    mailbox_id: str
    host: str
    port: int
    security: str
    ehlo_name: str
    credential: str
    """Keyed digest of username, secret and auth mode ("" when the server needs no AUTH)."""

    @property
    def owner(self) -> tuple[str, str]:
        return (self.tenant_id, self.mailbox_id)


@dataclass(slots=True)
class Session:
    client: aiosmtplib.SMTP
    opened: float = field(default_factory=time.monotonic)
    uses: int = 0
    idle_since: float = 0.0


@dataclass(slots=True)
class PoolStats:
    opened: int = 0
    """New authenticated connections (each one AUTHs once)."""
    reused: int = 0
    """Sends that went over a pooled session."""
    stale: int = 0
    """Pooled sessions found dead at MAIL (the send went over a fresh connection)."""
    retired: int = 0
    """Sessions closed by the pool (idle, too old, over the caps, key changed)."""


class SmtpPool:
    def __init__(
        self,
        *,
        per_key: int = 8,
        idle_s: float = 15.0,
        max_uses: int = 100,
        max_age_s: float = 300.0,
        max_idle: int = 256,
    ) -> None:
        self.per_key = per_key
        self.idle_s = idle_s
        self.max_uses = max_uses
        self.max_age_s = max_age_s
        self.max_idle = max_idle
        self.stats = PoolStats()
        self._salt = os.urandom(32)
        self._idle: dict[PoolKey, list[Session]] = {}
        self._current: dict[tuple[str, str], PoolKey] = {}
        self._count = 0
        self._quitting: set[asyncio.Task[Any]] = set()

    @classmethod
    def configured(cls, config: SenderSettings) -> SmtpPool:
        return cls(
            per_key=config.smtp_pool_per_mailbox,
            idle_s=config.smtp_pool_idle_s,
            max_uses=config.smtp_pool_max_uses,
        )

    @property
    def enabled(self) -> bool:
        return self.per_key > 0

    @property
    def idle(self) -> int:
        return self._count

    def key(
        self,
        tenant_id: str,
        mailbox_id: str,
        server: Server,
        ehlo_name: str,
        username: str | None,
        secret: str | None,
        auth_mode: str | None,
    ) -> PoolKey:
        digest = ""
        if username is not None:
            material = "\0".join((username, secret or "", auth_mode or "")).encode()
            digest = hmac.new(self._salt, material, hashlib.sha256).hexdigest()
        return PoolKey(
            tenant_id, mailbox_id, server.host, server.port, server.security, ehlo_name, digest
        )

    # --- checkout / checkin ---------------------------------------------------------------
    def take(self, key: PoolKey) -> Session | None:
        """A live idle session for ``key`` (most recently used first), or None."""
        if not self.enabled:
            return None
        old = self._current.get(key.owner)
        if old is not None and old != key:  # rotated credential or changed account
            self._drop(old)
        self._current[key.owner] = key
        sessions = self._idle.get(key)
        now = time.monotonic()
        while sessions:
            session = sessions.pop()
            self._count -= 1
            if self._fresh(session, now):
                self.stats.reused += 1
                return session
            self._retire(session)
        self._idle.pop(key, None)
        return None

    def give(self, key: PoolKey, session: Session) -> None:
        """A session whose transaction ended with the server's 250: keep it or close it."""
        session.uses += 1
        now = session.idle_since = time.monotonic()
        if (
            self._current.get(key.owner) != key  # rotated or changed meanwhile
            or not self._fresh(session, now)
            or session.uses >= self.max_uses
            or len(self._idle.get(key, ())) >= self.per_key
            or self._count >= self.max_idle
        ):
            self._retire(session)
            return
        self._idle.setdefault(key, []).append(session)
        self._count += 1

    def opened(self, client: aiosmtplib.SMTP) -> Session:
        self.stats.opened += 1
        return Session(client)

    def _fresh(self, session: Session, now: float) -> bool:
        return (
            session.client.is_connected
            and now - session.opened < self.max_age_s
            and now - session.idle_since < self.idle_s
        )

    # --- closing --------------------------------------------------------------------------
    def invalidate(self, tenant_id: str, mailbox_id: str) -> int:
        """Close the mailbox's idle sessions (e.g. its credential was refused)."""
        key = self._current.pop((tenant_id, mailbox_id), None)
        return self._drop(key) if key is not None else 0

    def sweep(self) -> int:
        """Close sessions idle for longer than ``idle_s`` (or dead); return how many."""
        now = time.monotonic()
        closed = 0
        for key in list(self._idle):
            sessions = self._idle[key]
            keep = [s for s in sessions if self._fresh(s, now)]
            if len(keep) == len(sessions):
                continue
            for s in sessions:
                if s not in keep:
                    self._retire(s)
                    closed += 1
            self._count -= len(sessions) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    async def close(self) -> None:
        """Close every idle session (QUIT, briefly waited for)."""
        for key in list(self._idle):
            self._drop(key)
        self._current.clear()
        if self._quitting:
            await asyncio.gather(*self._quitting, return_exceptions=True)

    def _drop(self, key: PoolKey) -> int:
        sessions = self._idle.pop(key, [])
        self._count -= len(sessions)
        for s in sessions:
            self._retire(s)
        return len(sessions)

    def _retire(self, session: Session) -> None:
        self.stats.retired += 1
        client = session.client
        if not client.is_connected:
            client.close()
            return
        try:
            task = asyncio.get_running_loop().create_task(_quit(client))
        except RuntimeError:  # no loop any more: just drop the connection
            client.close()
            return
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)


async def _quit(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await client.quit()
    client.close()
