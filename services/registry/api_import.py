"""Registry HTTP API: bulk import of accounts from CSV (``POST /v1/accounts/import``).

The file comes as the request body (``text/csv``) or as the ``file`` part of a multipart form.
``Accept: application/x-ndjson`` streams progress lines ``{"progress": {...}}`` and ends with
``{"report": {...}}`` (or ``{"error": {...}}``); otherwise the report is the JSON response.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from libs.common.errors import MailroomError
from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database
from services.registry.api import context
from services.registry.csvimport import COLUMNS, parse
from services.registry.handlers_import import ImportHandlers
from services.registry.importer import ImportReport

NDJSON = "application/x-ndjson"
_BODY = {
    "requestBody": {
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
        "description": f"CSV with a header row; columns: {', '.join(COLUMNS)}",
    }
}
_running: set[asyncio.Task[Any]] = set()


def too_large(limit: int) -> MailroomError:
    return MailroomError(
        f"the file is larger than {limit} bytes: split it", code="csv_too_large", status=413
    )


async def read_upload(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + 65536:
        raise too_large(limit)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=20)
        upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise MailroomError("send the CSV as the form's file part", code="no_file")
        data = await upload.read(limit + 1)
    else:
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > limit:
                break
        data = bytes(chunks)
    if len(data) > limit:
        raise too_large(limit)
    return data


def build_import_router(importer: ImportHandlers, db: Database) -> APIRouter:
    r = APIRouter(prefix="/v1", responses=ERRORS, tags=["accounts"])  # type: ignore[arg-type]
    settings = importer.settings

    @r.post("/accounts/import", response_model=ImportReport, openapi_extra=_BODY)
    async def import_accounts(
        caller: Caller,
        request: Request,
        dry_run: bool = False,
        test_connections: bool = False,
        concurrency: Annotated[int | None, Query(ge=1, le=64)] = None,
        encoding: Annotated[str | None, Query(max_length=40)] = None,
    ) -> Any:
        """Add many accounts (and their missing employees, by ``owner_email``) from a CSV.
        ``dry_run`` checks everything and writes nothing; ``test_connections`` connects to
        every new account's servers first (``concurrency`` at once) and skips those that
        fail. Existing addresses with the same settings are ``unchanged``: importing a file
        twice adds nothing twice. Rows are all-or-nothing; errors name row and column."""
        caller.require_admin()
        data = await read_upload(request, settings.import_max_bytes)
        parsed = parse(data, encoding=encoding, max_rows=settings.import_max_rows)
        ctx = context(caller)
        kwargs: dict[str, Any] = {
            "dry_run": dry_run,
            "test": test_connections,
            "concurrency": concurrency or settings.import_test_concurrency,
            "reach": importer.network.reach(True),
        }
        if NDJSON not in request.headers.get("accept", ""):
            return await importer.run(ctx, parsed, **kwargs)
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def progress(phase: str, done: int, total: int) -> None:
            line = {"progress": {"phase": phase, "done": done, "total": total}}
            queue.put_nowait(json.dumps(line) + "\n")

        task = asyncio.create_task(importer.run(ctx, parsed, progress=progress, **kwargs))
        _running.add(task)  # runs to the end even if the client goes away
        task.add_done_callback(_running.discard)
        task.add_done_callback(lambda _: queue.put_nowait(None))

        async def lines() -> AsyncIterator[str]:
            yield (
                json.dumps({"progress": {"phase": "parsed", "done": 0, "total": len(parsed.rows)}})
                + "\n"
            )
            while (line := await queue.get()) is not None:
                yield line
            try:
                report = task.result()
            except MailroomError as exc:
                yield json.dumps(exc.body()) + "\n"
                return
            yield json.dumps({"report": report.model_dump(mode="json")}) + "\n"

        return StreamingResponse(lines(), media_type=NDJSON)

    return r
