"""Delivery by SMTP submission (aiosmtplib): implicit TLS or STARTTLS, AUTH, timeouts.

One attempt is one SMTP transaction: MAIL, RCPT for each recipient, DATA, over a session that
is either new (connect (TLS), EHLO, STARTTLS, AUTH) or, with a ``SmtpPool``, an authenticated
session of the same mailbox, server and credential left by an earlier send (``smtp_pool.py``).
A pooled session that turns out dead at MAIL is replaced by a new connection within the same
attempt (nothing was accepted yet). Without a pool the session ends with QUIT. Every failure
becomes a ``domain.DeliveryFailed`` with its reason class and whether it may be retried.
Nothing is retried here; the caller records the outcome.

When is a message delivered? The server takes responsibility with its 250 reply to the end of
DATA. Failures before that point (connect, TLS, AUTH, MAIL, RCPT, the DATA command, an error
reply to the data) mean the server did not accept it: retrying cannot duplicate it. A lost
connection or timeout *after* the data was sent and before the reply is the one ambiguous
case (RFC 1047): the server may have accepted the message. It is treated as transient and
retried, like every MTA does, with the same bytes and Message-ID (services/sender/README.md).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import aiosmtplib
from pydantic import SecretStr

from libs.common.events.registry import Server
from services.sender.domain import Delivered, DeliveryFailed, smtp_reply_failure
from services.sender.smtp_pool import PoolKey, SmtpPool

AuthMode = Literal["password", "app_password", "oauth2"]


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    secret: SecretStr
    auth_mode: AuthMode = "password"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    command: float
    attempt: float


def _cause_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def classify(exc: BaseException, stage: str) -> DeliveryFailed:
    """An exception raised at ``stage`` as a failure with a reason class."""
    if isinstance(exc, DeliveryFailed):
        return exc
    for e in _cause_chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return DeliveryFailed(
                "other", f"{stage}: TLS certificate not trusted: {e.verify_message}", permanent=True
            )
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
        return smtp_reply_failure(exc.code, exc.message, stage)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return DeliveryFailed("other", f"{stage}: {exc}", permanent=True)
    if isinstance(exc, (TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return DeliveryFailed("server_down", f"{stage}: timed out", permanent=False)
    if isinstance(exc, (OSError, aiosmtplib.SMTPException)):
        return DeliveryFailed("server_down", f"{stage}: {type(exc).__name__}: {exc}", False)
    return DeliveryFailed("other", f"{stage}: {type(exc).__name__}: {exc}", permanent=False)


async def deliver(
    server: Server,
    credential: Credential | None,
    mail_from: str,
    recipients: Sequence[str],
    raw: bytes,
    *,
    tls_context: ssl.SSLContext,
    timeouts: Timeouts,
    ehlo_name: str,
    allow_insecure: bool = False,
    pool: SmtpPool | None = None,
    owner: tuple[str, str] | None = None,
) -> Delivered:
    """Submit ``raw`` once. Raises ``DeliveryFailed``; partial refusals are in the result.
    ``pool`` and ``owner`` (tenant, mailbox): reuse that mailbox's authenticated sessions."""
    if server.security == "none" and not allow_insecure:
        raise DeliveryFailed(
            "other", "the outgoing server has no TLS and the account did not allow that", True
        )
    key: PoolKey | None = None
    if pool is not None and pool.enabled and owner is not None:
        user, secret, mode = (
            (credential.username, credential.secret.get_secret_value(), credential.auth_mode)
            if credential is not None
            else (None, None, None)
        )
        key = pool.key(owner[0], owner[1], server, ehlo_name, user, secret, mode)
    try:
        async with asyncio.timeout(timeouts.attempt):
            if key is not None and pool is not None:
                return await _pooled(
                    pool, key, server, credential, mail_from, recipients, raw, tls_context,
                    timeouts, ehlo_name,
                )  # fmt: skip
            client = await _open(server, credential, tls_context, timeouts, ehlo_name)
            if pool is not None:  # off (per_key 0): counted all the same
                pool.stats.opened += 1
            delivered = await _transaction(client, mail_from, recipients, raw, None)
    except TimeoutError:
        raise DeliveryFailed("server_down", "the attempt took too long", permanent=False) from None
    await _quit(client, timeouts)  # outside the deadline: the message was accepted
    return delivered


class _Stale(Exception):
    """A pooled session failed its MAIL: it was dead or the server wants a new connection."""


async def _pooled(
    pool: SmtpPool,
    key: PoolKey,
    server: Server,
    credential: Credential | None,
    mail_from: str,
    recipients: Sequence[str],
    raw: bytes,
    tls_context: ssl.SSLContext,
    timeouts: Timeouts,
    ehlo_name: str,
) -> Delivered:
    session = pool.take(key)
    if session is not None:
        try:
            delivered = await _transaction(
                session.client, mail_from, recipients, raw, timeouts.connect
            )
        except _Stale:
            pool.stats.stale += 1
        else:
            pool.give(key, session)
            return delivered
    client = await _open(server, credential, tls_context, timeouts, ehlo_name)
    session = pool.opened(client)
    delivered = await _transaction(client, mail_from, recipients, raw, None)
    pool.give(key, session)
    return delivered


async def _open(
    server: Server,
    credential: Credential | None,
    tls_context: ssl.SSLContext,
    timeouts: Timeouts,
    ehlo_name: str,
) -> aiosmtplib.SMTP:
    """A new connection: connect (TLS), EHLO, STARTTLS, AUTH."""
    client = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        use_tls=server.security == "ssl",
        start_tls=server.security == "starttls",
        tls_context=tls_context,
        timeout=timeouts.command,
        local_hostname=ehlo_name,
    )
    stage = "connect"
    try:
        await client.connect(timeout=timeouts.connect)
        if credential is not None:
            stage = "auth"
            secret = credential.secret.get_secret_value()
            if credential.auth_mode == "oauth2":
                await client.auth_xoauth2(credential.username, secret)
            else:
                await client.login(credential.username, secret)
    except BaseException as exc:
        client.close()
        if not isinstance(exc, Exception):
            raise
        raise classify(exc, stage) from None
    return client


def _stale(exc: BaseException) -> bool:
    """A MAIL failure of a reused session that a new connection may not have: the connection
    is gone or silent, or a 4xx (e.g. 421 closing, too many messages on this connection)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
        return 400 <= exc.code < 500
    return isinstance(exc, (OSError, TimeoutError, aiosmtplib.SMTPException))


async def _transaction(
    client: aiosmtplib.SMTP,
    mail_from: str,
    recipients: Sequence[str],
    raw: bytes,
    reused_timeout: float | None,
) -> Delivered:
    """MAIL, RCPT, DATA on an open session. ``reused_timeout``: the session is a pooled one;
    MAIL gets this (shorter) timeout, and its failure raises ``_Stale``. Any failure closes
    the session; on success it is left open for the caller."""
    stage = "mail"
    try:
        if reused_timeout is not None:
            try:
                await client.mail(mail_from, timeout=reused_timeout)
            except Exception as exc:
                if _stale(exc):
                    raise _Stale() from exc
                raise
        else:
            await client.mail(mail_from)
        stage = "rcpt"
        accepted: list[str] = []
        refused: dict[str, str] = {}
        transient: DeliveryFailed | None = None
        for rcpt in recipients:
            try:
                await client.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[rcpt] = f"{exc.code} {exc.message}"
                if exc.code < 500 and transient is None:
                    transient = smtp_reply_failure(exc.code, exc.message, "rcpt")
        if transient is not None:
            # Deliver to nobody now and everyone on the retry, rather than split the message.
            raise transient
        if not accepted:
            raise DeliveryFailed(
                "recipient_refused", "every recipient was refused", permanent=True, refused=refused
            )
        stage = "data"
        reply = await client.data(raw)
    except BaseException as exc:
        client.close()
        if not isinstance(exc, Exception) or isinstance(exc, _Stale):
            raise
        raise classify(exc, stage) from None
    # accepted: nothing after this point may turn the outcome into a failure
    return Delivered(accepted, refused, f"{reply.code} {reply.message}")


async def _quit(client: aiosmtplib.SMTP, timeouts: Timeouts) -> None:
    try:
        await asyncio.wait_for(client.quit(), timeouts.connect)
    except Exception:
        client.close()
