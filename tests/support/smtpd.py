"""In-process SMTP submission server (aiosmtpd, threaded) for connected tests.

Listeners on loopback, all with AUTH PLAIN/LOGIN checked against ``users``:

* ``starttls_port`` STARTTLS offered and required before MAIL/AUTH (port-587 style)
* ``tls_port``      implicit TLS (port-465 style)
* ``plain_port``    no TLS at all, AUTH allowed in clear (for "no STARTTLS" tests)
* ``blackhole_port`` accepts TCP connections but never greets (connect timeouts)

Each aiosmtpd listener runs on its own thread and event loop, so any test event
loop (pytest-asyncio) can talk to it.  Faults: ``reject_recipients`` (550),
``fail`` (e.g. 421/451 at MAIL/RCPT/DATA), ``hang`` (no reply until ``release``).
"""

from __future__ import annotations

import asyncio
import atexit
import email
import email.policy
import errno
import itertools
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.ports import LOOPBACK, free_port
from tests.support.tlsca import TestPKI, session_pki

Stage = Literal["mail", "rcpt", "data"]
Listener = Literal["starttls", "tls", "plain"]

DEFAULT_USER = "sender@example.test"
DEFAULT_PASSWORD = "sender-secret"

_REPLIES = {
    421: "421 4.3.2 Service not available, closing transmission channel",
    450: "450 4.2.1 Mailbox temporarily unavailable",
    451: "451 4.3.0 Requested action aborted: local error in processing",
    452: "452 4.3.1 Insufficient system storage",
    550: "550 5.1.1 Recipient address rejected: User unknown",
    552: "552 5.3.4 Message size exceeds fixed limit",
    554: "554 5.7.1 Transaction failed",
}


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    auth_user: str | None
    listener: Listener
    queue_id: str

    def message(self) -> EmailMessage:
        """Parsed message (``email.policy.default``)."""
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class _Fault:
    code: int
    stage: Stage
    reply: str
    times: int | None  # None = until reset()


@dataclass
class _State:
    rejected: set[str] | None = None  # None: accept all; empty set: reject all
    faults: list[_Fault] = field(default_factory=list)
    hang_stage: Stage | None = None


class _Handler:
    def __init__(self, server: SmtpServer, listener: Listener) -> None:
        self.server = server
        self.listener = listener

    async def _check(self, stage: Stage, smtp: SMTP) -> str | None:
        srv = self.server
        # Set/cleared from the test's thread, so a plain flag polled here (not an Event).
        while srv._state.hang_stage == stage:
            await asyncio.sleep(0.02)  # cancelled by stop()
        with srv._lock:
            for fault in srv._state.faults:
                if fault.stage == stage and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    break
            else:
                return None
        if fault.code == 421 and smtp.transport is not None:
            # 421 means "closing the channel": do so once the reply is flushed.
            asyncio.get_running_loop().call_later(0.05, smtp.transport.close)
        return fault.reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if reply := await self._check("mail", server):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if reply := await self._check("rcpt", server):
            return reply
        rejected = self.server._state.rejected
        if rejected is not None and (not rejected or address.lower() in rejected):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if reply := await self._check("data", server):
            return reply
        auth = session.auth_data
        user = auth.login.decode() if isinstance(auth, LoginPassword) else None
        raw = envelope.original_content or envelope.content or b""
        queue_id = f"Q{next(self.server._ids):06d}"
        msg = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=raw if isinstance(raw, bytes) else raw.encode(),
            auth_user=user,
            listener=self.listener,
            queue_id=queue_id,
        )
        with self.server._cond:
            self.server.messages.append(msg)
            self.server._cond.notify_all()
        return f"250 2.0.0 OK: queued as {queue_id}"


class _Controller(Controller):
    """Controller whose SMTP sessions may allow AUTH without STARTTLS.

    aiosmtpd only knows STARTTLS as "TLS", so the implicit-TLS (and the plain) listener
    must not require it for AUTH; passing ``auth_require_tls=False`` would warn on every
    connection, hence the attribute is relaxed after construction instead.
    """

    def __init__(self, handler: _Handler, *, auth_over_plain: bool, **kwargs: Any) -> None:
        super().__init__(handler, auth_require_tls=True, **kwargs)
        self.auth_over_plain = auth_over_plain

    def factory(self) -> SMTP:
        smtp = SMTP(self.handler, **self.SMTP_kwargs)
        if self.auth_over_plain:
            smtp._auth_require_tls = False
        return smtp


class SmtpServer:
    """Threaded aiosmtpd listeners sharing users, faults and the ``messages`` list."""

    def __init__(
        self,
        *,
        pki: TestPKI | None = None,
        users: dict[str, str] | None = None,
        host: str = LOOPBACK,
        auth_required: bool = True,
        timeout: float = 300,
        data_size_limit: int | None = 33_554_432,
        server_hostname: str = "smtp.mailroom.test",
    ) -> None:
        self.pki = pki or session_pki()
        self.ca_path = self.pki.ca_path
        self.host = host
        self.users: dict[str, str] = dict(users or {DEFAULT_USER: DEFAULT_PASSWORD})
        self.auth_required = auth_required
        self.timeout = timeout
        self.data_size_limit = data_size_limit
        self.server_hostname = server_hostname
        self._assign_ports()
        self._started = False
        self.messages: list[ReceivedMessage] = []
        self.auth_attempts: list[tuple[str, bool]] = []  # (login, success)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = _State()
        self._ids = itertools.count(1)
        self._controllers: list[_Controller] = []
        self._blackhole: socket.socket | None = None

    # ------------------------------------------------------------ auth ---
    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode(errors="replace")
        ok = self.users.get(login) == auth_data.password.decode(errors="replace")
        self.auth_attempts.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def add_user(self, name: str, password: str) -> None:
        self.users[name] = password

    def set_password(self, name: str, password: str) -> None:
        self.users[name] = password

    # ------------------------------------------------------- lifecycle ---
    def _controller(self, listener: Listener, port: int) -> _Controller:
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": port,
            "server_hostname": self.server_hostname,
            "authenticator": self._authenticate,
            "auth_required": self.auth_required,
            "timeout": self.timeout,
            "data_size_limit": self.data_size_limit,
            "ready_timeout": 10.0,
        }
        if listener == "starttls":
            kwargs.update(tls_context=self.pki.server_context(), require_starttls=True)
        elif listener == "tls":
            kwargs.update(ssl_context=self.pki.server_context())
        return _Controller(
            _Handler(self, listener), auth_over_plain=listener != "starttls", **kwargs
        )

    @property
    def running(self) -> bool:
        return bool(self._controllers)

    def _assign_ports(self) -> None:
        self.starttls_port, self.tls_port, self.plain_port, self.blackhole_port = (
            free_port(self.host) for _ in range(4)
        )

    def start(self) -> SmtpServer:
        """Start all listeners (no-op if running)."""
        for attempt in range(5):
            try:
                self._start()
                self._started = True
                return self
            except OSError as exc:
                self.stop()
                if attempt == 4 or exc.errno != errno.EADDRINUSE:
                    raise
                # A port was taken meanwhile: on first start pick new ports; on restart
                # they must stay the same, so wait for them to come free.
                if self._started:
                    time.sleep(0.2)
                else:
                    self._assign_ports()
        raise AssertionError("unreachable")

    def _start(self) -> None:
        if self.running:
            return
        for listener, port in (
            ("starttls", self.starttls_port),
            ("tls", self.tls_port),
            ("plain", self.plain_port),
        ):
            controller = self._controller(listener, port)  # type: ignore[arg-type]
            controller.start()
            self._controllers.append(controller)
        hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind((self.host, self.blackhole_port))
        hole.listen(64)  # never accept(): clients connect, then wait for a greeting forever
        self._blackhole = hole

    def stop(self) -> None:
        """Stop all listeners (open connections are dropped); ports are free afterwards."""
        self._state.hang_stage = None
        controllers, self._controllers = self._controllers, []
        for controller in controllers:
            controller.stop()
        if self._blackhole is not None:
            self._blackhole.close()
            self._blackhole = None

    def restart(self) -> SmtpServer:
        """Stop and start again on the same ports (messages and users kept)."""
        self.stop()
        return self.start()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------- faults ---
    def reject_recipients(self, *addresses: str) -> None:
        """Answer RCPT with 550 for these addresses (all recipients if none given)."""
        self._state.rejected = {a.lower() for a in addresses}

    def fail(
        self, code: int = 451, stage: Stage = "data", *, times: int | None = None, reply: str = ""
    ) -> None:
        """Answer ``stage`` with ``code`` (421 also closes the connection).

        ``times``: how many commands fail before normal service resumes (None: until reset).
        """
        text = reply or _REPLIES.get(code, f"{code} {'4.0.0' if code < 500 else '5.0.0'} Failed")
        if not text.startswith(str(code)):
            text = f"{code} {text}"
        with self._lock:
            self._state.faults.append(_Fault(code, stage, text, times))

    def hang(self, stage: Stage = "data") -> None:
        """Stop answering at ``stage`` (the client times out) until ``release()``."""
        self._state.hang_stage = stage

    def release(self) -> None:
        self._state.hang_stage = None

    def reset(self) -> None:
        """Forget faults, received messages and auth attempts; restore the default user."""
        with self._lock:
            self._state = _State()
            self.messages.clear()
            self.auth_attempts.clear()
        self.users.clear()
        self.users[DEFAULT_USER] = DEFAULT_PASSWORD

    # -------------------------------------------------------- messages ---
    def wait_for_messages(self, count: int = 1, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages were received (TimeoutError otherwise)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)}/{count} messages after {timeout}s")
            return list(self.messages)

    def messages_async(
        self, count: int = 1, timeout: float = 5.0
    ) -> Coroutine[Any, Any, list[ReceivedMessage]]:
        """Awaitable ``wait_for_messages`` (waits in a worker thread, not on the loop)."""
        return asyncio.to_thread(self.wait_for_messages, count, timeout)

    def __repr__(self) -> str:
        return (
            f"<SmtpServer {self.host} starttls={self.starttls_port} tls={self.tls_port} "
            f"plain={self.plain_port} blackhole={self.blackhole_port}>"
        )


# ----------------------------------------------------------------- fixtures ---
_shared: SmtpServer | None = None


def shared_smtpd() -> SmtpServer:
    """The process-wide SMTP server behind the ``smtpd`` fixture (stopped at exit)."""
    global _shared
    if _shared is None:
        _shared = SmtpServer()
        atexit.register(_shared.stop)
    return _shared


@pytest.fixture
def smtpd() -> Iterator[SmtpServer]:
    """The shared SMTP server, reset (no faults/messages, default user) and running."""
    server = shared_smtpd()
    server.reset()
    server.start()
    yield server
    server.release()
    server.start()  # in case the test stopped it


@pytest.fixture
def smtpd_factory() -> Iterator[Callable[..., SmtpServer]]:
    """Factory for private, started SMTP servers (``SmtpServer(**kwargs)``), stopped after."""
    made: list[SmtpServer] = []

    def make(**kwargs: Any) -> SmtpServer:
        server = SmtpServer(**kwargs)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()
