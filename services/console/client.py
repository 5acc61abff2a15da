"""The console's HTTP client to the other services' public APIs.

Every call carries the signed-in user's bearer token — never a service token — so each backend
decides what the user may see and do, exactly as for any other API client. In the embedded
stack every API is served by this same host; apart, each service has its own base URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from services.console.settings import ConsoleSettings

T = TypeVar("T")
R = TypeVar("R")


class ApiError(Exception):
    """A backend refused or failed: its status, code and human message (as the API said)."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    @classmethod
    def of(cls, r: httpx.Response) -> ApiError:
        try:
            err = r.json().get("error", {})
        except (ValueError, AttributeError):
            err = {}
        if not isinstance(err, dict):
            err = {}
        return cls(
            r.status_code,
            str(err.get("code") or "http_error"),
            str(err.get("message") or f"the service answered {r.status_code}"),
            err.get("details") if isinstance(err.get("details"), dict) else None,
        )


@dataclass
class Backends:
    """Where each service's API is, and the shared connection pool."""

    settings: ConsoleSettings
    fallback: str
    transport: httpx.AsyncBaseTransport | None = None
    _http: httpx.AsyncClient | None = field(default=None, repr=False)

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                transport=self.transport,
                timeout=self.settings.timeout_s,
                follow_redirects=False,
                headers={"User-Agent": "mailroom-console"},
            )
        return self._http

    def url(self, service: str, path: str) -> str:
        return self.settings.base_url(service, self.fallback) + path

    def for_token(self, token: str) -> Api:
        return Api(self, token)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


class Api:
    """Calls on behalf of one signed-in user."""

    def __init__(self, backends: Backends, token: str) -> None:
        self.backends = backends
        self._auth = {"Authorization": f"Bearer {token}"}

    async def request(
        self,
        service: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        ok: Iterable[int] = (),
    ) -> httpx.Response:
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        try:
            r = await self.backends.http().request(
                method,
                self.backends.url(service, path),
                params=clean,
                json=json,
                content=content,
                headers={**self._auth, **(headers or {})},
            )
        except httpx.HTTPError as exc:
            raise ApiError(
                502,
                "service_unreachable",
                f"the {service} service did not answer ({type(exc).__name__}); try again",
            ) from exc
        if r.status_code >= 400 and r.status_code not in set(ok):
            raise ApiError.of(r)
        return r

    async def get(self, service: str, path: str, **params: Any) -> Any:
        return (await self.request(service, "GET", path, params=params)).json()

    async def post(self, service: str, path: str, body: Any = None, **params: Any) -> Any:
        r = await self.request(service, "POST", path, params=params, json=body)
        return r.json() if r.content else None

    async def put(self, service: str, path: str, body: Any) -> Any:
        return (await self.request(service, "PUT", path, json=body)).json()

    async def patch(self, service: str, path: str, body: Any) -> Any:
        return (await self.request(service, "PATCH", path, json=body)).json()

    async def delete(self, service: str, path: str) -> Any:
        r = await self.request(service, "DELETE", path)
        return r.json() if r.content else None

    async def maybe(self, call: Awaitable[T]) -> T | None:
        """The answer, or None when the backend refused (403/404): not everyone may see all."""
        try:
            return await call
        except ApiError as exc:
            if exc.status in (401, 403, 404, 409):
                return None
            raise

    async def all_pages(
        self, service: str, path: str, *, limit: int = 500, most: int = 20, **params: Any
    ) -> list[dict[str, Any]]:
        """Every item of a cursor-paginated list (at most ``most`` pages)."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(most):
            page = await self.get(service, path, limit=limit, cursor=cursor, **params)
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return items

    @asynccontextmanager
    async def stream(
        self, service: str, method: str, path: str, **kw: Any
    ) -> AsyncIterator[httpx.Response]:
        clean = {k: v for k, v in (kw.pop("params", None) or {}).items() if v not in (None, "")}
        headers = {**self._auth, **kw.pop("headers", {})}
        try:
            async with self.backends.http().stream(
                method, self.backends.url(service, path), params=clean, headers=headers, **kw
            ) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise ApiError.of(r)
                yield r
        except httpx.HTTPError as exc:
            raise ApiError(
                502, "service_unreachable", f"the {service} service did not answer"
            ) from exc


async def gather_limited(
    items: Iterable[T], call: Callable[[T], Awaitable[R]], limit: int = 8
) -> list[R]:
    """``call`` on every item, at most ``limit`` at once, answers in order."""
    sem = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with sem:
            return await call(item)

    return list(await asyncio.gather(*(one(i) for i in items)))
