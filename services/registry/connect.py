"""Connection tests: really connect to an account's servers and say what works.

Each server is checked in steps - ``dns``, ``tcp``, ``tls``, ``greeting``, ``login`` (incoming)
or ``smtp_auth`` (outgoing), ``mailbox_select`` - each ``ok``, ``skipped`` or ``failed`` with
its time, a failure class and a message a person can act on (see :mod:`connect_hints`). Every
step has its own timeout. Nothing is stored; the secret is used for the login only, scrubbed
from every detail and log line.

Protocols: IMAP (aioimaplib), POP3 (asyncio streams), SMTP (aiosmtplib) in
:mod:`connect_proto`; EWS (exchangelib: a real sign-in and the Inbox) in :mod:`connect_ews`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, SecretStr

from libs.common.events.registry import AuthMode, Server
from libs.common.logs import remember_secret
from services.registry import connect_ews, connect_proto
from services.registry.connect_hints import (
    Diagnosis,
    Failure,
    StepFailed,
    classify_error,
)
from services.registry.netguard import Network, Reach, ResolveError, TargetRefused, check_address

T = TypeVar("T")
StepName = Literal["dns", "tcp", "tls", "greeting", "login", "mailbox_select", "smtp_auth"]
Role = Literal["incoming", "outgoing"]
PLAN: dict[str, tuple[StepName, ...]] = {
    "imap": ("dns", "tcp", "tls", "greeting", "login", "mailbox_select"),
    "pop3": ("dns", "tcp", "tls", "greeting", "login", "mailbox_select"),
    "smtp": ("dns", "tcp", "tls", "greeting", "smtp_auth"),
    "ews": ("dns", "tcp", "tls", "login", "mailbox_select"),
}
MAX_DETAIL = 300


class StepOut(BaseModel):
    name: StepName
    status: Literal["ok", "skipped", "failed"]
    elapsed_ms: int = 0
    failure: Failure | None = None
    message: str = ""
    detail: str = ""
    """The server's own words (greeting, refusal), shortened; never a secret."""


class ServerCheck(BaseModel):
    role: Role
    protocol: str
    host: str
    port: int
    security: str
    ok: bool
    failure: Failure | None = None
    message: str = ""
    elapsed_ms: int = 0
    steps: list[StepOut]


class ConnectionReport(BaseModel):
    ok: bool
    elapsed_ms: int
    incoming: ServerCheck | None = None
    outgoing: ServerCheck | None = None

    @property
    def first_failure(self) -> ServerCheck | None:
        return next((c for c in (self.incoming, self.outgoing) if c and not c.ok), None)


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    secret: SecretStr | None
    auth_mode: AuthMode = "password"


class Probe:
    """The steps of one server check, recorded as they run."""

    def __init__(self, server: Server, role: Role, network: Network, timeout: float) -> None:
        self.server = server
        self.role = role
        self.host = server.host
        self.port = server.port
        self.security = server.security
        self.protocol = server.protocol
        self.tls: ssl.SSLContext = network.tls
        self.timeout = timeout
        self.addresses: list[str] = []
        self.steps: list[StepOut] = []
        self.secrets: list[str] = []
        self.start = time.monotonic()
        self.reach: Reach = "public"
        """What the guard lets this check reach (connections made by libraries too)."""

    @property
    def sni(self) -> str:
        return self.host.strip("[]")

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text.replace("\r", " ").replace("\n", " ").strip()[:MAX_DETAIL]

    def ok(self, name: StepName, message: str = "", detail: str = "", since: float = 0) -> None:
        elapsed = int((time.monotonic() - since) * 1000) if since else 0
        self.steps.append(
            StepOut(
                name=name,
                status="ok",
                elapsed_ms=elapsed,
                message=message,
                detail=self.scrub(detail),
            )
        )

    def skip(self, name: StepName, message: str) -> None:
        self.steps.append(StepOut(name=name, status="skipped", message=message))

    def fail(self, name: StepName, diagnosis: Diagnosis, detail: str, since: float) -> None:
        self.steps.append(
            StepOut(
                name=name,
                status="failed",
                elapsed_ms=int((time.monotonic() - since) * 1000),
                failure=diagnosis.failure,
                message=diagnosis.message,
                detail=self.scrub(detail),
            )
        )

    async def step(
        self,
        name: StepName,
        fn: Callable[[], Awaitable[T]],
        *,
        diagnose: Callable[[BaseException], Awaitable[Diagnosis | None]] | None = None,
    ) -> T:
        """Run one step under the step timeout; record it; raise StepFailed on failure."""
        since = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                result = await fn()
        except StepFailed as exc:
            self.fail(name, exc.diagnosis, exc.detail, since)
            raise
        except Exception as exc:
            cause = connect_proto.unwrap(exc)
            better = await diagnose(cause) if diagnose is not None else None
            diagnosis = better or classify_error(
                cause,
                step=name,
                host=self.host,
                port=self.port,
                protocol=self.protocol,
                timeout=self.timeout,
            )
            self.fail(name, diagnosis, "", since)
            raise StepFailed(diagnosis) from None
        self.ok(name, since=since)
        return result

    def note(self, message: str = "", detail: str = "") -> None:
        """Describe the step just recorded."""
        if message:
            self.steps[-1].message = message
        if detail:
            self.steps[-1].detail = self.scrub(detail)

    def result(self) -> ServerCheck:
        done = {s.name for s in self.steps}
        failed = next((s for s in self.steps if s.status == "failed"), None)
        for name in PLAN[self.protocol]:
            if name not in done:
                self.skip(name, "not reached" if failed else "not applicable")
        order = {n: i for i, n in enumerate(PLAN[self.protocol])}
        self.steps.sort(key=lambda s: order.get(s.name, 99))
        return ServerCheck(
            role=self.role,
            protocol=self.protocol,
            host=self.host,
            port=self.port,
            security=self.security,
            ok=failed is None,
            failure=failed.failure if failed else None,
            message=failed.message if failed else "works",
            elapsed_ms=int((time.monotonic() - self.start) * 1000),
            steps=self.steps,
        )


async def _resolve(p: Probe, network: Network, reach: Reach) -> None:
    since = time.monotonic()
    try:
        async with asyncio.timeout(p.timeout):
            p.addresses = await network.resolver.addresses(p.host, p.timeout)
        for address in p.addresses:
            check_address(p.host, address, reach)
    except ResolveError as exc:
        failure: Failure = "host_not_found" if exc.kind == "host_not_found" else "dns_failed"
        message = (
            f"the host name {p.host} does not exist: check its spelling"
            if failure == "host_not_found"
            else exc.message
        )
        p.fail("dns", Diagnosis(failure, message), "", since)
        raise StepFailed(Diagnosis(failure, message)) from None
    except TimeoutError:
        diagnosis = Diagnosis("dns_failed", f"no DNS answer for {p.host} within {p.timeout:g}s")
        p.fail("dns", diagnosis, "", since)
        raise StepFailed(diagnosis) from None
    except TargetRefused as exc:
        p.fail("dns", Diagnosis("target_not_allowed", str(exc)), "", since)
        raise StepFailed(Diagnosis("target_not_allowed", str(exc))) from None
    except (OSError, ValueError) as exc:
        diagnosis = Diagnosis("dns_failed", f"cannot resolve {p.host}: {type(exc).__name__}")
        p.fail("dns", diagnosis, "", since)
        raise StepFailed(diagnosis) from None
    if p.addresses == [p.host.strip("[]")]:
        p.skip("dns", "an IP address: nothing to resolve")
    else:
        p.ok("dns", f"{p.host} is {', '.join(p.addresses[:4])}", since=since)


async def open_tcp(addresses: list[str], port: int) -> socket.socket:
    """A connected non-blocking socket to the first address that accepts."""
    loop = asyncio.get_running_loop()
    last: BaseException = OSError("no address")
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (address, port))
        except BaseException as exc:
            sock.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            last = exc
            continue
        return sock
    raise last


async def check_server(
    network: Network,
    server: Server,
    role: Role,
    credential: Credential | None,
    *,
    reach: Reach,
    timeout: float | None = None,
) -> ServerCheck:
    p = Probe(server, role, network, timeout or network.connect_timeout)
    p.reach = reach
    if credential is not None and credential.secret is not None:
        p.secrets.append(credential.secret.get_secret_value())
        remember_secret(credential.secret.get_secret_value())
    try:
        await _resolve(p, network, reach)
        sock = await p.step("tcp", lambda: open_tcp(p.addresses, p.port))
        p.note(f"connected to {p.addresses[0] if len(p.addresses) == 1 else 'the server'}")
        run = connect_ews.probe if p.protocol == "ews" else connect_proto.PROBES[p.protocol]
        await run(p, sock, credential)
    except StepFailed:
        pass
    return p.result()


async def check_account(
    network: Network,
    incoming: Server | None,
    outgoing: Server | None,
    credential: Credential | None,
    *,
    reach: Reach,
    timeout: float | None = None,
) -> ConnectionReport:
    """Check the incoming and the outgoing server at the same time."""
    start = time.monotonic()
    jobs: list[Awaitable[ServerCheck]] = []
    roles: list[Role] = []
    for role, server in (("incoming", incoming), ("outgoing", outgoing)):
        if server is None or (role == "outgoing" and server == incoming):
            continue  # EWS sends through the incoming endpoint: checked once
        roles.append(role)  # type: ignore[arg-type]
        jobs.append(check_server(network, server, role, credential, reach=reach, timeout=timeout))  # type: ignore[arg-type]
    checks = dict(zip(roles, await asyncio.gather(*jobs), strict=True))
    return ConnectionReport(
        ok=all(c.ok for c in checks.values()),
        elapsed_ms=int((time.monotonic() - start) * 1000),
        incoming=checks.get("incoming"),
        outgoing=checks.get("outgoing"),
    )
