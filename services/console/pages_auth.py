"""Sign-in and sign-out: a pasted token (the embedded stack's demo token) or OIDC.

OIDC is the authorization-code flow with PKCE: ``/console/auth/start`` sends the browser to the
provider with a one-time state and code challenge kept in a short-lived HttpOnly cookie;
``/console/auth/callback`` checks the state, exchanges the code for the provider's token, has it
verified like every service does (``MAILROOM_OIDC_*``) and keeps it as the session.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from services.console.client import ApiError
from services.console.session import (
    OIDC_COOKIE,
    SESSION_COOKIE,
    SignInRequired,
    check_csrf,
    clear_cookie,
    looks_like_token,
    set_cookie,
    verify,
)
from services.console.settings import ConsoleSettings
from services.console.web import Console, redirect, route_class


def safe_next(value: str | None) -> str:
    """Only a console path: never another site (``//evil``, ``https://…``, ``/\\evil``)."""
    if not value or not value.startswith("/console/") or value.startswith("/console//"):
        return "/console/"
    if any(c in value for c in ("\\", "\r", "\n", "\t")):
        return "/console/"
    return value


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_auth_router(console: Console) -> APIRouter:
    r = APIRouter(prefix="/console", include_in_schema=False, route_class=route_class(console))
    settings = console.settings

    def signin_page(
        request: Request, *, status: int = 200, error: str = "", next_url: str = "/console/"
    ) -> Response:
        return console.page(
            request,
            None,
            "signin.html",
            status=status,
            error=error,
            next=safe_next(next_url),
            reason=request.query_params.get("reason", ""),
            demo=settings.demo_sign_in,
            oidc_enabled=settings.oidc_enabled,
            oidc_missing=settings.oidc_missing(),
        )

    @r.get("/signin")
    async def signin_form(request: Request, next: str = "/console/") -> Response:
        return signin_page(request, next_url=next)

    @r.post("/signin")
    async def signin(request: Request) -> Response:
        await check_csrf(request)
        form = await request.form()
        token = form.get("token")
        next_url = safe_next(form.get("next") if isinstance(form.get("next"), str) else None)  # type: ignore[arg-type]
        if not settings.demo_sign_in:
            return signin_page(
                request, status=403, error="Signing in with a token is switched off here."
            )
        if not isinstance(token, str) or not looks_like_token(token.strip()):
            return signin_page(
                request,
                status=422,
                error="That is not a token: paste the whole token (three parts joined by dots).",
                next_url=next_url,
            )
        token = token.strip()
        try:
            assert console.verifier is not None
            await verify(console.verifier, token)
        except SignInRequired as exc:
            return signin_page(
                request, status=401, error=f"The token was refused: {exc.reason}", next_url=next_url
            )
        response = redirect(next_url)
        set_cookie(
            response, request, settings, SESSION_COOKIE, token, max_age=settings.session_max_age_s
        )
        return response

    @r.post("/signout")
    async def signout(request: Request) -> Response:
        await check_csrf(request)
        response = redirect("/console/signin")
        clear_cookie(response, SESSION_COOKIE)
        return response

    @r.get("/auth/start")
    async def oidc_start(request: Request, next: str = "/console/") -> Response:
        if not settings.oidc_enabled:
            missing = ", ".join(settings.oidc_missing())
            return console.error(
                request,
                404,
                "Single sign-on is not configured",
                f"Set {missing} to sign in with the organisation's provider.",
            )
        state = secrets.token_urlsafe(24)
        verifier, challenge = _pkce()
        query = {
            "response_type": "code",
            "client_id": settings.oidc_client_id,
            "redirect_uri": _redirect_uri(settings, request),
            "scope": settings.oidc_scopes,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        assert settings.oidc_authorize_url is not None
        sep = "&" if "?" in settings.oidc_authorize_url else "?"
        response = RedirectResponse(
            settings.oidc_authorize_url + sep + urlencode(query), status_code=303
        )
        # Lax: the provider's redirect back is a cross-site navigation (Strict would drop it).
        value = f"{state}.{verifier}.{safe_next(next)}"
        set_cookie(response, request, settings, OIDC_COOKIE, value, max_age=600, same_site="lax")
        return response

    @r.get("/auth/callback")
    async def oidc_callback(
        request: Request, code: str = "", state: str = "", error: str = ""
    ) -> Response:
        stored = request.cookies.get(OIDC_COOKIE, "")
        parts = stored.split(".", 2)
        if error:
            return signin_page(request, status=401, error=f"The provider refused: {error[:200]}")
        if len(parts) != 3 or not state or not secrets.compare_digest(parts[0], state):
            return signin_page(
                request, status=400, error="The sign-in expired or came from elsewhere; try again."
            )
        if not code or len(code) > 4096:
            return signin_page(request, status=400, error="The provider sent no code.")
        try:
            token = await _exchange(console, request, code, parts[1])
            assert console.verifier is not None
            await verify(console.verifier, token)
        except ApiError as exc:
            return signin_page(request, status=exc.status, error=exc.message)
        except SignInRequired as exc:
            return signin_page(request, status=401, error=f"The token was refused: {exc.reason}")
        # A page, not a redirect: the SameSite=Strict session cookie is only sent once the
        # browser navigates from our own site.
        response = console.page(request, None, "signed_in.html", next=safe_next(parts[2]))
        set_cookie(
            response, request, settings, SESSION_COOKIE, token, max_age=settings.session_max_age_s
        )
        clear_cookie(response, OIDC_COOKIE)
        return response

    return r


def _redirect_uri(settings: ConsoleSettings, request: Request) -> str:
    return settings.oidc_redirect_url or str(request.url_for("oidc_callback"))


async def _exchange(console: Console, request: Request, code: str, verifier: str) -> str:
    s = console.settings
    assert s.oidc_token_url is not None
    data: dict[str, Any] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _redirect_uri(s, request),
        "client_id": s.oidc_client_id,
        "code_verifier": verifier,
    }
    if s.oidc_client_secret:
        data["client_secret"] = s.oidc_client_secret
    try:
        r = await console.backends.http().post(s.oidc_token_url, data=data)
    except httpx.HTTPError as exc:
        raise ApiError(502, "provider_unreachable", "the sign-in provider did not answer") from exc
    try:
        body = r.json()
    except ValueError:
        body = {}
    token = body.get(s.oidc_token_field) if isinstance(body, dict) else None
    if r.status_code >= 400 or not isinstance(token, str) or not looks_like_token(token):
        raise ApiError(401, "code_exchange_failed", "the provider did not give a usable token")
    return token
