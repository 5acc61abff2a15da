"""Watching an Exchange / Office 365 mailbox over EWS (exchangelib on the worker's threads).

Per poll and folder (Inbox and the account's folders): ``SyncFolderItems`` pages from the
folder's saved sync state, at most ``fetch_batch`` new items per poll (the rest at once in the
next poll), then ``GetItem`` for their metadata. New items become ``MessageReceived``
(UIDVALIDITY 0, a UID sync assigns, ``uidl`` = the item's key), deduplicated by the item key in
``sync_messages``; deleted items that were known become ``MailMissingDetected(vanished)``.

No gap, no duplicate across restarts: the poll's findings commit in one transaction (the
watcher's recording); the new sync state is saved only after that commit (and not for a
disabled or deleted account). A crash in between replays changes already recorded: the item
keys drop them. A folder synced from scratch (first sight, or a sync state the server no
longer accepts) records what was there before ``baseline_before`` as known without announcing
it: mail older than the account on first sight (``announce_existing``), or older than the last
sync after a lost state.

Failures: a refused credential or token → ``auth`` (long back-off; a new lease next time), EWS
switched off, no mailbox or no permission → ``auth`` too (a person must act, no hammering),
``ErrorServerBusy`` and other temporary trouble → ``network`` (back-off with jitter), TLS →
``tls``.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from libs.common.events.sync import FailureClass
from libs.common.ews import EwsClient, EwsError
from services.sync import ews_fetch
from services.sync.checks import FolderResult
from services.sync.domain import SyncError
from services.sync.ews_state import EwsFolder, EwsStateRepository, item_key
from services.sync.models import FolderState
from services.sync.ports import Credential
from services.sync.recording import PollResult
from services.sync.repository import SyncRepository

if TYPE_CHECKING:
    from services.sync.watcher import AccountWatcher

T = TypeVar("T")
MAX_CHANGES = 512  # EWS's maximum per SyncFolderItems call
RESYNC_SLACK = timedelta(minutes=5)
_CLASS: dict[str, FailureClass] = {
    "auth": "auth",
    "disabled": "auth",
    "mailbox": "auth",
    "denied": "auth",
    "tls": "tls",
    "network": "network",
    "throttled": "network",
    "unavailable": "network",
    "timeout": "timeout",
}
_clients: weakref.WeakKeyDictionary[AccountWatcher, tuple[str, EwsClient]] = (
    weakref.WeakKeyDictionary()
)


class _StateLost(SyncError):
    """The server no longer accepts the folder's sync state (ErrorInvalidSyncStateData)."""


def sync_error(exc: EwsError) -> SyncError:
    if exc.kind == "sync_state":
        return _StateLost("protocol", f"EWS: {exc.message}")
    detail = exc.message if not exc.detail else f"{exc.message} [{exc.detail}]"
    return SyncError(_CLASS.get(exc.kind, "protocol"), f"EWS: {detail}")


def _client(w: AccountWatcher, url: str, cred: Credential) -> EwsClient:
    engine = w.engine
    secret = cred.secret.get_secret_value()
    sig = hashlib.sha256(
        "\n".join((url, w.account.address, cred.username, cred.auth_mode, secret)).encode()
    ).hexdigest()
    held = _clients.get(w)
    if held is not None and held[0] == sig and not w.reconnect:
        return held[1]
    if held is not None:
        held[1].close()
    w.reconnect = False
    settings = engine.settings
    client = EwsClient(
        url,
        w.account.address,
        cred.username,
        cred.secret,
        cred.auth_mode,
        engine.ssl_context,
        settings.connect_timeout_s + settings.command_timeout_s,
    )
    _clients[w] = (sig, client)
    w.logins += 1
    engine.stats.logins += 1
    return client


async def _run(w: AccountWatcher, client: EwsClient, fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    s = w.engine.settings
    try:
        async with asyncio.timeout(s.connect_timeout_s + s.command_timeout_s + 5):
            result: T = await loop.run_in_executor(
                w.engine.executor, lambda: client.call(fn, *args)
            )
            return result
    except TimeoutError:
        client.close()
        raise SyncError("timeout", "EWS: the server did not answer in time") from None
    except EwsError as exc:
        raise sync_error(exc) from None


async def poll_ews(w: AccountWatcher) -> PollResult:
    acc, engine = w.account, w.engine
    server = acc.settings.incoming
    assert server is not None
    if not server.url:
        raise SyncError("protocol", "the account's EWS server has no URL")
    cred = await engine.credentials.get(*w.key)
    try:
        client = _client(w, server.url, cred)
    except EwsError as exc:
        raise sync_error(exc) from None
    async with engine.db.read() as conn:
        prev = await SyncRepository(conn, acc.tenant_id).folders(acc.account_id)
        saved = await EwsStateRepository(conn, acc.tenant_id).folders(acc.account_id)
    result = PollResult()
    states: list[EwsFolder] = []
    async with engine.host_slot(server.host):
        for folder in dict.fromkeys(acc.settings.folders or ["INBOX"]):
            t0 = asyncio.get_running_loop().time()
            fr, state = await _poll_folder(w, client, folder, prev.get(folder), saved.get(folder))
            fr.seconds = asyncio.get_running_loop().time() - t0
            result.folders.append(fr)
            if state != saved.get(folder):
                states.append(state)

    async def after() -> None:
        await _save_states(w, states)

    result.after = after if states else None  # a quiet poll writes nothing
    return result


async def _poll_folder(
    w: AccountWatcher,
    client: EwsClient,
    folder: str,
    prev: FolderState | None,
    saved: EwsFolder | None,
) -> tuple[FolderResult, EwsFolder]:
    acc, settings = w.account, w.engine.settings
    now = datetime.now(UTC)
    folder_id = saved.folder_id if saved else None
    state = saved.sync_state if saved else None
    before = saved.baseline_before if saved else None
    created: list[tuple[str, str, datetime | None]] = []
    deleted: list[str] = []
    last = False
    while len(created) < settings.fetch_batch:
        if not state:  # from scratch: what is there already is known, not news
            before = _from_scratch(w, prev, now)
        try:
            page = await _run(w, client, ews_fetch.sync_page, folder, folder_id, state, MAX_CHANGES)
        except _StateLost:
            if not state:
                raise
            state = None  # start over; the item keys keep what was recorded from repeating
            continue
        folder_id, state, last = page.folder_id, page.state, page.last
        created += page.created
        deleted += page.deleted
        if last:
            break
    async with w.engine.db.read() as conn:
        repo = EwsStateRepository(conn, acc.tenant_id)
        keys = [item_key(i) for i, _, _ in created] + [item_key(i) for i in deleted]
        known = await repo.known(acc.account_id, folder, keys)
    gone = {item_key(i) for i in deleted}
    fresh: dict[str, tuple[str, str, datetime | None]] = {}
    for iid, ck, received in created:
        if item_key(iid) not in known and item_key(iid) not in gone:
            fresh.setdefault(item_key(iid), (iid, ck, received))
    announce = [
        (iid, ck)
        for iid, ck, received in fresh.values()
        if before is None or (received is not None and received >= before)
    ]
    shown = {item_key(i) for i, _ in announce}
    metas = await _run(w, client, ews_fetch.metadata, announce) if announce else []
    baseline: list[tuple[int, str | None]] = [(0, k) for k in fresh if k not in shown]
    vanished = sorted({known[item_key(d)] for d in deleted if item_key(d) in known})
    changed = prev is None or bool(metas or baseline or vanished)
    count = (prev.exists if prev else 0) + len(metas) + len(baseline) - len(vanished)
    fs = FolderState(
        folder,
        0,
        None,
        prev.last_uid if prev else 0,
        max(0, count),
        max(0, count),
        now if changed else prev.last_synced_at if prev else now,
    )
    fr = FolderResult(fs, new=metas, baseline=baseline, vanished=vanished, changed=changed)
    fr.more = not last
    return fr, EwsFolder(folder, folder_id, state, None if last else before)


def _from_scratch(w: AccountWatcher, prev: FolderState | None, now: datetime) -> datetime:
    """Items received before this are old news in a sync from scratch. ``DateTimeReceived``
    has whole seconds (and Exchange's clock is not ours): after a lost state, items up to
    ``RESYNC_SLACK`` older than the last sync are announced too (known ones are dropped by
    their keys anyway)."""
    if prev is not None:
        return prev.last_synced_at - RESYNC_SLACK
    announce = w.engine.settings.announce_existing == "since_added"
    return (w.account.added_at if announce else now).replace(microsecond=0)


async def _save_states(w: AccountWatcher, states: list[EwsFolder]) -> None:
    """After the poll's commit: keep the sync states (not for an account disabled meanwhile,
    whose poll recorded nothing)."""
    acc = w.account
    try:
        async with w.engine.db.transaction() as tx:
            row = await SyncRepository(tx.conn, acc.tenant_id).locked_status(acc.account_id)
            if row is None or row.health.state == "disabled":
                return
            await EwsStateRepository(tx.conn, acc.tenant_id).save(
                acc.account_id, states, datetime.now(UTC)
            )
    except Exception as exc:  # the next poll repeats these changes; the keys drop them
        raise SyncError("unknown", f"saving the EWS sync state: {type(exc).__name__}") from None
