"""Why an EWS call failed, as a kind each service maps to its own classes (sync's failure
classes, the sender's reasons, the connection test's failures) and a message a person can act
on. ``detail`` holds the server's own words, shortened; never a secret."""

from __future__ import annotations

import re
from typing import Literal

import requests
from exchangelib import errors as e  # type: ignore[import-untyped]

Kind = Literal[
    "auth",  # the server (or the token endpoint) refused the credential
    "tls",  # certificate or handshake
    "network",  # host not found, refused, reset
    "timeout",
    "throttled",  # ErrorServerBusy: the server asks the client to back off
    "unavailable",  # a temporary problem on the server's side
    "disabled",  # EWS switched off for the mailbox or the organisation (403), or not there (404)
    "redirect",  # the URL redirects elsewhere (autodiscover would find the right one)
    "mailbox",  # signed in, but the mailbox does not exist or may not be opened
    "recipient",  # the message was refused for its recipients
    "denied",  # the credential may not do this (send as, impersonate)
    "sync_state",  # the sync state is not valid any more: sync again from scratch
    "not_allowed",  # a connection to an address the caller may not reach (network guard)
    "rejected",  # the server refused the request for good (size, quota, content)
    "protocol",  # anything else
]
MAX_DETAIL = 300


class EwsError(Exception):
    def __init__(
        self, kind: Kind, message: str, detail: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.message = message
        self.detail = _short(detail)
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.kind in ("network", "timeout", "throttled", "unavailable")


def _short(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()[:MAX_DETAIL]


_TLS = re.compile(
    r"CERTIFICATE_VERIFY_FAILED|certificate|SSLError|SSL:|WRONG_VERSION_NUMBER|TLSV1|handshake",
    re.IGNORECASE,
)
_DNS = re.compile(r"Name or service not known|nodename nor servname|getaddrinfo|NameResolution")
_REFUSED = re.compile(r"Connection refused|ECONNREFUSED|Errno 111")
_TIMEOUT = re.compile(r"timed out|Timeout", re.IGNORECASE)
_MAILBOX = (
    e.ErrorNonExistentMailbox,
    e.ErrorMailboxConfiguration,
    e.ErrorAccountDisabled,
    e.ErrorMissingEmailAddress,
)
_DENIED = (
    e.ErrorAccessDenied,
    e.ErrorImpersonateUserDenied,
    e.ErrorImpersonationDenied,
    e.ErrorImpersonationFailed,
    e.ErrorSendAsDenied,
    e.ErrorNoPublicFolderReplicaAvailable,
)
_TRANSIENT = (
    e.ErrorInternalServerTransientError,
    e.ErrorMailboxStoreUnavailable,
    e.ErrorMailboxMoveInProgress,
    e.ErrorTooManyObjectsOpened,
    e.ErrorADUnavailable,
    e.ErrorConnectionFailed,
)
_REJECTED = (
    e.ErrorMessageSizeExceeded,
    e.ErrorQuotaExceeded,
    e.ErrorSubmissionQuotaExceeded,
    e.ErrorMimeContentConversionFailed,
    e.ErrorMimeContentInvalid,
)


def _chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    cur: BaseException | None = exc
    while cur is not None and len(parts) < 6:
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return " | ".join(parts)


def tls_message(text: str, where: str) -> str:
    if "certificate has expired" in text:
        return f"the certificate of {where} has expired: the server's operator must renew it"
    if "Hostname mismatch" in text or "doesn't match" in text or "IP address mismatch" in text:
        return f"the certificate of {where} is for another host name: use the name it carries"
    if "self-signed" in text or "self signed" in text or "unable to get local issuer" in text:
        return (
            f"the certificate of {where} is not from a trusted authority: the server must use "
            "a public CA (or the operator adds its CA to the service's CA file)"
        )
    if "WRONG_VERSION_NUMBER" in text:
        return f"{where} does not speak TLS on this port: check https/http and the port"
    return f"TLS with {where} failed"


def classify(exc: BaseException, *, where: str = "the EWS server") -> EwsError:
    """An exception of exchangelib or requests as an :class:`EwsError`."""
    if isinstance(exc, EwsError):
        return exc
    name = type(exc).__name__
    text = _chain_text(exc)
    said = str(exc)
    if isinstance(exc, e.ErrorServerBusy):
        wait = exc.back_off
        after = f" (it asks to wait {wait:g} s)" if wait else ""
        return EwsError(
            "throttled",
            f"the Exchange server is throttling this mailbox (ErrorServerBusy){after}: "
            "it will be retried later",
            said,
            retry_after=wait,
        )
    if isinstance(exc, e.UnauthorizedError):
        if "locked out" in said:
            return EwsError(
                "auth", "the account is locked out: an administrator must unlock it", said
            )
        return EwsError(
            "auth",
            "the Exchange server refused the username or password (HTTP 401): check both "
            "(the username is often DOMAIN\\user or the full address)",
            said,
        )
    if isinstance(exc, e.ErrorInvalidSyncStateData):
        return EwsError("sync_state", "the server no longer accepts the saved sync state", said)
    if isinstance(exc, _TRANSIENT):
        return EwsError(
            "unavailable", f"the Exchange server is temporarily unavailable ({name})", said
        )
    if isinstance(exc, _MAILBOX):
        return EwsError(
            "mailbox",
            f"signed in, but the server has no mailbox for this address ({name}): check the "
            "address (it must be the mailbox's primary SMTP address)",
            said,
        )
    if isinstance(exc, _DENIED):
        return EwsError(
            "denied",
            f"signed in, but this login may not use the mailbox ({name}): grant it full "
            "access (or ApplicationImpersonation / an application access policy for app-only "
            "access)",
            said,
        )
    if isinstance(exc, e.ErrorInvalidRecipients | e.ErrorInvalidRecipientSubfilter):
        return EwsError("recipient", f"the server refused the recipients ({name})", said)
    if isinstance(exc, _REJECTED):
        return EwsError("rejected", f"the server refused the message ({name})", said)
    if isinstance(exc, e.CASError):
        return EwsError("disabled", f"the Exchange front end refused the request ({said})", said)
    if isinstance(exc, e.RedirectError):
        return EwsError(
            "redirect",
            f"{where} redirects to {exc.url}: EWS is not at this URL; use the EWS URL "
            "(https://<server>/EWS/Exchange.asmx) that autodiscover or the administrator names",
            said,
        )
    if isinstance(exc, e.MalformedResponseError) and "Code: 403" in said:
        return EwsError(
            "disabled",
            "the server forbids EWS for this mailbox (HTTP 403): an administrator must allow "
            "EWS (e.g. Set-CASMailbox -EwsEnabled $true)",
            said,
        )
    if isinstance(exc, e.MalformedResponseError) and ("Code: 404" in said or "Code: 405" in said):
        return EwsError(
            "disabled",
            f"there is no EWS service at this URL (HTTP {said.split('Code: ')[1][:3]}): check "
            "the URL, usually https://<server>/EWS/Exchange.asmx",
            said,
        )
    if isinstance(exc, e.TransportError) and "Failed to get auth type" in said:
        return EwsError(
            "disabled",
            f"{where} offers no sign-in at this URL, so there is no EWS service here: check "
            "the URL, usually https://<server>/EWS/Exchange.asmx",
            said,
        )
    if _TLS.search(text) and not isinstance(exc, e.ResponseMessageError):
        return EwsError("tls", tls_message(text, where), text)
    if isinstance(exc, requests.Timeout) or (
        isinstance(exc, e.ErrorTimeoutExpired | TimeoutError) and _TIMEOUT.search(text)
    ):
        return EwsError("timeout", f"{where} did not answer in time", text)
    if _DNS.search(text):
        return EwsError("network", f"the host name of {where} does not resolve", text)
    if _REFUSED.search(text):
        return EwsError("network", f"{where} refused the connection (nothing listens there)", text)
    if isinstance(exc, requests.RequestException | OSError | e.ErrorTimeoutExpired):
        return EwsError("network", f"cannot reach {where} ({name})", text)
    if isinstance(exc, e.SOAPError | e.MalformedResponseError):
        return EwsError(
            "protocol", f"{where} did not answer like an EWS server: check the URL", said
        )
    if isinstance(exc, e.ResponseMessageError | e.TransportError):
        return EwsError("protocol", f"the Exchange server refused the request ({name})", said)
    return EwsError("protocol", f"{name}: {said}"[:MAX_DETAIL])
