"""Proof that the real-server mail fixtures (Dovecot, aiosmtpd, test CA) work."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import ssl
from email.message import EmailMessage
from pathlib import Path

import aioimaplib
import aiosmtplib
import pytest

from tests.support.dovecot import Dovecot
from tests.support.smtpd import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    SmtpServer,
)
from tests.support.tlsca import make_untrusted_pki, session_pki

pytestmark = pytest.mark.connected


def raw_message(subject: str, body: str = "Hello there.") -> bytes:
    return (
        f"From: Sender <sender@example.test>\r\nTo: rcpt@example.test\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '-')}@example.test>\r\n"
        f"\r\n{body}\r\n"
    ).encode()


def email_message(to: str = "rcpt@example.test", subject: str = "Hi") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = DEFAULT_USER
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Sent through the test SMTP server.\n")
    return msg


# ------------------------------------------------------------------ IMAP ---
def test_imap_starttls_login_select_fetch(dovecot: Dovecot) -> None:
    user, password = dovecot.new_user()
    uid = dovecot.deliver(user, raw_message("starttls fetch"))
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10) as imap:
        imap.starttls(ssl_context=dovecot.pki.client_context())
        imap.login(user, password)
        assert imap.select("INBOX") == ("OK", [b"1"])
        typ, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert typ == "OK"
        assert b"Subject: starttls fetch" in data[0][1]


def test_imap_plaintext_login_is_allowed_by_default(dovecot: Dovecot) -> None:
    user, password = dovecot.new_user()
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10) as imap:
        assert imap.login(user, password)[0] == "OK"


def test_imap_plaintext_auth_can_be_disabled(dovecot_factory) -> None:
    server = dovecot_factory(allow_plaintext_auth=False)
    user, password = server.new_user()
    with imaplib.IMAP4(server.host, server.imap_port, timeout=10) as imap:
        assert "LOGINDISABLED" in imap.capabilities
        imap.starttls(ssl_context=server.pki.client_context())
        assert imap.login(user, password)[0] == "OK"


async def test_imaps_implicit_tls_idle_sees_delivery(dovecot: Dovecot) -> None:
    user, password = dovecot.new_user()
    client = aioimaplib.IMAP4_SSL(
        dovecot.host, dovecot.imaps_port, ssl_context=dovecot.pki.client_context(), timeout=10
    )
    await client.wait_hello_from_server()
    assert (await client.login(user, password)).result == "OK"
    assert (await client.select("INBOX")).result == "OK"
    idle = await client.idle_start(timeout=10)
    await asyncio.to_thread(dovecot.deliver, user, raw_message("idle push"))
    pushed = await client.wait_server_push(timeout=5)
    assert any(line.endswith(b"EXISTS") for line in pushed), pushed
    client.idle_done()
    await asyncio.wait_for(idle, 5)
    await client.logout()


def test_password_change_makes_old_password_fail(dovecot: Dovecot) -> None:
    user, old = dovecot.new_user()
    dovecot.set_password(user, "brand-new-password")
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10) as imap:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(user, old)
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10) as imap:
        assert imap.login(user, "brand-new-password")[0] == "OK"


def test_restart_keeps_mail_and_ports(dovecot_factory) -> None:
    server: Dovecot = dovecot_factory()
    user, password = server.new_user()
    server.deliver(user, raw_message("survives restart"))
    server.deliver(user, raw_message("in a folder"), folder="Projects/2026")
    ports = dict(server.ports)
    server.restart()
    assert server.ports == ports
    ctx = server.pki.client_context()
    with imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=ctx, timeout=10) as imap:
        imap.login(user, password)
        assert imap.select("INBOX") == ("OK", [b"1"])
        assert imap.select("Projects/2026") == ("OK", [b"1"])


def test_delete_message_and_quota(dovecot: Dovecot) -> None:
    user, password = dovecot.new_user(quota="1M")
    first = dovecot.deliver(user, raw_message("one"))
    second = dovecot.deliver(user, raw_message("two"))
    dovecot.delete_message(user, first)
    assert dovecot.uids(user) == [second]
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10) as imap:
        imap.login(user, password)
        typ, data = imap.getquotaroot("INBOX")
        assert typ == "OK"
        assert b"STORAGE" in data[1][0] and b" 1024)" in data[1][0], data


def test_imap_untrusted_certificate_is_rejected(dovecot_factory, tmp_path: Path) -> None:
    server: Dovecot = dovecot_factory(pki=make_untrusted_pki(tmp_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            server.host, server.imaps_port, ssl_context=session_pki().client_context(), timeout=10
        )


# ------------------------------------------------------------------ POP3 ---
def test_pop3_stls_and_pop3s_uidl_retr(dovecot: Dovecot) -> None:
    user, password = dovecot.new_user()
    dovecot.deliver(user, raw_message("pop one"))
    dovecot.deliver(user, raw_message("pop two"))
    ctx = dovecot.pki.client_context()

    pop = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        pop.stls(context=ctx)
        pop.user(user)
        pop.pass_(password)
        _, uidl, _ = pop.uidl()
        assert len(uidl) == 2
        _, lines, _ = pop.retr(2)
        assert b"Subject: pop two" in lines
    finally:
        pop.quit()

    pops = poplib.POP3_SSL(dovecot.host, dovecot.pop3s_port, context=ctx, timeout=10)
    try:
        pops.user(user)
        pops.pass_(password)
        assert pops.uidl()[1] == uidl  # UIDs are stable across sessions
        _, lines, _ = pops.retr(1)
        assert b"Subject: pop one" in lines
    finally:
        pops.quit()


# ------------------------------------------------------------------ SMTP ---
async def test_smtp_starttls_auth_send_is_recorded(smtpd: SmtpServer) -> None:
    await aiosmtplib.send(
        email_message(subject="via starttls"),
        hostname=smtpd.host,
        port=smtpd.starttls_port,
        start_tls=True,
        tls_context=smtpd.pki.client_context(),
        username=DEFAULT_USER,
        password=DEFAULT_PASSWORD,
        timeout=10,
    )
    [msg] = await smtpd.messages_async(1)
    assert msg.listener == "starttls"
    assert msg.auth_user == DEFAULT_USER
    assert msg.mail_from == DEFAULT_USER
    assert msg.rcpt_tos == ["rcpt@example.test"]
    assert msg.message()["Subject"] == "via starttls"


@pytest.mark.parametrize("mechanism", ["plain", "login"])
async def test_smtp_implicit_tls_auth_mechanisms(smtpd: SmtpServer, mechanism: str) -> None:
    smtpd.add_user("other@example.test", "other-pw")
    async with _smtp(smtpd) as client:
        await client.ehlo()
        await getattr(client, f"auth_{mechanism}")("other@example.test", "other-pw")
        await client.send_message(email_message(subject="via tls"))
    [msg] = smtpd.wait_for_messages(1)
    assert (msg.listener, msg.auth_user) == ("tls", "other@example.test")


def _smtp(server: SmtpServer, **kwargs: object) -> aiosmtplib.SMTP:
    params: dict[str, object] = {
        "hostname": server.host,
        "port": server.tls_port,
        "use_tls": True,
        "tls_context": server.pki.client_context(),
        "timeout": 10,
    }
    params.update(kwargs)
    return aiosmtplib.SMTP(**params)  # type: ignore[arg-type]


async def test_smtp_rejected_recipient_gets_550(smtpd: SmtpServer) -> None:
    smtpd.reject_recipients("nobody@example.test")
    async with _smtp(smtpd, username=DEFAULT_USER, password=DEFAULT_PASSWORD) as client:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as exc:
            await client.send_message(email_message(to="nobody@example.test"))
        assert exc.value.recipients[0].code == 550
        errors, _ = await client.send_message(
            email_message(), recipients=["nobody@example.test", "ok@example.test"]
        )
        assert errors["nobody@example.test"].code == 550
    assert smtpd.messages[0].rcpt_tos == ["ok@example.test"]


async def test_smtp_wrong_password_gets_535(smtpd: SmtpServer) -> None:
    async with _smtp(smtpd) as client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as exc:
            await client.login(DEFAULT_USER, "wrong")
    assert exc.value.code == 535
    assert smtpd.auth_attempts and all(a == (DEFAULT_USER, False) for a in smtpd.auth_attempts)


async def test_smtp_auth_before_starttls_is_refused(smtpd: SmtpServer) -> None:
    client = aiosmtplib.SMTP(
        hostname=smtpd.host, port=smtpd.starttls_port, start_tls=False, timeout=10
    )
    async with client:
        await client.ehlo()
        assert client.supports_extension("starttls")
        response = await client.execute_command(b"AUTH", b"PLAIN", b"AHNlbmRlcgBwdw==")
        assert response.code == 530


async def test_smtp_transient_failures(smtpd: SmtpServer) -> None:
    smtpd.fail(451, "data", times=1)
    smtpd.fail(421, "mail", times=1)
    login = {"username": DEFAULT_USER, "password": DEFAULT_PASSWORD}
    async with _smtp(smtpd, **login) as client:
        with pytest.raises(aiosmtplib.SMTPResponseException) as exc:
            await client.send_message(email_message())
        assert exc.value.code == 421
    async with _smtp(smtpd, **login) as client:
        with pytest.raises(aiosmtplib.SMTPDataError) as data_exc:
            await client.send_message(email_message())
        assert data_exc.value.code == 451
        await client.send_message(email_message(subject="third time lucky"))
    assert [m.message()["Subject"] for m in smtpd.messages] == ["third time lucky"]


async def test_smtp_hang_and_blackhole_time_out(smtpd: SmtpServer) -> None:
    smtpd.hang("data")
    async with _smtp(smtpd, username=DEFAULT_USER, password=DEFAULT_PASSWORD) as client:
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await client.send_message(email_message(), timeout=0.3)
    smtpd.release()
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await aiosmtplib.SMTP(hostname=smtpd.host, port=smtpd.blackhole_port, timeout=0.3).connect()


async def test_smtp_restart_same_port_and_untrusted_cert(smtpd_factory, tmp_path: Path) -> None:
    server: SmtpServer = smtpd_factory()
    port = server.tls_port
    await asyncio.to_thread(server.restart)
    assert server.tls_port == port
    async with _smtp(server, username=DEFAULT_USER, password=DEFAULT_PASSWORD) as client:
        await client.send_message(email_message())
    assert len(server.messages) == 1

    rogue: SmtpServer = smtpd_factory(pki=make_untrusted_pki(tmp_path))
    with pytest.raises(aiosmtplib.SMTPConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await _smtp(rogue, tls_context=server.pki.client_context()).connect()
