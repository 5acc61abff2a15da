"""Lease a mailbox credential from the registry (NATS request-reply).

The registry is the only holder of mailbox secrets; sync and sender ask for one each time they
connect::

    lease = await lease_credential(nc, tenant_id, account_id, "sync", "imap poll")
    password = lease.secret.get_secret_value()   # use it now; never log, store or cache it
                                                 # beyond lease.lease_expires_at

Every lease is audited by the registry (CredentialAccessed). Disabled or deleted accounts,
accounts without a credential and unknown services are refused with :class:`LeaseRefused`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from libs.common.errors import MailroomError, Unavailable
from libs.common.events.registry import Server
from libs.common.logs import remember_secret
from libs.common.subjects import TENANT_PATTERN, rpc_subject

LEASE_SUBJECT = rpc_subject("registry", "lease")
LeaseService = Literal["sync", "sender"]


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    account_id: str = Field(min_length=1, max_length=64)
    service: str = Field(
        min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9-]*$", description="sync or sender"
    )  # the events' actor is ``service:<service>`` (a NATS header): a plain name only
    purpose: str = Field(min_length=1, max_length=200)
    refresh: bool = False
    """OAuth2: the access token was just refused; refresh it (once) instead of the cached one."""


class Lease(BaseModel):
    """A leased credential. ``secret`` is a ``SecretStr``: repr/str/JSON never show it."""

    model_config = ConfigDict(frozen=True)
    tenant_id: str
    account_id: str
    address: str
    service: str
    purpose: str
    auth_mode: Literal["password", "app_password", "oauth2"]
    username: str
    field: str
    credential_version: int
    secret: SecretStr
    lease_expires_at: datetime
    incoming: Server | None = None
    outgoing: Server | None = None
    custom_smtp: Server | None = None

    def wire(self) -> dict[str, Any]:
        """The reply body, secret in clear (registry side only)."""
        doc = self.model_dump(mode="json", exclude={"secret"})
        doc["secret"] = self.secret.get_secret_value()
        return doc


class LeaseRefused(MailroomError):
    """The registry refused the lease (``code`` says why: not_found, account_disabled, ...)."""

    status = 409
    code = "lease_refused"


_STATUS = {
    "not_found": 404,
    "account_deleted": 404,
    "invalid_request": 422,
    "unknown_service": 422,
    "oauth_provider_unavailable": 503,  # retry later; ``oauth_reconnect_required`` needs a person
}


def refusal(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


async def lease_credential(
    nc: Any,
    tenant_id: str,
    account_id: str,
    service: LeaseService | str,
    purpose: str,
    *,
    timeout: float = 5.0,
    refresh: bool = False,
) -> Lease:
    """Ask the registry for ``account_id``'s secret; raise ``LeaseRefused`` or ``Unavailable``.

    For an OAuth2 account the secret is a current access token; ``refresh=True`` (after the
    server refused the last one) makes the registry refresh it first."""
    request = LeaseRequest(
        tenant_id=tenant_id,
        account_id=account_id,
        service=service,
        purpose=purpose,
        refresh=refresh,
    )
    try:
        msg = await nc.request(LEASE_SUBJECT, request.model_dump_json().encode(), timeout=timeout)
    except Exception as exc:  # timeout, no responders, connection closed
        raise Unavailable(
            f"the registry did not answer the lease request ({type(exc).__name__})",
            code="registry_unavailable",
        ) from None
    try:
        reply = json.loads(msg.data)
        if reply.get("ok") is True:
            lease = Lease.model_validate(reply["lease"])
            remember_secret(lease.secret.get_secret_value())  # never in this process's logs
            return lease
        error = reply["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError):
        raise Unavailable(
            "the registry's lease reply is malformed", code="registry_unavailable"
        ) from None
    raise LeaseRefused(message, code=code, status=_STATUS.get(code, 409))
