"""``mailroom-rpc.registry.employee``: whether an employee is active, from the registry's own
directory (committed with the events, so exact the moment an offboarding answers 2xx).

The sender asks it before every send by an employee, so a leaver is refused right after
``POST /v1/employees/{id}/offboard`` even while the event is still on its way to the
projections. Request ``{"tenant_id", "employee_id"}``; reply ``{"ok": true, "status":
"active" | "offboarded" | "unknown"}`` or ``{"ok": false, "error": {"code", "message"}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.common.store.database import Database
from libs.common.subjects import TENANT_PATTERN, rpc_subject
from services.registry.repository import RegistryRepository

EMPLOYEE_SUBJECT = rpc_subject("registry", "employee")


class EmployeeStatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tenant_id: str = Field(pattern=TENANT_PATTERN)
    employee_id: str = Field(min_length=1, max_length=64)


class EmployeeStatusError(BaseModel):
    code: str
    message: str


class EmployeeStatusReply(BaseModel):
    """``{"ok": true, "status": …}`` or ``{"ok": false, "error": …}``."""

    ok: bool
    status: Literal["active", "offboarded", "unknown"] | None = None
    error: EmployeeStatusError | None = None


# (subject, summary, request, reply) for the AsyncAPI document (libs.common.asyncapi)
CONTRACT = (
    EMPLOYEE_SUBJECT,
    "Whether an employee is active, exact the moment an offboarding answered 2xx.",
    EmployeeStatusRequest,
    EmployeeStatusReply,
)


async def serve_employee_status(db: Database, body: Any) -> dict[str, Any]:
    try:
        req = EmployeeStatusRequest.model_validate(body)
    except ValidationError:
        return {"ok": False, "error": {"code": "invalid_request", "message": "bad request"}}
    async with db.read() as conn:
        row = await RegistryRepository(conn, req.tenant_id).employee(req.employee_id)
    return {"ok": True, "status": row.status if row is not None else "unknown"}
