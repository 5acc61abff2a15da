"""Why a connection test failed, in words a person can act on.

:func:`classify_error` turns an exception of a step into a failure class and a message;
:func:`classify_reply` reads a server's refusal of a login (providers say "app password
required", "IMAP is not enabled", "use the authorization code" in their own words).
"""

from __future__ import annotations

import errno
import re
import ssl
from dataclasses import dataclass
from typing import Literal

Failure = Literal[
    "host_not_found",
    "dns_failed",
    "target_not_allowed",
    "connection_refused",
    "unreachable",
    "timeout",
    "tls_mismatch",
    "tls_failed",
    "cert_untrusted",
    "cert_hostname",
    "cert_expired",
    "cert_invalid",
    "starttls_unavailable",
    "plaintext_disabled",
    "auth_failed",
    "app_password_required",
    "protocol_disabled",
    "oauth_required",
    "account_blocked",
    "server_unavailable",
    "mailbox_unavailable",
    "auth_unavailable",
    "protocol_error",
    "no_credential",
]

#: Ports with the protocol spoken there: (implicit TLS, plain/STARTTLS).
PORTS = {"imap": (993, 143), "pop3": (995, 110), "smtp": (465, 587)}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    failure: Failure
    message: str


# Most specific first: a Gmail refusal mentions both "password" and "application-specific".
_RULES: tuple[tuple[str, Failure, str], ...] = (
    (
        r"application-specific password|app[- ]?password|InvalidSecondFactor|5\.7\.9\b",
        "app_password_required",
        "the provider wants an app password for mail programs (2-step verification is "
        "on): create one in the account's security settings and use it as the password",
    ),
    (
        r"authori[sz](ed|ation) code|授权码|专用密码|client ?password|客户端",
        "app_password_required",
        "the provider wants its authorization code (授权码) or client password, not the "
        "login password: generate it in the mailbox's settings (POP3/IMAP/SMTP section)",
    ),
    (
        r"not enabled for (IMAP|POP)|(IMAP|POP3?) (access )?(is )?(disabled|not enabled|"
        r"turned off)|SmtpClientAuthentication is disabled|(IMAP|POP3?|SMTP) service "
        r"(is )?(disabled|closed|not open)|服务(未开启|已关闭)",
        "protocol_disabled",
        "{what} access is switched off for this mailbox at the provider: switch it on in "
        "the mailbox's settings (e.g. Gmail: Settings, Forwarding and POP/IMAP)",
    ),
    (
        r"basic auth(entication)? is disabled|BasicAuthBlocked|modern authentication|"
        r"OAuth ?2? (is )?required",
        "oauth_required",
        "the provider accepts only OAuth2 (modern authentication) here, no passwords: "
        "use auth_mode oauth2",
    ),
    (
        r"plaintext auth\w* (not allowed|disallowed)|LOGINDISABLED|PRIVACYREQUIRED|"
        r"must issue a STARTTLS|secure connection is requi|5\.7\.0 .*(TLS|encrypt)",
        "plaintext_disabled",
        "the server refuses passwords over an unencrypted connection: use security ssl "
        "(or starttls)",
    ),
    (
        r"(account|user|mailbox).{0,40}(locked|suspended|blocked|frozen|disabled)|"
        r"too many (login|failed|auth)|web ?login required|unsafe login",
        "account_blocked",
        "the provider has blocked logins for this mailbox for now (locked, suspended or "
        "flagged as suspicious): sign in on the provider's website to clear it",
    ),
    (
        r"\[UNAVAILABLE\]|temporar|try again later|\b4\d\d\b|\[SERVERBUG\]",
        "server_unavailable",
        "the server cannot log you in right now (a temporary problem on its side): try again later",
    ),
    (
        r".*",
        "auth_failed",
        "the server refused the username or password: check both (the username is often "
        "the full email address)",
    ),
)
_REPLIES = tuple((re.compile(p, re.IGNORECASE), f, m) for p, f, m in _RULES)


def classify_reply(text: str, what: str) -> Diagnosis:
    """A login refusal (``text`` is the server's reply) as a diagnosis."""
    for pattern, failure, message in _REPLIES:
        if pattern.search(text):
            return Diagnosis(failure, message.format(what=what.upper()))
    raise AssertionError("unreachable: the last pattern matches everything")


_CERT_CODES: dict[int, tuple[Failure, str]] = {
    10: ("cert_expired", "the server's certificate has expired"),
    9: ("cert_expired", "the server's certificate is not valid yet"),
    62: ("cert_hostname", "the server's certificate is not for {host}"),
    18: ("cert_untrusted", "the server's certificate is self-signed"),
    19: ("cert_untrusted", "the server's certificate chain ends in an untrusted root"),
    20: ("cert_untrusted", "the server's certificate is issued by an unknown authority"),
    21: ("cert_untrusted", "the server's certificate cannot be verified (missing issuer)"),
    2: ("cert_untrusted", "the server's certificate is issued by an unknown authority"),
}
_PLAIN_TEXT = re.compile(
    r"WRONG_VERSION_NUMBER|UNKNOWN_PROTOCOL|HTTP_REQUEST|PACKET_LENGTH_TOO_LONG|"
    r"RECORD_LAYER_FAILURE|unexpected eof|EOF occurred",
    re.IGNORECASE,
)


def cert_diagnosis(exc: ssl.SSLCertVerificationError, host: str) -> Diagnosis:
    code = getattr(exc, "verify_code", 0) or 0
    failure, message = _CERT_CODES.get(
        code, ("cert_invalid", f"the server's certificate is not valid ({exc.verify_message})")
    )
    advice = {
        "cert_expired": "the provider must renew it",
        "cert_hostname": "use the host name the certificate names (often the provider's "
        "own server name, not your domain)",
        "cert_untrusted": "the server must present a certificate of a public CA (or the "
        "operator adds the CA to MAILROOM_REGISTRY_CA_FILE)",
        "cert_invalid": "the server must present a valid certificate",
    }[failure]
    return Diagnosis(failure, f"{message.format(host=host)}: {advice}")


def classify_error(
    exc: BaseException, *, step: str, host: str, port: int, protocol: str, timeout: float
) -> Diagnosis:
    """A step's exception as a diagnosis."""
    where = f"{host}:{port}"
    implicit, plain = PORTS.get(protocol, (0, 0))
    if isinstance(exc, TimeoutError):
        what = {
            "tcp": f"no answer from {where} within {timeout:g}s: the host is down or a firewall "
            "drops the connection",
            "tls": f"the TLS handshake with {where} did not finish within {timeout:g}s",
            "greeting": f"{where} accepted the connection but said nothing within {timeout:g}s: "
            f"is this the {protocol.upper()} port?",
        }.get(step, f"{where} did not answer within {timeout:g}s")
        return Diagnosis("timeout", what)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return cert_diagnosis(exc, host)
    if isinstance(exc, ssl.SSLError) and _PLAIN_TEXT.search(str(exc)):
        return Diagnosis(
            "tls_mismatch",
            f"{where} did not answer the TLS handshake with TLS: it speaks plain text first "
            f"(STARTTLS); use security starttls on this port, or ssl on port {implicit}",
        )
    if isinstance(exc, ssl.SSLError):
        return Diagnosis("tls_failed", f"TLS with {where} failed: {exc.reason or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return Diagnosis(
            "connection_refused",
            f"{where} refused the connection: nothing listens on port {port} "
            f"({protocol.upper()} usually uses {implicit} with ssl or {plain} with starttls)",
        )
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return Diagnosis("protocol_error", f"{where} closed the connection during {step}")
    if isinstance(exc, OSError) and exc.errno in (
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EADDRNOTAVAIL,
    ):
        return Diagnosis("unreachable", f"{where} cannot be reached from here (no route)")
    if isinstance(exc, OSError):
        return Diagnosis("protocol_error", f"{where}: {exc.strerror or exc}")
    return Diagnosis("protocol_error", f"{where}: {type(exc).__name__}: {exc}"[:300])


class StepFailed(Exception):
    """A step of a connection test failed; later steps are not tried."""

    def __init__(self, diagnosis: Diagnosis, detail: str = "") -> None:
        super().__init__(diagnosis.message)
        self.diagnosis = diagnosis
        self.detail = detail
