"""Who is signed in to the console, and the double-submit CSRF token.

The user's bearer token lives in an HttpOnly, SameSite=Strict cookie (Secure over https), scoped
to ``/console``; the console verifies it like every service does (signature, expiry, tenant,
revocation) to know whose console to draw, and passes it on to the services, which decide
again. Every form POST carries a CSRF token that must equal the CSRF cookie's value.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass

from fastapi import Request, Response

from libs.common.auth import Principal, TokenVerifier
from libs.common.errors import MailroomError
from services.console.client import Api, Backends
from services.console.settings import ConsoleSettings

PATH = "/console"
SESSION_COOKIE = "mailroom_console_session"
CSRF_COOKIE = "mailroom_console_csrf"
OIDC_COOKIE = "mailroom_console_oidc"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{32,128}\Z")
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*\Z")


class SignInRequired(Exception):
    """No session, or one the services no longer accept: back to the sign-in page."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class CsrfRefused(Exception):
    pass


@dataclass(frozen=True)
class Session:
    token: str
    principal: Principal
    api: Api
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def subject(self) -> str:
        return self.principal.subject


def is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def secure_cookies(request: Request, settings: ConsoleSettings) -> bool:
    if settings.cookie_secure == "always":
        return True
    if settings.cookie_secure == "never":
        return False
    return is_https(request)


def csrf_token(request: Request) -> str:
    """The CSRF cookie's value, or a new one (set on the response by the route wrapper)."""
    existing = getattr(request.state, "csrf", None)
    if isinstance(existing, str):
        return existing
    value = request.cookies.get(CSRF_COOKIE, "")
    if not _TOKEN_SHAPE.match(value):
        value = secrets.token_urlsafe(32)
        request.state.new_csrf = value
    request.state.csrf = value
    return value


async def check_csrf(request: Request) -> None:
    """Refuse a state-changing request whose form field (or htmx header) does not equal the
    CSRF cookie (double submit): another site can make the browser post, not read the cookie."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else ""
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise CsrfRefused()


def set_cookie(
    response: Response,
    request: Request,
    settings: ConsoleSettings,
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    same_site: str = "strict",
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        secure=secure_cookies(request, settings),
        samesite=same_site,  # type: ignore[arg-type]
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=PATH)


def looks_like_token(value: str) -> bool:
    return 0 < len(value) <= 8192 and bool(_JWT_SHAPE.match(value))


async def verify(verifier: TokenVerifier, token: str) -> Principal:
    try:
        principal = await verifier.verify_async(token)
    except MailroomError as exc:
        raise SignInRequired(exc.message) from exc
    if principal.role == "service":
        raise SignInRequired("service tokens cannot sign in to the console")
    return principal


def current_cached(
    request: Request, verifier: TokenVerifier | None, backends: Backends
) -> Session | None:
    """The session when the token verifies without a network call (our own issuer)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if verifier is None or not looks_like_token(token) or not verifier.is_local(token):
        return None
    principal = verifier.verify(token)
    if principal.role == "service":
        return None
    return Session(token, principal, backends.for_token(token), csrf_token(request))


async def current(request: Request, verifier: TokenVerifier, backends: Backends) -> Session:
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        raise SignInRequired()
    if not looks_like_token(token):
        raise SignInRequired("the session cookie is not a token")
    principal = await verify(verifier, token)
    return Session(token, principal, backends.for_token(token), csrf_token(request))
