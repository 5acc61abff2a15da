"""Errors that reach an API caller: an HTTP status, a machine-readable code, a human message."""

from __future__ import annotations

from typing import Any


class MailroomError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


class NotFound(MailroomError):
    status = 404
    code = "not_found"


class Conflict(MailroomError):
    status = 409
    code = "conflict"


class Unauthorized(MailroomError):
    status = 401
    code = "unauthorized"


class Forbidden(MailroomError):
    status = 403
    code = "forbidden"


class Unavailable(MailroomError):
    status = 503
    code = "unavailable"
