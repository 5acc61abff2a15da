"""Bulk import: upload a CSV, see the dry run with each row's errors, then import it with a
progress bar (the registry's NDJSON progress, relayed as it comes; without JavaScript the
import is one request that answers with the report)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from services.console.client import ApiError
from services.console.pages_people import admin_only
from services.console.session import Session, check_csrf
from services.console.web import Console, is_htmx, route_class

NDJSON = "application/x-ndjson"


def build_import_router(console: Console) -> APIRouter:
    r = APIRouter(
        prefix="/console/import", include_in_schema=False, route_class=route_class(console)
    )
    limit = console.settings.import_max_bytes

    async def upload(request: Request) -> tuple[Session, bytes, dict[str, Any]]:
        session = await console.session(request)
        admin_only(session)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + 65536:
            raise ApiError(413, "csv_too_large", f"the file is larger than {limit} bytes: split it")
        await check_csrf(request)
        form = await request.form(max_files=1, max_fields=20)
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise ApiError(422, "no_file", "choose a CSV file first")
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "csv_too_large", f"the file is larger than {limit} bytes: split it")
        if not data:
            raise ApiError(422, "empty_file", "the file is empty")
        params = {"test_connections": "true" if form.get("test_connections") == "1" else None}
        return session, data, params

    def report_page(request: Request, session: Session, report: dict[str, Any]) -> Response:
        template = "_import_report.html" if is_htmx(request) else "import.html"
        return console.page(request, session, template, report=report)

    @r.get("")
    async def page(request: Request) -> Response:
        session = await console.session(request)
        admin_only(session)
        return console.page(request, session, "import.html", report=None)

    @r.post("/check")
    async def check(request: Request) -> Response:
        session, data, params = await upload(request)
        resp = await session.api.request(
            "registry",
            "POST",
            "/v1/accounts/import",
            params={**params, "dry_run": "true"},
            content=data,
            headers={"Content-Type": "text/csv"},
        )
        return report_page(request, session, resp.json())

    @r.post("/run")
    async def run(request: Request) -> Response:
        session, data, params = await upload(request)
        headers = {"Content-Type": "text/csv"}
        if NDJSON not in request.headers.get("accept", ""):
            resp = await session.api.request(
                "registry",
                "POST",
                "/v1/accounts/import",
                params=params,
                content=data,
                headers=headers,
            )
            return report_page(request, session, resp.json())

        async def lines() -> AsyncIterator[str]:
            try:
                async with session.api.stream(
                    "registry",
                    "POST",
                    "/v1/accounts/import",
                    params=params,
                    content=data,
                    headers={**headers, "Accept": NDJSON},
                ) as resp:
                    async for line in resp.aiter_lines():
                        if not line.strip():
                            continue
                        try:
                            doc = json.loads(line)
                        except ValueError:
                            continue
                        if "report" in doc:
                            html = console.render(
                                "_import_report.html", report=doc["report"], csrf=session.csrf
                            )
                            yield json.dumps({"html": html}) + "\n"
                        elif "progress" in doc or "error" in doc:
                            yield json.dumps(doc) + "\n"
            except ApiError as exc:
                yield json.dumps({"error": {"code": exc.code, "message": exc.message}}) + "\n"

        return StreamingResponse(lines(), media_type=NDJSON)

    return r
