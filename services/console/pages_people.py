"""People: the directory, each person's mailboxes and levels, and the Offboard wizard.

The wizard shows what the registry's one-step offboarding will do — its own dry run: the
mailboxes handed over and to whom, the automatic reply, the events it will record — with the
access authz will revoke, before it asks to confirm; the confirm sends the reviewed plan's
digest, so the registry refuses (and the wizard shows the new plan) if it would now do more.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from services.console.client import Api, ApiError, gather_limited
from services.console.pages_accounts import check_id
from services.console.session import Session, check_csrf
from services.console.web import Console, form_str, redirect, route_class


def admin_only(session: Session) -> None:
    if not session.is_admin:
        raise ApiError(403, "admin_required", "the people pages are for tenant admins")


async def person_view(api: Api, employee_id: str) -> dict[str, Any]:
    """The person, the mailboxes they own, and every mailbox they reach with its level."""
    person_task = api.get("registry", f"/v1/employees/{employee_id}")
    owned_task = api.all_pages("registry", "/v1/accounts", limit=500, owner=employee_id)
    access_task = api.maybe(api.get("authz", f"/v1/employees/{employee_id}/access"))
    person, owned, access = await asyncio.gather(person_task, owned_task, access_task)
    addresses = {a["id"]: a["address"] for a in owned}
    reached = (access or {}).get("mailboxes", [])
    missing = [m["mailbox_id"] for m in reached if m["mailbox_id"] not in addresses]
    found = await gather_limited(
        missing, lambda i: api.maybe(api.get("registry", f"/v1/accounts/{i}"))
    )
    addresses.update({a["id"]: a["address"] for a in found if a})
    return {
        "person": person,
        "owned": owned,
        "reached": reached,
        "addresses": addresses,
        "access_known": access is not None,
    }


def offboard_body(successor_id: str, autoreply: str, *, dry_run: bool = False) -> dict[str, Any]:
    """The registry's offboarding request: the review sends it as a dry run, the confirm for
    real (with the reviewed plan's digest, so a plan that changed since is refused)."""
    body: dict[str, Any] = {"successor_id": successor_id or None, "autoreply": autoreply or None}
    if dry_run:
        body["dry_run"] = True
    return body


def build_people_router(console: Console) -> APIRouter:
    r = APIRouter(
        prefix="/console/people", include_in_schema=False, route_class=route_class(console)
    )

    @r.get("")
    async def people(
        request: Request,
        q: Annotated[str, Query(max_length=200)] = "",
        status: Annotated[str, Query(max_length=20)] = "",
        department: Annotated[str, Query(max_length=255)] = "",
    ) -> Response:
        session = await console.session(request)
        admin_only(session)
        status = status if status in ("active", "offboarded") else ""
        api = session.api
        found, departments = await asyncio.gather(
            api.all_pages(
                "registry", "/v1/employees", q=q.strip(), status=status, department=department
            ),
            api.get("registry", "/v1/departments"),
        )
        return console.page(
            request,
            session,
            "people.html",
            people=sorted(found, key=lambda p: p["name"].lower()),
            q=q,
            status_filter=status,
            department=department,
            departments=[d["name"] for d in departments["items"]],
        )

    @r.post("")
    async def add_person(request: Request) -> Response:
        session = await console.session(request)
        admin_only(session)
        await check_csrf(request)
        form = await request.form()
        body = {
            "name": form_str(form, "name", max_length=200),
            "email": form_str(form, "email", max_length=320),
            "title": form_str(form, "title", max_length=200),
            "department": form_str(form, "department", max_length=255) or None,
        }
        if not body["name"] or not body["email"]:
            raise ApiError(422, "name_and_email", "enter the person's name and email")
        made = await session.api.post("registry", "/v1/employees", body)
        return redirect(f"/console/people/{made['id']}", "person_added")

    @r.get("/{employee_id}")
    async def person(request: Request, employee_id: str) -> Response:
        session = await console.session(request)
        admin_only(session)
        check_id(employee_id, "person")
        view = await person_view(session.api, employee_id)
        report = None
        if view["person"]["status"] == "offboarded":
            report = await session.api.maybe(
                session.api.get("registry", f"/v1/employees/{employee_id}/offboarding")
            )
        return console.page(request, session, "person.html", report=report, **view)

    @r.get("/{employee_id}/offboard")
    async def offboard_form(request: Request, employee_id: str) -> Response:
        session = await console.session(request)
        admin_only(session)
        check_id(employee_id, "person")
        return await wizard(request, session, employee_id, step="choose")

    async def wizard(
        request: Request,
        session: Session,
        employee_id: str,
        *,
        step: str,
        successor_id: str = "",
        autoreply: str = "",
        plan_changed: bool = False,
    ) -> Response:
        api = session.api
        view, active = await asyncio.gather(
            person_view(api, employee_id),
            api.all_pages("registry", "/v1/employees", status="active"),
        )
        if view["person"]["status"] != "active":
            raise ApiError(409, "already_offboarded", "this person has already been offboarded")
        successors = sorted(
            (p for p in active if p["id"] != employee_id), key=lambda p: p["name"].lower()
        )
        successor = next((p for p in successors if p["id"] == successor_id), None)
        if successor_id and successor is None:
            raise ApiError(422, "unknown_successor", "the successor must be an active person")
        plan = None
        if step == "review":  # the registry's own decision, nothing written: exactly the confirm
            plan = await api.post(
                "registry",
                f"/v1/employees/{employee_id}/offboard",
                offboard_body(successor_id, autoreply, dry_run=True),
            )
        return console.page(
            request,
            session,
            "offboard.html",
            status=409 if plan_changed else 200,
            step=step,
            successors=successors,
            successor=successor,
            autoreply=autoreply,
            plan=plan,
            plan_changed=plan_changed,
            names={p["id"]: p["name"] for p in active},
            **view,
        )

    @r.post("/{employee_id}/offboard/review")
    async def offboard_review(request: Request, employee_id: str) -> Response:
        session = await console.session(request)
        admin_only(session)
        check_id(employee_id, "person")
        await check_csrf(request)
        form = await request.form()
        return await wizard(
            request,
            session,
            employee_id,
            step="review",
            successor_id=form_str(form, "successor_id", max_length=64),
            autoreply=form_str(form, "autoreply", max_length=4000),
        )

    @r.post("/{employee_id}/offboard")
    async def offboard(request: Request, employee_id: str) -> Response:
        session = await console.session(request)
        admin_only(session)
        check_id(employee_id, "person")
        await check_csrf(request)
        form = await request.form()
        if form.get("confirm") != "yes":
            raise ApiError(422, "confirm_required", "review the plan and confirm it first")
        successor_id = form_str(form, "successor_id", max_length=64)
        autoreply = form_str(form, "autoreply", max_length=4000)
        body = offboard_body(successor_id, autoreply)
        body["expected_plan"] = form_str(form, "expected_plan", max_length=64) or None
        try:
            result = await session.api.post(
                "registry", f"/v1/employees/{employee_id}/offboard", body
            )
        except ApiError as exc:
            if exc.code != "plan_changed":
                raise
            return await wizard(
                request,
                session,
                employee_id,
                step="review",
                successor_id=successor_id,
                autoreply=autoreply,
                plan_changed=True,
            )
        person = await session.api.get("registry", f"/v1/employees/{employee_id}")
        successor = (
            await session.api.maybe(
                session.api.get("registry", f"/v1/employees/{result['successor_id']}")
            )
            if result.get("successor_id")
            else None
        )
        return console.page(
            request,
            session,
            "offboarded.html",
            result=result,
            person=person,
            successor=successor,
        )

    @r.post("/{employee_id}/reinstate")
    async def reinstate(request: Request, employee_id: str) -> Response:
        session = await console.session(request)
        admin_only(session)
        check_id(employee_id, "person")
        await check_csrf(request)
        await session.api.post("registry", f"/v1/employees/{employee_id}/reinstate")
        return redirect(f"/console/people/{employee_id}", "reinstated")

    return r
