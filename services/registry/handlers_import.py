"""Bulk import of accounts from a CSV file.

Rows are planned first (:mod:`importer`: every check of ``POST /v1/accounts``), compared with
the accounts that exist (same settings: ``unchanged``, so a file imported twice adds nothing
twice), optionally connection-tested (bounded concurrency; a failing row is not imported), then
written in chunks: one transaction per chunk of rows with all its events (one executemany),
read rows and credential blobs. A row is all-or-nothing: its employee, account, credential and
events commit together. If a chunk's transaction fails (a concurrent import of the same rows,
say), its rows are written one by one so no row can fail another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError

from libs.common.errors import MailroomError
from libs.common.events.base import Event
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.registry import CredentialRef
from libs.common.ids import new_id
from libs.common.store.eventstore import ConcurrencyError
from services.registry.autofill import Autofill
from services.registry.connect import Credential, check_account
from services.registry.csvimport import Parsed
from services.registry.domain import employees
from services.registry.domain_employees import EmployeeState
from services.registry.handlers import Handlers, credential_field, seal_blob
from services.registry.handlers_org import OrgHandlers
from services.registry.importer import (
    ImportReport,
    Planned,
    RowResult,
    error_result,
    plan_row,
    problem_result,
)
from services.registry.netguard import HostResolver, Network, Reach
from services.registry.presets import preset_for_domain
from services.registry.repository import AccountRow, EmployeeRow
from services.registry.repository_bulk import BulkRepository
from services.registry.validation import Invalid

Progress = Callable[[str, int, int], None]
DISCOVERY_CONCURRENCY = 8


def _quiet(_: str, __: int, ___: int) -> None:
    return None


def first_envelope(ctx: CommandContext, aggregate_id: str, event: Event) -> Envelope:
    """``Envelope.wrap`` of a new aggregate's first event, without validating again what is
    built from valid parts (an import makes thousands; ``test_registry_import_csv`` checks
    that it equals ``wrap``)."""
    return Envelope.model_construct(
        id=new_id(),
        source=f"/mailroom/{event.service}",
        type=event.ce_type(),
        subject=f"{event.aggregate}/{aggregate_id}",
        time=datetime.now(UTC),
        tenant_id=ctx.tenant_id,
        actor=ctx.actor,
        correlation_id=ctx.correlation_id,
        causation_id=ctx.causation_id,
        aggregate_id=aggregate_id,
        aggregate_version=1,
        data=event.model_dump(mode="json", by_alias=True),
        traceparent=None,
    )


def _same(item: Planned, row: AccountRow, owner_id: str | None) -> bool:
    a = item.added
    return (row.protocol, row.settings, row.ownership, row.owner_id, row.preset_id) == (
        a.protocol,
        a.settings,
        a.ownership,
        owner_id,
        a.preset_id,
    )


def _existing(item: Planned, row: AccountRow, owner: EmployeeRow | None) -> RowResult:
    owner_id = owner.id if owner else None
    if _same(item, row, owner_id):
        return RowResult(
            row=item.row,
            address=item.address,
            status="unchanged",
            account_id=row.id,
            message=f"row {item.row}: already there with these settings",
        )
    return RowResult(
        row=item.row,
        address=item.address,
        status="error",
        account_id=row.id,
        code="address_exists",
        message=f"row {item.row}: {item.address} already exists with other settings; an import "
        f"does not change it (use PATCH /v1/accounts/{row.id})",
    )


@dataclasses.dataclass
class ImportResolver(HostResolver):
    """Looks each host name up once for a whole import (hundreds of rows name the same
    servers); concurrent rows share the lookup. A failed lookup is not remembered."""

    memo: dict[str, asyncio.Future[list[str]]] = dataclasses.field(default_factory=dict)

    async def addresses(self, host: str, timeout: float) -> list[str]:
        key = host.strip("[]").lower()
        found = self.memo.get(key)
        if found is None:
            found = asyncio.ensure_future(super().addresses(host, timeout))
            self.memo[key] = found
        try:
            return list(await asyncio.shield(found))
        except Exception:
            if self.memo.get(key) is found:
                del self.memo[key]
            raise


class ImportHandlers:
    def __init__(self, base: Handlers, org: OrgHandlers, network: Network) -> None:
        self.db = base.db
        self.keys = base.keys
        self.settings = base.settings
        self.org = org
        self.network = network

    async def run(
        self,
        ctx: CommandContext,
        parsed: Parsed,
        *,
        dry_run: bool = False,
        test: bool = False,
        concurrency: int = 8,
        reach: Reach = "public",
        progress: Progress = _quiet,
    ) -> ImportReport:
        start = time.monotonic()
        results = {p.number: problem_result(p) for p in parsed.problems}
        autofill = Autofill(self.network, await self.org.mail_settings(ctx.tenant_id))
        await self._prefetch(parsed, autofill)
        planned: list[Planned] = []
        first: dict[str, int] = {}
        total = len(parsed.rows)
        for n, row in enumerate(parsed.rows, start=1):
            item = await plan_row(row, autofill)
            if isinstance(item, RowResult):
                results[row.number] = item
            elif item.key in first:
                results[row.number] = RowResult(
                    row=row.number,
                    address=item.address,
                    status="duplicate",
                    message=f"row {row.number}: same address as row {first[item.key]}: added once",
                )
            else:
                first[item.key] = row.number
                planned.append(item)
            if n % 500 == 0:
                progress("checking", n, total)
        fresh = await self._new_only(ctx.tenant_id, planned, results)
        if test:
            fresh = await self._test(fresh, results, concurrency, reach, progress)
        if dry_run:
            self._would_create(fresh, results)
        else:
            await self._write(ctx, fresh, results, progress)
        report = ImportReport(
            dry_run=dry_run,
            tested=test,
            encoding=parsed.encoding,
            delimiter=parsed.delimiter,
            columns=parsed.columns,
            ignored_columns=parsed.ignored,
            rows_total=len(parsed.rows) + len(parsed.problems),
            rows=[results[n] for n in sorted(results)],
        )
        for r in report.rows:
            field = {"duplicate": "duplicates", "error": "errors"}.get(r.status, r.status)
            setattr(report, field, getattr(report, field) + 1)
            report.employees_created += r.employee_created
        report.elapsed_ms = int((time.monotonic() - start) * 1000)
        return report

    async def _prefetch(self, parsed: Parsed, autofill: Autofill) -> None:
        """Discover every domain that needs it at once (bounded), before rows are planned."""
        domains: dict[str, str] = {}
        org = autofill.org
        for row in parsed.rows:
            c = row.cells
            address = c.get("address", "")
            domain = address.rpartition("@")[2].lower()
            if not domain or c.get("preset") or c.get("incoming_host") or c.get("ews_url"):
                continue
            if (org and domain in org.domains) or preset_for_domain(domain):
                continue
            domains.setdefault(domain, address)
        gate = asyncio.Semaphore(DISCOVERY_CONCURRENCY)

        async def one(domain: str, address: str) -> None:
            async with gate:
                try:
                    await autofill.discover(address, domain)
                except Invalid:
                    pass  # reported on the row

        await asyncio.gather(*(one(d, a) for d, a in domains.items()))

    async def _new_only(
        self, tenant_id: str, planned: list[Planned], results: dict[int, RowResult]
    ) -> list[Planned]:
        async with self.db.read() as conn:
            repo = BulkRepository(conn, tenant_id)
            found = await repo.accounts_by_key(p.key for p in planned)
            owners = await repo.employees_by_key(p.owner_key for p in planned if p.owner_key)
        fresh: list[Planned] = []
        for item in planned:
            owner = owners.get(item.owner_key) if item.owner_key else None
            if item.key in found:
                results[item.row] = _existing(item, found[item.key], owner)
            elif owner is not None and owner.status != "active":
                results[item.row] = error_result(
                    item.row,
                    item.address,
                    Invalid(f"employee {owner.email} is offboarded", code="owner_offboarded"),
                )
            else:
                item.owner_id = owner.id if owner else None
                fresh.append(item)
        return fresh

    async def _test(
        self,
        items: list[Planned],
        results: dict[int, RowResult],
        concurrency: int,
        reach: Reach,
        progress: Progress,
    ) -> list[Planned]:
        gate = asyncio.Semaphore(max(1, concurrency))
        done = 0
        network = dataclasses.replace(
            self.network, resolver=ImportResolver(dns=self.network.resolver.dns)
        )

        async def one(item: Planned) -> bool:
            nonlocal done
            s = item.added.settings
            async with gate:
                report = await check_account(
                    network,
                    s.incoming,
                    s.custom_smtp or s.outgoing,
                    Credential(s.username, item.secret, s.auth_mode),
                    reach=reach,
                )
            done += 1
            progress("testing", done, len(items))
            bad = report.first_failure
            if bad is not None:
                results[item.row] = RowResult(
                    row=item.row,
                    address=item.address,
                    status="error",
                    code="connection_failed",
                    message=f"row {item.row}: {bad.role} server {bad.host}:{bad.port}: "
                    f"{bad.message}",
                    servers_from=item.source,
                    connection=report,
                )
            return bad is None

        passed = await asyncio.gather(*(one(i) for i in items))
        return [item for item, ok in zip(items, passed, strict=True) if ok]

    @staticmethod
    def _would_create(items: list[Planned], results: dict[int, RowResult]) -> None:
        employees_new: set[str] = set()
        for item in items:
            creates = bool(item.owner_key and not item.owner_id)
            creates = creates and item.owner_key not in employees_new
            if creates and item.owner_key:
                employees_new.add(item.owner_key)
            results[item.row] = RowResult(
                row=item.row,
                address=item.address,
                status="would_create",
                servers_from=item.source,
                employee_created=creates,
            )

    async def _write(
        self,
        ctx: CommandContext,
        items: list[Planned],
        results: dict[int, RowResult],
        progress: Progress,
    ) -> None:
        size = max(1, self.settings.import_chunk_rows)
        for i in range(0, len(items), size):
            chunk = items[i : i + size]
            try:
                results.update(await self._write_chunk(ctx, chunk))
            except (IntegrityError, ConcurrencyError, MailroomError):
                for item in chunk:  # one by one: each row gets its own outcome
                    try:
                        results.update(await self._write_chunk(ctx, [item]))
                    except MailroomError as exc:
                        results[item.row] = error_result(item.row, item.address, exc)
                    except (IntegrityError, ConcurrencyError):
                        results[item.row] = error_result(
                            item.row,
                            item.address,
                            MailroomError(
                                "written concurrently: run the import again", code="conflict"
                            ),
                        )
            progress("writing", min(i + size, len(items)), len(items))

    async def _write_chunk(
        self, ctx: CommandContext, items: Sequence[Planned]
    ) -> dict[int, RowResult]:
        out: dict[int, RowResult] = {}
        async with self.db.transaction() as tx:
            repo = BulkRepository(tx.conn, ctx.tenant_id)
            found = await repo.accounts_by_key(p.key for p in items)
            owners = await repo.employees_by_key(p.owner_key for p in items if p.owner_key)
            people: list[Envelope] = []  # new employees first: the projection inserts each
            envelopes: list[Envelope] = []  # kind with one statement
            blobs = []
            for item in items:
                owner = owners.get(item.owner_key) if item.owner_key else None
                if item.key in found:  # added meanwhile (a concurrent import)
                    out[item.row] = _existing(item, found[item.key], owner)
                    continue
                created = False
                if item.owner_key and owner is None and item.employee is not None:
                    owner = self._new_employee(ctx, item, people)
                    owners[item.owner_key] = owner
                    created = True
                account_id = new_id()
                ref = None
                if item.secret is not None:
                    ref = CredentialRef(
                        blob_id=new_id(),
                        version=1,
                        kek_version=self.keys.ring.active_version,
                        field=credential_field(item.added.settings.auth_mode),
                    )
                    blobs.append(seal_blob(self.keys, item.secret, ctx.tenant_id, account_id, ref))
                # decide() ran at planning; owner and credential pass through unchanged.
                added = item.added.model_copy(
                    update={"owner_id": owner.id if owner else None, "credential": ref}
                )
                envelopes.append(first_envelope(ctx, account_id, added))
                out[item.row] = RowResult(
                    row=item.row,
                    address=item.address,
                    status="created",
                    account_id=account_id,
                    servers_from=item.source,
                    employee_created=created,
                )
            await repo.put_new_blobs(blobs)
            await tx.append([*people, *envelopes])
        return out

    @staticmethod
    def _new_employee(ctx: CommandContext, item: Planned, envelopes: list[Envelope]) -> EmployeeRow:
        assert item.employee is not None
        employee_id = new_id()
        [added] = employees.decide(item.employee, EmployeeState(employee_id))
        envelopes.append(first_envelope(ctx, employee_id, added))
        return EmployeeRow(
            id=employee_id,
            name=item.employee.name,
            email=item.employee.email,
            title=item.employee.title,
            department=item.employee.department,
            status="active",
            created_at=envelopes[-1].time,
            updated_at=envelopes[-1].time,
            version=1,
        )
