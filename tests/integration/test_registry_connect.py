"""Connection tests against real servers: Dovecot (IMAP, POP3), aiosmtpd (SMTP), a local DNS
server, and certificates that are untrusted, expired or for another host name."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from libs.common.events.registry import Server
from services.registry.connect import Credential, ServerCheck, check_server
from services.registry.netguard import Network, Reach
from tests.support.dnsserver import LocalDNSServer
from tests.support.dovecot import Dovecot
from tests.support.ports import free_port
from tests.support.smtpd import DEFAULT_PASSWORD, DEFAULT_USER, SmtpServer
from tests.support.tlsca import TestPKI, make_untrusted_pki, session_pki

pytestmark = pytest.mark.connected
SMTP_CRED = Credential(DEFAULT_USER, SecretStr(DEFAULT_PASSWORD))
RECORDS = {
    "localhost": ["A 127.0.0.1"],
    "mail.acme.test": ["A 127.0.0.1"],  # not a name the test certificate carries
}


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNSServer]:
    with LocalDNSServer(RECORDS) as server:
        yield server


@pytest.fixture
def network(dns: LocalDNSServer) -> Network:
    return Network.create(
        dns_server=f"{dns.host}:{dns.port}",
        ca_file=session_pki().ca_path,
        autoconfig_urls=(),
        discovery_timeout=2,
        connect_timeout=2,
        allow_private=True,
    )


@pytest.fixture
def user(dovecot: Dovecot) -> Credential:
    name, password = dovecot.new_user()
    return Credential(name, SecretStr(password))


async def check(
    network: Network,
    protocol: str,
    host: str,
    port: int,
    security: str,
    cred: Credential | None,
    reach: Reach = "any",
) -> ServerCheck:
    server = Server(protocol=protocol, host=host, port=port, security=security)  # type: ignore[arg-type]
    result = await check_server(network, server, "incoming", cred, reach=reach)
    if cred is not None and cred.secret is not None:
        assert cred.secret.get_secret_value() not in result.model_dump_json()
    return result


def steps(result: ServerCheck) -> dict[str, str]:
    return {s.name: s.status for s in result.steps}


def failed(result: ServerCheck) -> tuple[str, str | None]:
    step = next(s for s in result.steps if s.status == "failed")
    return step.name, step.failure


@pytest.mark.parametrize(
    ("protocol", "port_name", "security"),
    [
        ("imap", "imaps", "ssl"),
        ("imap", "imap", "starttls"),
        ("pop3", "pop3s", "ssl"),
        ("pop3", "pop3", "starttls"),
    ],
)
async def test_incoming_works(
    network: Network,
    dovecot: Dovecot,
    user: Credential,
    protocol: str,
    port_name: str,
    security: str,
) -> None:
    r = await check(network, protocol, "localhost", dovecot.ports[port_name], security, user)
    assert r.ok and r.message == "works", r
    assert all(s.status == "ok" for s in r.steps), r.steps
    assert [s.name for s in r.steps] == ["dns", "tcp", "tls", "greeting", "login", "mailbox_select"]
    assert "127.0.0.1" in r.steps[0].message and "TLS" in r.steps[2].message


@pytest.mark.parametrize(("protocol", "port_name"), [("imap", "imaps"), ("pop3", "pop3")])
async def test_wrong_password(
    network: Network, dovecot: Dovecot, user: Credential, protocol: str, port_name: str
) -> None:
    wrong = Credential(user.username, SecretStr("not-the-password"))
    security = "ssl" if port_name.endswith("s") else "starttls"
    r = await check(network, protocol, "127.0.0.1", dovecot.ports[port_name], security, wrong)
    assert failed(r) == ("login", "auth_failed") and not r.ok
    assert "username or password" in r.message
    assert steps(r)["mailbox_select"] == "skipped" and steps(r)["dns"] == "skipped"
    login = next(s for s in r.steps if s.name == "login")
    assert "Authentication failed" in login.detail  # the server's own words


async def test_plaintext_disabled_instance(
    network: Network, dovecot_factory: Callable[..., Dovecot]
) -> None:
    strict = dovecot_factory(allow_plaintext_auth=False)
    name, password = strict.new_user()
    cred = Credential(name, SecretStr(password))
    for protocol, port in (("imap", strict.imap_port), ("pop3", strict.pop3_port)):
        r = await check(network, protocol, strict.host, port, "none", cred)
        assert failed(r) == ("login", "plaintext_disabled"), r
        assert "unencrypted" in r.message
        assert steps(r)["tls"] == "skipped"
        ok = await check(network, protocol, strict.host, port, "starttls", cred)
        assert ok.ok, ok


async def test_smtp_auth(network: Network, smtpd: SmtpServer) -> None:
    for port, security in ((smtpd.starttls_port, "starttls"), (smtpd.tls_port, "ssl")):
        r = await check(network, "smtp", "localhost", port, security, SMTP_CRED)
        assert r.ok, r
        assert [s.name for s in r.steps] == ["dns", "tcp", "tls", "greeting", "smtp_auth"]
        wrong = Credential(DEFAULT_USER, SecretStr("wrong"))
        r = await check(network, "smtp", "localhost", port, security, wrong)
        assert failed(r) == ("smtp_auth", "auth_failed"), r
        assert "535" in next(s.detail for s in r.steps if s.name == "smtp_auth")


async def test_smtp_that_hangs_times_out(network: Network, smtpd: SmtpServer) -> None:
    """The blackhole port accepts TCP and never greets."""
    r = await check(network, "smtp", "127.0.0.1", smtpd.blackhole_port, "starttls", SMTP_CRED)
    assert failed(r) == ("greeting", "timeout"), r
    assert "said nothing within 2s" in r.message
    assert steps(r)["tcp"] == "ok"


async def test_tls_on_the_wrong_port(
    network: Network, dovecot: Dovecot, smtpd: SmtpServer, user: Credential
) -> None:
    # Implicit TLS to a port that speaks plain text first.
    r = await check(network, "imap", "127.0.0.1", dovecot.imap_port, "ssl", user)
    assert failed(r) == ("tls", "tls_mismatch")
    assert "use security starttls on this port, or ssl on port 993" in r.message
    r = await check(network, "smtp", "127.0.0.1", smtpd.starttls_port, "ssl", SMTP_CRED)
    assert failed(r) == ("tls", "tls_mismatch")
    # STARTTLS (or plain) to an implicit-TLS port: the server waits for a handshake.
    r = await check(network, "imap", "127.0.0.1", dovecot.imaps_port, "starttls", user)
    assert failed(r) == ("greeting", "tls_mismatch")
    assert "expects TLS from the first byte" in r.message and "port 143" in r.message
    r = await check(network, "pop3", "127.0.0.1", dovecot.pop3s_port, "none", user)
    assert failed(r) == ("greeting", "tls_mismatch")


@contextlib.contextmanager
def smtp_with(pki: TestPKI) -> Iterator[SmtpServer]:
    server = SmtpServer(pki=pki).start()
    try:
        yield server
    finally:
        server.stop()


async def test_certificate_problems(
    network: Network, dovecot: Dovecot, user: Credential, tmp_path: Path
) -> None:
    with smtp_with(make_untrusted_pki(tmp_path / "untrusted")) as untrusted:
        r = await check(network, "smtp", "localhost", untrusted.tls_port, "ssl", SMTP_CRED)
        assert failed(r) == ("tls", "cert_untrusted"), r
        assert "unknown authority" in r.message
        r = await check(network, "smtp", "localhost", untrusted.starttls_port, "starttls", None)
        assert failed(r) == ("tls", "cert_untrusted"), r
    ca = session_pki().ca
    expired = ca.issue("expired", expired=True)
    pki = TestPKI(ca, ca.cert_path, expired.cert_path, expired.key_path)
    with smtp_with(pki) as old:
        r = await check(network, "smtp", "localhost", old.tls_port, "ssl", SMTP_CRED)
        assert failed(r) == ("tls", "cert_expired"), r
    r = await check(network, "imap", "mail.acme.test", dovecot.imaps_port, "ssl", user)
    assert failed(r) == ("tls", "cert_hostname"), r
    assert "not for mail.acme.test" in r.message


async def test_untrusted_dovecot(
    network: Network, dovecot_factory: Callable[..., Dovecot], tmp_path: Path
) -> None:
    server = dovecot_factory(pki=make_untrusted_pki(tmp_path / "pki"))
    name, password = server.new_user()
    r = await check(
        network,
        "imap",
        "localhost",
        server.imaps_port,
        "ssl",
        Credential(name, SecretStr(password)),
    )
    assert failed(r) == ("tls", "cert_untrusted"), r


async def test_unknown_host_and_refused_port(network: Network, user: Credential) -> None:
    r = await check(network, "imap", "nowhere.acme.test", 993, "ssl", user)
    assert failed(r) == ("dns", "host_not_found") and "does not exist" in r.message
    assert steps(r)["tcp"] == "skipped"
    port = free_port()
    r = await check(network, "imap", "127.0.0.1", port, "ssl", user)
    assert failed(r) == ("tcp", "connection_refused")
    assert f"nothing listens on port {port}" in r.message


async def test_non_public_targets_are_refused(network: Network, user: Credential) -> None:
    for reach in ("public", "private_networks"):
        r = await check(network, "imap", "localhost", 993, "ssl", user, reach=reach)  # type: ignore[arg-type]
        assert failed(r) == ("dns", "target_not_allowed"), r
        assert "loopback" in r.message


@contextlib.asynccontextmanager
async def replay_imap(reply: bytes) -> AsyncIterator[int]:
    """A TCP server that replays a provider's IMAP dialogue: greeting, capabilities, then
    the provider's refusal of LOGIN (recorded from Gmail)."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK Gimap ready for requests from 127.0.0.1 a1mb123456789\r\n")
        while line := await reader.readline():
            tag, _, command = line.decode().partition(" ")
            if command.upper().startswith("CAPABILITY"):
                writer.write(
                    b"* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST "
                    b"CHILDREN X-GM-EXT-1 XYZZY SASL-IR AUTH=XOAUTH2 AUTH=PLAIN\r\n"
                    + tag.encode()
                    + b" OK Thats all she wrote! a1mb123456789\r\n"
                )
            elif command.upper().startswith("LOGIN"):
                writer.write(tag.encode() + b" NO " + reply + b"\r\n")
            else:
                writer.write(tag.encode() + b" BAD unknown\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("reply", "failure"),
    [
        (
            b"[ALERT] Application-specific password required: "
            b"https://support.google.com/accounts/answer/185833 (Failure)",
            "app_password_required",
        ),
        (
            b"[ALERT] Your account is not enabled for IMAP use. Please visit your Gmail "
            b"settings page and enable your account for IMAP access. (Failure)",
            "protocol_disabled",
        ),
    ],
)
async def test_provider_refusals_are_explained(
    network: Network, reply: bytes, failure: str
) -> None:
    async with replay_imap(reply) as port:
        cred = Credential("someone@gmail.com", SecretStr("account-password"))
        r = await check(network, "imap", "127.0.0.1", port, "none", cred)
    assert failed(r) == ("login", failure), r
    assert ("app password" in r.message) == (failure == "app_password_required")
