"""OAuth2 connection of accounts: ``GET /v1/oauth/{provider}/start`` and ``/callback``.

``start`` (bearer token, ``configure`` on the account) answers 302 to the provider with state
and an S256 code challenge, and sets a short-lived, HttpOnly cookie binding the request to this
browser. The provider sends the browser back to ``callback``, which needs that cookie (or the
starter's bearer token), exchanges the code and stores the tokens encrypted; the answer says
what was connected, never a token.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel

from libs.common.auth import Principal
from libs.common.http import ERROR_SCHEMA, ERRORS
from libs.common.service import Caller, current_principal
from services.registry.oauth_config import PROVIDER_NAME
from services.registry.oauth_flow import OAuthFlow
from services.registry.oauth_states import digest
from services.registry.permissions import Permissions

COOKIE_PATH = "/v1/oauth"
ProviderName = Annotated[
    str, Path(pattern=PROVIDER_NAME.pattern, max_length=40, description="configured provider")
]


class OAuthConnectedOut(BaseModel):
    account_id: str
    provider: str
    connected: bool = True
    credential_version: int
    scope: str
    access_expires_at: datetime


def cookie_name(state: str) -> str:
    """One cookie per authorization in flight, so two tabs do not overwrite each other."""
    return f"mailroom_oauth_{digest(state)[:16]}"


async def optional_principal(request: Request) -> Principal | None:
    if not request.headers.get("authorization"):
        return None
    return await current_principal(request)


def build_oauth_router(flow: OAuthFlow, perms: Permissions) -> APIRouter:
    errors: dict[int | str, dict[str, Any]] = {code: ERROR_SCHEMA for code in (*ERRORS, 502)}
    r = APIRouter(prefix="/v1/oauth", tags=["oauth"], responses=errors)

    @r.get(
        "/{provider}/start",
        status_code=302,
        response_class=RedirectResponse,
        responses={302: {"description": "to the provider's authorization page"}},
    )
    async def oauth_start(
        caller: Caller,
        provider: ProviderName,
        request: Request,
        account: Annotated[str, Query(min_length=1, max_length=64, description="account id")],
    ) -> RedirectResponse:
        """Connect an account (``auth_mode: oauth2``) to its provider: redirects to the
        provider's consent page (authorization code with PKCE). Needs ``configure``."""
        await perms.require(caller, account, "configure")
        redirect_uri = flow.redirect_uri(provider, str(request.base_url), caller.tenant_id)
        started = await flow.start(caller, provider, account, redirect_uri)
        response = RedirectResponse(started.location, status_code=302)
        response.headers["Cache-Control"] = "no-store"
        response.set_cookie(
            cookie_name(started.state),
            started.binding,
            max_age=started.ttl_s,
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="lax",  # sent on the provider's top-level redirect back to the callback
        )
        return response

    @r.get("/{provider}/callback", response_model=OAuthConnectedOut)
    async def oauth_callback(
        provider: ProviderName,
        request: Request,
        response: Response,
        state: Annotated[str | None, Query(max_length=400)] = None,
        code: Annotated[str | None, Query(max_length=4096)] = None,
        error: Annotated[str | None, Query(max_length=200)] = None,
    ) -> OAuthConnectedOut:
        """Where the provider sends the browser back: exchanges the code (with the PKCE
        verifier) and stores the tokens encrypted (``CredentialRotated``). The state works
        once, for ``MAILROOM_REGISTRY_OAUTH_STATE_TTL_S``, in the browser that started."""
        principal = await optional_principal(request)
        binding = request.cookies.get(cookie_name(state)) if state else None
        done = await flow.callback(
            provider, state=state, code=code, error=error, principal=principal, binding=binding
        )
        response.headers["Cache-Control"] = "no-store"
        if state:
            response.delete_cookie(cookie_name(state), path=COOKIE_PATH)
        return OAuthConnectedOut(
            account_id=done.account_id,
            provider=done.provider,
            credential_version=done.credential_version,
            scope=done.scope,
            access_expires_at=done.access_expires_at,
        )

    return r
