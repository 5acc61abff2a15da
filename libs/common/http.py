"""HTTP plumbing shared by every service API: error bodies, health, request context."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common.errors import MailroomError
from libs.common.store.eventstore import ConcurrencyError

ERROR_SCHEMA = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "details": {"type": "object"},
                        },
                        "required": ["code", "message"],
                    }
                },
                "required": ["error"],
            }
        }
    },
}
log = logging.getLogger("mailroom.http")

_HTTP_CODES = {
    400: "malformed_body",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
}
ERRORS = {code: ERROR_SCHEMA for code in (400, 401, 403, 404, 409, 422, 503)}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MailroomError)
    async def _mailroom(_: Request, exc: MailroomError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(ConcurrencyError)
    async def _conflict(_: Request, exc: ConcurrencyError) -> JSONResponse:
        body = {"error": {"code": exc.code, "message": str(exc)}}
        return JSONResponse(body, status_code=409)

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        # The database went away mid-request (connection dropped, failover, restart). The
        # transaction was rolled back, or — if the connection broke during COMMIT — its fate is
        # unknown: retrying with the same Idempotency-Key is safe either way.
        if isinstance(exc, IntegrityError):
            body = {"error": {"code": "conflict", "message": "the change conflicts with data"}}
            return JSONResponse(body, status_code=409)
        log.warning("database error: %s", type(exc.orig).__name__ if exc.orig else exc)
        body = {
            "error": {
                "code": "database_unavailable",
                "message": "the database is unavailable; retry (with the same Idempotency-Key)",
            }
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own errors (malformed JSON body, unknown route, wrong method) in our shape.
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if code == "malformed_body":
            message = "the request body is not valid JSON"
        body = {"error": {"code": code, "message": message}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "message": "invalid request"}
        body = {
            "error": {
                "code": "invalid_request",
                "message": f"{first['field']}: {first['message']}",
                "details": {"problems": problems},
            }
        }
        return JSONResponse(body, status_code=422)
