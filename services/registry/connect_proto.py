"""The protocol half of a connection test, on a socket the caller has connected already:
IMAP (aioimaplib), POP3 (asyncio streams; its login in ``connect_pop3``), SMTP (aiosmtplib),
EWS (TLS only).

A TLS handshake that fails on a port speaking plain text, or a silent port that turns out to
expect TLS, is confirmed with a second short connection, so the message says exactly which
security setting the port wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aioimaplib
import aiosmtplib
from aioimaplib.aioimaplib import Command, quoted

from libs.common.imap_xoauth2 import xoauth2
from services.registry.connect_hints import PORTS, Diagnosis, StepFailed, classify_reply
from services.registry.connect_pop3 import MAX_LINE, Pop3Lines
from services.registry.connect_pop3 import login as pop3_login

if TYPE_CHECKING:
    from services.registry.connect import Credential, Probe

_GREETING = re.compile(rb"^(\* OK|\* PREAUTH|\+OK|220[ -])")
PROBE_S = 3.0


def unwrap(exc: BaseException) -> BaseException:
    """The network error behind a library's wrapper exception."""
    if isinstance(exc, aiosmtplib.SMTPException) and exc.__cause__ is not None:
        return exc.__cause__
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return ConnectionResetError(str(exc))
    return exc


def _goodbye(transport: Any, command: str) -> None:
    """Say goodbye without waiting for the answer (the connection is dropped right after)."""
    with contextlib.suppress(Exception):
        transport.write(command.encode() + b"\r\n")


def _release(transport: Any, sock: socket.socket) -> None:
    """Drop the connection at once. A transport owns its socket: closing the socket under it
    would let the next connection reuse the descriptor while the loop still watches it."""
    if transport is not None:
        transport.abort()
    else:
        sock.close()


def tls_note(transport: Any) -> str:
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if obj is None:
        return ""
    return f"{obj.version()}, certificate verified"


async def _plain_greeting(p: Probe) -> bytes | None:
    """Connect again without TLS: a plain-text greeting proves a STARTTLS (or plain) port."""
    try:
        async with asyncio.timeout(min(p.timeout, PROBE_S)):
            reader, writer = await asyncio.open_connection(p.addresses[0], p.port)
            try:
                data = await reader.read(64)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    return data if _GREETING.match(data) else None


async def _speaks_tls(p: Probe) -> bool:
    """Connect again and shake hands at once (no verification): True for implicit TLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(min(p.timeout, PROBE_S)):
            _, writer = await asyncio.open_connection(
                p.addresses[0], p.port, ssl=ctx, server_hostname=p.sni
            )
            writer.close()
    except (OSError, TimeoutError):
        return False
    return True


def plain_first(p: Probe) -> Callable[[BaseException], Awaitable[Diagnosis | None]]:
    async def diagnose(exc: BaseException) -> Diagnosis | None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return None
        if await _plain_greeting(p) is None:
            return None
        implicit = PORTS.get(p.protocol, (0, 0))[0]
        return Diagnosis(
            "tls_mismatch",
            f"{p.host}:{p.port} speaks plain text first (a STARTTLS port), not implicit TLS: "
            f"use security starttls on this port, or ssl on port {implicit}",
        )

    return diagnose


def tls_first(p: Probe) -> Callable[[BaseException], Awaitable[Diagnosis | None]]:
    async def diagnose(exc: BaseException) -> Diagnosis | None:
        if not isinstance(exc, TimeoutError | ConnectionError) or not await _speaks_tls(p):
            return None
        plain = PORTS.get(p.protocol, (0, 0))[1]
        return Diagnosis(
            "tls_mismatch",
            f"{p.host}:{p.port} expects TLS from the first byte (implicit TLS), not "
            f"{'STARTTLS' if p.security == 'starttls' else 'plain text'}: use security ssl on "
            f"this port, or starttls on port {plain}",
        )

    return diagnose


def _no_starttls(p: Probe) -> StepFailed:
    implicit = PORTS.get(p.protocol, (0, 0))[0]
    return StepFailed(
        Diagnosis(
            "starttls_unavailable",
            f"{p.host}:{p.port} does not offer STARTTLS: use security ssl on port {implicit}",
        )
    )


def _skip_login(p: Probe, credential: Credential | None, names: tuple[str, ...]) -> bool:
    if credential is not None and credential.secret is not None:
        return False
    for name in names:
        p.skip(name, "no password given: login not tried")  # type: ignore[arg-type]
    return True


# --- IMAP -------------------------------------------------------------------------------------
async def imap(p: Probe, sock: socket.socket, credential: Credential | None) -> None:
    loop = asyncio.get_running_loop()
    lost = asyncio.Event()
    proto = aioimaplib.IMAP4ClientProtocol(loop, lambda _: lost.set())
    try:
        if p.security == "ssl":
            await p.step(
                "tls",
                lambda: loop.create_connection(
                    lambda: proto, sock=sock, ssl=p.tls, server_hostname=p.sni
                ),
                diagnose=plain_first(p),
            )
            p.note(tls_note(proto.transport))
        else:
            await loop.create_connection(lambda: proto, sock=sock)
        await p.step("greeting", lambda: _imap_hello(proto, lost), diagnose=tls_first(p))
        p.note(detail=" ".join(sorted(proto.capabilities)))
        if p.security == "starttls":
            await p.step("tls", lambda: _imap_starttls(p, proto))
            p.note(tls_note(proto.transport))
        elif p.security == "none":
            p.skip("tls", "security none: nothing is encrypted")
        if _skip_login(p, credential, ("login", "mailbox_select")):
            return
        assert credential is not None and credential.secret is not None
        await p.step("login", lambda: _imap_login(proto, credential))
        p.note(f"signed in as {credential.username}")
        exists = await p.step("mailbox_select", lambda: _imap_examine(proto))
        p.note(f"INBOX opened ({exists} messages)")
        _goodbye(proto.transport, f"{proto.new_tag()} LOGOUT")
    finally:
        _release(proto.transport, sock)


async def _imap_hello(proto: aioimaplib.IMAP4ClientProtocol, lost: asyncio.Event) -> None:
    hello = asyncio.ensure_future(proto.wait("AUTH|NONAUTH"))
    gone = asyncio.ensure_future(lost.wait())
    try:
        done, _ = await asyncio.wait({hello, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hello.cancel()
        gone.cancel()
    if hello not in done:
        raise ConnectionResetError("the server closed the connection before greeting")


async def _imap_starttls(p: Probe, proto: aioimaplib.IMAP4ClientProtocol) -> None:
    if "STARTTLS" not in proto.capabilities:
        raise _no_starttls(p)
    loop = asyncio.get_running_loop()
    r = await proto.execute(Command("STARTTLS", proto.new_tag(), loop=loop))
    if r.result != "OK":
        raise _no_starttls(p)
    proto.transport = await loop.start_tls(proto.transport, proto, p.tls, server_hostname=p.sni)
    await proto.capability()


def _text(response: Any) -> str:
    return " ".join(
        bytes(x).decode(errors="replace")
        for x in response.lines
        if isinstance(x, bytes | bytearray)
    )


async def _imap_login(proto: aioimaplib.IMAP4ClientProtocol, c: Credential) -> None:
    assert c.secret is not None
    secret = c.secret.get_secret_value()
    if c.auth_mode == "oauth2":
        r = await xoauth2(proto, c.username, secret)  # answers a refusal, keeps logs clean
    else:
        if "LOGINDISABLED" in proto.capabilities:
            raise StepFailed(classify_reply("LOGINDISABLED", "imap"), "LOGINDISABLED")
        r = await proto.login(quoted(c.username), secret)
    if r.result != "OK":
        text = _text(r)
        raise StepFailed(classify_reply(text, "imap"), text)


async def _imap_examine(proto: aioimaplib.IMAP4ClientProtocol) -> int:
    r = await proto.simple_command("EXAMINE", "INBOX")
    if r.result != "OK":
        text = _text(r)
        raise StepFailed(
            Diagnosis("mailbox_unavailable", "signed in, but the INBOX cannot be opened"), text
        )
    found = re.search(r"(\d+) EXISTS", _text(r))
    return int(found.group(1)) if found else 0


# --- POP3 -------------------------------------------------------------------------------------
async def pop3(p: Probe, sock: socket.socket, credential: Credential | None) -> None:
    if p.security == "ssl":
        reader, writer = await p.step(
            "tls",
            lambda: asyncio.open_connection(sock=sock, ssl=p.tls, server_hostname=p.sni),
            diagnose=plain_first(p),
        )
        p.note(tls_note(writer.transport))
    else:
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE * 2)
    s = Pop3Lines(reader, writer)
    try:
        greeting = await p.step("greeting", s.line, diagnose=tls_first(p))
        p.note(detail=greeting)
        if not greeting.startswith("+OK"):
            raise StepFailed(Diagnosis("protocol_error", "this is not a POP3 server"), greeting)
        if p.security == "starttls":
            await p.step("tls", lambda: _pop3_stls(p, s))
            p.note(tls_note(s.writer.transport))
        elif p.security == "none":
            p.skip("tls", "security none: nothing is encrypted")
        if _skip_login(p, credential, ("login", "mailbox_select")):
            return
        assert credential is not None and credential.secret is not None
        await p.step("login", lambda: pop3_login(s, credential))
        p.note(f"signed in as {credential.username}")
        stat = await p.step("mailbox_select", lambda: s.command("STAT"))
        parts = stat.split()
        if not stat.startswith("+OK") or len(parts) < 2:
            raise StepFailed(Diagnosis("mailbox_unavailable", "the mailbox cannot be read"), stat)
        p.note(f"mailbox opened ({parts[1]} messages)")
        _goodbye(s.writer.transport, "QUIT")
    finally:
        _release(s.writer.transport, sock)


async def _pop3_stls(p: Probe, s: Pop3Lines) -> None:
    reply = await s.command("STLS")
    if not reply.startswith("+OK"):
        raise _no_starttls(p)
    await s.writer.start_tls(p.tls, server_hostname=p.sni)


# --- SMTP -------------------------------------------------------------------------------------
async def smtp(p: Probe, sock: socket.socket, credential: Credential | None) -> None:
    client = aiosmtplib.SMTP(
        hostname=p.sni,
        sock=sock,
        use_tls=p.security == "ssl",
        start_tls=False,
        tls_context=p.tls,
        timeout=p.timeout,
        local_hostname="mailroom.localdomain",
    )
    held: list[Any] = []  # the transport: quit() forgets it while TLS still shuts down

    async def connect() -> aiosmtplib.SMTPResponse:
        try:
            return await client.connect()
        finally:
            held.append(client.transport)

    try:
        if p.security == "ssl":
            hello = await p.step("tls", connect, diagnose=plain_first(p))
            p.note(tls_note(client.transport))
            p.ok("greeting", detail=f"{hello.code} {hello.message}")
        else:
            hello = await p.step("greeting", connect, diagnose=tls_first(p))
            p.note(detail=f"{hello.code} {hello.message}")
        if p.security == "starttls":
            await p.step("tls", lambda: _smtp_starttls(p, client))
            p.note(tls_note(client.transport))
        elif p.security == "none":
            p.skip("tls", "security none: nothing is encrypted")
        if _skip_login(p, credential, ("smtp_auth",)):
            return
        assert credential is not None
        await p.step("smtp_auth", lambda: _smtp_auth(p, client, credential))
        p.note(f"signed in as {credential.username}")
        _goodbye(client.transport, "QUIT")
    finally:
        _release(client.transport or (held[0] if held else None), sock)
        client.close()


async def _smtp_starttls(p: Probe, client: aiosmtplib.SMTP) -> None:
    await client.ehlo()
    if not client.supports_extension("starttls"):
        raise _no_starttls(p)
    await client.starttls()


async def _smtp_auth(p: Probe, client: aiosmtplib.SMTP, c: Credential) -> None:
    assert c.secret is not None
    if client.is_ehlo_or_helo_needed:
        await client.ehlo()
    if not client.supports_extension("auth"):
        if p.security == "none":
            raise StepFailed(classify_reply("must issue a STARTTLS first", "smtp"))
        raise StepFailed(
            Diagnosis("auth_unavailable", "the server offers no login (AUTH) on this port")
        )
    try:
        if c.auth_mode == "oauth2":
            await client.auth_xoauth2(c.username, c.secret.get_secret_value())
        else:
            await client.login(c.username, c.secret.get_secret_value())
    except aiosmtplib.SMTPResponseException as exc:
        text = f"{exc.code} {exc.message}"
        raise StepFailed(classify_reply(text, "smtp"), text) from None


# --- EWS --------------------------------------------------------------------------------------
async def ews(p: Probe, sock: socket.socket, credential: Credential | None) -> None:
    """Exchange Web Services: name, TCP and TLS of the endpoint; sign-in is not tried."""
    transport: Any = None
    try:
        if p.security == "ssl":
            _, writer = await p.step(
                "tls",
                lambda: asyncio.open_connection(sock=sock, ssl=p.tls, server_hostname=p.sni),
            )
            transport = writer.transport
            p.note(tls_note(transport))
        else:
            p.skip("tls", "plain http: nothing is encrypted")
        p.skip("login", "EWS sign-in is not checked yet (name, TCP and TLS were)")
    finally:
        _release(transport, sock)


PROBES: dict[str, Callable[[Probe, socket.socket, Credential | None], Awaitable[None]]] = {
    "imap": imap,
    "pop3": pop3,
    "smtp": smtp,
    "ews": ews,
}
