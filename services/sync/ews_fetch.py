"""The blocking EWS calls of watching (exchangelib; run on a worker thread by services/sync/ews.py):
find a folder, one ``SyncFolderItems`` page, and the metadata of new items (``GetItem``).

``SyncFolderItems`` is asked for ids and ``DateTimeReceived`` only (Microsoft's advice: IdOnly
keeps the Exchange store cheap); the metadata of the items to announce comes from one
``GetItem`` per batch: Message-ID, From, To, Subject, the sent date, size and the Internet
headers (for the autoresponder's RFC 3834 facts) — never bodies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formataddr
from typing import Any

from exchangelib.fields import FieldPath  # type: ignore[import-untyped]
from exchangelib.folders import FolderCollection, MsgFolderRoot, Root  # type: ignore[import-untyped]
from exchangelib.items import ID_ONLY, Message  # type: ignore[import-untyped]
from exchangelib.properties import DistinguishedFolderId, FolderId, Mailbox  # type: ignore[import-untyped]
from exchangelib.services import GetItem, SyncFolderItems  # type: ignore[import-untyped]
from exchangelib.services.sync_folder_hierarchy import SyncFolder  # type: ignore[import-untyped]
from exchangelib.util import MNS  # type: ignore[import-untyped]

from libs.common.ews import EwsError
from services.sync.ews_state import item_key
from services.sync.mailmeta import MessageMeta, parse_headers

#: IMAP-style folder names that are Exchange's well-known folders.
WELL_KNOWN = {
    "inbox": "inbox",
    "sent": "sentitems",
    "sent items": "sentitems",
    "sent messages": "sentitems",
    "drafts": "drafts",
    "junk": "junkemail",
    "junk email": "junkemail",
    "junk e-mail": "junkemail",
    "spam": "junkemail",
    "trash": "deleteditems",
    "deleted items": "deleteditems",
    "deleted messages": "deleteditems",
}
DISTINGUISHED = "distinguished:"
META_FIELDS = (
    "subject",
    "datetime_received",
    "datetime_sent",
    "size",
    "headers",
    "to_recipients",
    "author",
    "message_id",
)
GET_BATCH = 100


@dataclass
class Page:
    folder_id: str
    state: str
    created: list[tuple[str, str, datetime | None]] = field(default_factory=list)
    """(item id, change key, received) of new items, in the server's order."""
    deleted: list[str] = field(default_factory=list)
    last: bool = True


def resolve_folder(account: Any, name: str) -> str:
    """The folder's id as stored: ``distinguished:<id>`` or an EWS FolderId."""
    known = WELL_KNOWN.get(name.strip().lower())
    if known:
        return DISTINGUISHED + known
    parent: Any = MsgFolderRoot.get_distinguished(root=Root(account=account))
    for part in [p for p in name.replace("\\", "/").split("/") if p]:
        found = FolderCollection(account=account, folders=[parent]).find_folders(depth="Shallow")
        kids = [k for k in found if not isinstance(k, Exception)]
        match = [k for k in kids if k.name == part]
        match = match or [k for k in kids if str(k.name).lower() == part.lower()]
        if not match:
            raise EwsError(
                "mailbox", f"the mailbox has no folder {name!r}: fix the account's folders"
            )
        parent = match[0]
    return str(parent.id)


class _SyncFolderItems(SyncFolderItems):  # type: ignore[misc]
    """exchangelib reads ``SyncState`` before it looks at the response class: an error
    message (ErrorInvalidSyncStateData carries none) would raise AttributeError instead of the
    server's error."""

    def _get_element_container(self, message: Any, name: Any = None) -> Any:
        if message.find(f"{{{MNS}}}SyncState") is None:
            return super(SyncFolder, self)._get_element_container(message=message, name=name)
        return super()._get_element_container(message=message, name=name)


def _folder_ref(account: Any, folder_id: str) -> Any:
    if folder_id.startswith(DISTINGUISHED):
        mailbox = Mailbox(email_address=account.primary_smtp_address)
        return DistinguishedFolderId(id=folder_id[len(DISTINGUISHED) :], mailbox=mailbox)
    return FolderId(id=folder_id)


def sync_page(
    account: Any, name: str, folder_id: str | None, state: str | None, max_changes: int
) -> Page:
    """One ``SyncFolderItems`` page after ``state`` (None: from scratch)."""
    fid = folder_id or resolve_folder(account, name)
    svc = _SyncFolderItems(account=account)
    received = {FieldPath(field=Message.get_field_by_fieldname("datetime_received"))}
    page = Page(fid, state or "")
    for kind, item in svc.call(
        folder=_folder_ref(account, fid),
        shape=ID_ONLY,
        additional_fields=received,
        sync_state=state,
        ignore=None,
        max_changes_returned=max_changes,
        sync_scope="NormalItems",
    ):
        if kind == SyncFolderItems.CREATE:
            when = getattr(item, "datetime_received", None)
            page.created.append((item.id, item.changekey, _plain(when)))
        elif kind == SyncFolderItems.DELETE:
            page.deleted.append(item.id)
    page.state = svc.sync_state or page.state
    page.last = bool(svc.includes_last_item_in_range)
    return page


def _plain(value: Any) -> datetime | None:
    """An EWSDateTime as a plain aware datetime."""
    if value is None:
        return None
    return datetime.fromisoformat(value.isoformat())


def metadata(account: Any, items: list[tuple[str, str]]) -> list[MessageMeta]:
    """Header metadata of ``items`` (id, change key), in order; items gone meanwhile are left
    out (a ``Delete`` change follows for them)."""
    fields = {FieldPath(field=Message.get_field_by_fieldname(n)) for n in META_FIELDS}
    out: list[MessageMeta] = []
    for i in range(0, len(items), GET_BATCH):
        chunk = items[i : i + GET_BATCH]
        found = GetItem(account=account).call(items=chunk, additional_fields=fields, shape=ID_ONLY)
        for (iid, _), item in zip(chunk, found, strict=True):
            if isinstance(item, Exception):
                if type(item).__name__ == "ErrorItemNotFound":
                    continue
                raise item
            out.append(_meta(iid, item))
    return out


def _meta(iid: str, item: Any) -> MessageMeta:
    meta = MessageMeta(uid=0, size=item.size, internaldate=_plain(item.datetime_received))
    lines = [f"{h.name}: {h.value}" for h in item.headers or [] if h.name and h.value is not None]
    if lines:
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")
        parse_headers(meta, raw)
    author = item.author
    if meta.from_ is None and author is not None and author.email_address:
        meta.from_ = formataddr((author.name or "", author.email_address))
    if not meta.to:
        meta.to = [r.email_address for r in item.to_recipients or [] if r.email_address][:100]
    meta.subject = meta.subject or item.subject
    meta.message_id = meta.message_id or item.message_id
    if meta.date is None and item.datetime_sent is not None:
        meta.date = item.datetime_sent.isoformat()
    meta.uidl = item_key(iid)
    return meta
