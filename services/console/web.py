"""The console's web plumbing: templates, the page wrapper, errors as pages, security headers.

Every console route goes through :func:`route_class`: a backend's refusal becomes a page (or an
htmx fragment) with the backend's 4xx status and friendly message, an expired session goes
back to sign-in, a missing CSRF token is a 403 — never a 500 — and every answer carries the
security headers (CSP without inline scripts, no framing, no caching, no referrer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common.auth import TokenVerifier
from services.console import fmt
from services.console.client import ApiError, Backends
from services.console.session import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    CsrfRefused,
    Session,
    SignInRequired,
    clear_cookie,
    csrf_token,
    current,
    current_cached,
    set_cookie,
)
from services.console.settings import ConsoleSettings

log = logging.getLogger("mailroom.console")
HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NOTICES = {
    "signed_in": "Signed in.",
    "saved": "Saved.",
    "added": "Mailbox added. Its first sync starts in a moment.",
    "granted": "Access granted.",
    "revoked": "Access revoked.",
    "disabled": "Mailbox disabled: no sync, no sending, no edits until reactivated.",
    "reactivated": "Mailbox reactivated.",
    "credential": "Credential replaced.",
    "signature": "Signature saved.",
    "signature_removed": "Signature removed.",
    "sync": "Sync requested: the status updates in a moment.",
    "person_added": "Person added.",
    "reinstated": "Person reinstated (their grants are not restored automatically).",
    "deleted": "Mailbox deleted; its stored credential was destroyed.",
}


@dataclass
class Console:
    settings: ConsoleSettings
    backends: Backends
    verifier: TokenVerifier | None = None
    env: Environment = field(init=False)

    def __post_init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"], default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        fmt.install(self.env)

    async def session(self, request: Request) -> Session:
        if self.verifier is None:
            raise SignInRequired("the console is starting; try again in a moment")
        return await current(request, self.verifier, self.backends)

    def render(self, template: str, **ctx: Any) -> str:
        return self.env.get_template(template).render(**ctx)

    def page(
        self,
        request: Request,
        session: Session | None,
        template: str,
        *,
        status: int = 200,
        **ctx: Any,
    ) -> HTMLResponse:
        notice = NOTICES.get(request.query_params.get("notice", ""))
        body = self.render(
            template,
            request=request,
            session=session,
            principal=session.principal if session else None,
            csrf=session.csrf if session else csrf_token(request),
            notice=notice,
            htmx=is_htmx(request),
            path=request.url.path,
            poll_s=self.settings.status_poll_s,
            **ctx,
        )
        return HTMLResponse(body, status_code=status)

    def error(self, request: Request, status: int, title: str, message: str) -> HTMLResponse:
        session: Session | None
        try:  # the signed-in header on an error page: keys already at hand only, no fetch
            session = current_cached(request, self.verifier, self.backends)
        except Exception:
            session = None
        template = "_alert.html" if is_htmx(request) else "error.html"
        return self.page(
            request, session, template, status=status, title=title, message=message, kind="error"
        )


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def redirect(url: str, notice: str | None = None) -> RedirectResponse:
    if notice:
        url += ("&" if "?" in url else "?") + f"notice={notice}"
    return RedirectResponse(url, status_code=303)


def sign_in_redirect(request: Request, reason: str) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    url = "/console/signin?next=" + quote(target if request.method == "GET" else "/console/")
    if reason:
        url += "&reason=expired"
    if is_htmx(request):
        response: Response = Response(status_code=401, headers={"HX-Redirect": url})
    else:
        response = RedirectResponse(url, status_code=303)
    if reason:
        clear_cookie(response, SESSION_COOKIE)
    return response


_TITLES = {
    400: "That request was not understood",
    401: "Please sign in again",
    403: "Not allowed",
    404: "Not found",
    409: "That could not be done now",
    413: "Too large",
    422: "Please check what you entered",
    429: "Too many requests",
}


def route_class(console: Console) -> type[APIRoute]:
    class ConsoleRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            original = super().get_route_handler()

            async def handler(request: Request) -> Response:
                try:
                    response = await original(request)
                except SignInRequired as exc:
                    response = sign_in_redirect(request, exc.reason)
                except CsrfRefused:
                    response = console.error(
                        request,
                        403,
                        "The form expired",
                        "This form's security token is missing or does not match. Reload the "
                        "page and try again.",
                    )
                except ApiError as exc:
                    if exc.status == 401:
                        response = sign_in_redirect(request, exc.message)
                    else:
                        status = exc.status if 400 <= exc.status < 500 else 502
                        title = _TITLES.get(status, "A service is not available")
                        response = console.error(request, status, title, exc.message)
                except RequestValidationError as exc:
                    first = exc.errors()[0] if exc.errors() else {}
                    where = ".".join(str(p) for p in first.get("loc", ()) if p != "query")
                    message = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid"
                    response = console.error(request, 422, _TITLES[422], message)
                except StarletteHTTPException as exc:
                    status = exc.status_code
                    message = exc.detail if isinstance(exc.detail, str) else "request refused"
                    response = console.error(request, status, _TITLES.get(status, ""), message)
                finish(console, request, response)
                return response

            return handler

    return ConsoleRoute


def finish(console: Console, request: Request, response: Response) -> None:
    new_csrf = getattr(request.state, "new_csrf", None)
    if isinstance(new_csrf, str):
        set_cookie(response, request, console.settings, CSRF_COOKIE, new_csrf)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.status_code == 200 and response.media_type == "text/html":
        response.headers["Vary"] = "HX-Request, Cookie"


def form_str(form: Any, name: str, *, max_length: int = 1000) -> str:
    """A text field of a submitted form, stripped ('' if absent); too long is a 422."""
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    value = value.strip()
    if len(value) > max_length:
        raise ApiError(422, "too_long", f"{name} is longer than {max_length} characters")
    return value


def form_int(form: Any, name: str, *, low: int = 0, high: int = 10**9) -> int | None:
    raw = form_str(form, name, max_length=20)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "not_a_number", f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise ApiError(422, "out_of_range", f"{name} must be between {low} and {high}")
    return value
