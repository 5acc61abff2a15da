"""Registry HTTP API: the employee directory and its departments.

Any principal of the tenant may read the directory; changing it needs a tenant admin.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from libs.common.errors import NotFound
from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database
from services.registry.api import IfMatch, context, cursor_of, expected_version
from services.registry.api_models import (
    DepartmentList,
    DepartmentOut,
    EmployeeIn,
    EmployeeOut,
    EmployeePage,
    EmployeePatch,
)
from services.registry.domain import employees
from services.registry.handlers import Handlers
from services.registry.repository import RegistryRepository


def build_employee_router(h: Handlers, db: Database) -> APIRouter:
    r = APIRouter(prefix="/v1", responses=ERRORS, tags=["employees"])  # type: ignore[arg-type]

    async def view(tenant_id: str, employee_id: str, response: Response) -> EmployeeOut:
        async with db.read() as conn:
            row = await RegistryRepository(conn, tenant_id).employee(employee_id)
        if row is None:
            raise NotFound(f"no employee {employee_id}")
        response.headers["ETag"] = f'"{row.version}"'
        return EmployeeOut.of(row)

    @r.post("/employees", response_model=EmployeeOut, status_code=status.HTTP_201_CREATED)
    async def add_employee(caller: Caller, body: EmployeeIn, response: Response) -> EmployeeOut:
        """Add a person to the directory; 409 ``duplicate_email`` if the email is taken."""
        caller.require_admin()
        cmd = employees.AddEmployee(
            name=body.name, email=body.email, title=body.title, department=body.department
        )
        employee_id = await h.add_employee(context(caller), cmd)
        return await view(caller.tenant_id, employee_id, response)

    @r.get("/employees", response_model=EmployeePage)
    async def list_employees(
        caller: Caller,
        status: Literal["active", "offboarded"] | None = None,
        department: Annotated[str | None, Query(max_length=255)] = None,
        q: Annotated[str | None, Query(max_length=200, description="name or email")] = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> EmployeePage:
        async with db.read() as conn:
            rows = await RegistryRepository(conn, caller.tenant_id).employees(
                status=status, department=department, q=q, after=cursor_of(cursor), limit=limit
            )
        nxt = rows[-1].id if len(rows) == limit else None
        return EmployeePage(items=[EmployeeOut.of(row) for row in rows], next_cursor=nxt)

    @r.get("/employees/{employee_id}", response_model=EmployeeOut)
    async def get_employee(caller: Caller, employee_id: str, response: Response) -> EmployeeOut:
        return await view(caller.tenant_id, employee_id, response)

    @r.patch("/employees/{employee_id}", response_model=EmployeeOut)
    async def update_employee(
        caller: Caller,
        employee_id: str,
        body: EmployeePatch,
        response: Response,
        if_match: IfMatch = None,
    ) -> EmployeeOut:
        """Change fields; ``status`` offboards (EmployeeOffboarded) or reinstates."""
        caller.require_admin()
        fields = body.model_fields_set & employees.UPDATABLE
        changes = {
            k: getattr(body, k) for k in fields if getattr(body, k) is not None or k == "department"
        }
        await h.update_employee(
            context(caller),
            employee_id,
            changes,
            status=body.status,
            successor_id=body.successor_id,
            expected=expected_version(if_match),
        )
        return await view(caller.tenant_id, employee_id, response)

    @r.get("/departments", response_model=DepartmentList)
    async def list_departments(caller: Caller) -> DepartmentList:
        """Departments named by employees, each with its members."""
        async with db.read() as conn:
            found = await RegistryRepository(conn, caller.tenant_id).departments()
        return DepartmentList(
            items=[
                DepartmentOut(
                    name=name,
                    member_count=len(members),
                    members=[EmployeeOut.of(m) for m in members],
                )
                for name, members in found
            ]
        )

    return r
