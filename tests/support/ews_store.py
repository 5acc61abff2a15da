"""The item store of the local EWS server (tests/support/ews_server.py) and the EWS operations
on it: GetFolder, FindFolder, SyncFolderItems, GetItem, FindItem (by Message-ID) and CreateItem
(SendAndSaveCopy with MIME content). Each takes the server (its settings and violation list),
the mailbox the request is for and the operation's element, and returns the response messages
(tests/support/ews_xml.py builds them as Exchange does)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.utils import getaddresses, parseaddr
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from tests.support import ews_xml as x

NS = {"s": x.SOAP, "m": x.M, "t": x.T}

DISTINGUISHED = {
    "msgfolderroot": "Top of Information Store",
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "junkemail": "Junk Email",
}


def new_id() -> str:
    return base64.b64encode(b"\x00\x00\x03\x24\x00" + os.urandom(105)).decode()


@dataclass
class Item:
    id: str
    change_key: str
    folder: str
    raw: bytes
    received: datetime


@dataclass
class Mailbox:
    address: str
    folders: dict[str, str] = field(default_factory=dict)  # folder id -> display name
    well_known: dict[str, str] = field(default_factory=dict)  # distinguished name -> id
    items: dict[str, Item] = field(default_factory=dict)
    changes: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    """Per folder id: (kind, item id, change key), in order; a sync state is an index."""

    def __post_init__(self) -> None:
        for key, display in DISTINGUISHED.items():
            self.add_folder(key, display)

    def add_folder(self, key: str, display: str) -> str:
        fid = new_id()
        self.folders[fid] = display
        self.changes[fid] = []
        if key in DISTINGUISHED:
            self.well_known[key] = fid
        return fid


def folder_id(box: Mailbox, el: Any) -> str | None:
    if el is None:
        return None
    tag = etree.QName(el).localname
    if tag == "DistinguishedFolderId":
        return box.well_known.get(el.get("Id"))
    return el.get("Id") if el.get("Id") in box.folders else None


# --- operations ---------------------------------------------------------------------------


def op_GetFolder(ews: Any, box: Mailbox, op: Any) -> list[str]:
    out = []
    for el in op.find("m:FolderIds", NS):
        fid = folder_id(box, el)
        if fid is None:
            out.append(x.error("GetFolder", "ErrorFolderNotFound", "<m:Folders/>"))
            continue
        items = [i for i in box.items.values() if i.folder == fid]
        out.append(
            x.ok(
                "GetFolder",
                "<m:Folders>"
                + x.folder(fid, box.folders[fid], len(items), 0, len(items))
                + "</m:Folders>",
            )
        )
    return out


def op_FindFolder(ews: Any, box: Mailbox, op: Any) -> list[str]:
    parent = folder_id(box, op.find("m:ParentFolderIds", NS)[0])
    if parent != box.well_known["msgfolderroot"]:
        return [x.error("FindFolder", "ErrorFolderNotFound")]
    own = [(f, n) for f, n in box.folders.items() if f != parent]
    kids = "".join(
        x.folder(f, n, sum(i.folder == f for i in box.items.values()), 0, 0) for f, n in own
    )
    root = (
        f'<m:RootFolder TotalItemsInView="{len(own)}" IncludesLastItemInRange="true">'
        f"<t:Folders>{kids}</t:Folders></m:RootFolder>"
    )
    return [x.ok("FindFolder", root)]


def op_SyncFolderItems(ews: Any, box: Mailbox, op: Any) -> list[str]:
    fid = folder_id(box, op.find("m:SyncFolderId", NS)[0])
    if fid is None:
        return [x.error("SyncFolderItems", "ErrorFolderNotFound")]
    state = op.findtext("m:SyncState", None, NS)
    start = 0
    if state:
        try:
            doc = json.loads(gzip.decompress(base64.b64decode(state)))
            assert doc["f"] == fid and doc["m"] == box.address and doc["e"] == ews.epoch
            start = int(doc["n"])
        except Exception:
            return [x.error("SyncFolderItems", "ErrorInvalidSyncStateData")]
    limit = int(op.findtext("m:MaxChangesReturned", "100", NS))
    log = box.changes[fid]
    page = log[start : start + limit]
    end = start + len(page)
    extra = {
        p.get("FieldURI") for p in op.iterfind("m:ItemShape/t:AdditionalProperties/t:FieldURI", NS)
    }
    changes = []
    for kind, iid, ck in page:
        if kind == "Delete":
            changes.append(f"<t:Delete>{x.item_id(iid, ck)}</t:Delete>")
            continue
        item = box.items.get(iid)
        if item is None:  # created and deleted since: Exchange reports neither
            continue
        received = (
            f"<t:DateTimeReceived>{x.stamp(item.received)}</t:DateTimeReceived>"
            if "item:DateTimeReceived" in extra
            else ""
        )
        changes.append(
            f"<t:Create><t:Message>{x.item_id(iid, ck)}{received}</t:Message></t:Create>"
        )
    new_state = base64.b64encode(
        gzip.compress(json.dumps({"f": fid, "m": box.address, "n": end, "e": ews.epoch}).encode())
    ).decode()
    last = "true" if end >= len(log) else "false"
    inner = (
        f"<m:SyncState>{new_state}</m:SyncState>"
        f"<m:IncludesLastItemInRange>{last}</m:IncludesLastItemInRange>"
        f"<m:Changes>{''.join(changes)}</m:Changes>"
    )
    return [x.ok("SyncFolderItems", inner)]


def op_GetItem(ews: Any, box: Mailbox, op: Any) -> list[str]:
    fields = {
        p.get("FieldURI") for p in op.iterfind("m:ItemShape/t:AdditionalProperties/t:FieldURI", NS)
    }
    out = []
    for el in op.find("m:ItemIds", NS):
        item = box.items.get(el.get("Id"))
        if item is None:
            out.append(x.error("GetItem", "ErrorItemNotFound", "<m:Items/>"))
            continue
        out.append(x.ok("GetItem", "<m:Items>" + _message(item, fields) + "</m:Items>"))
    return out


def op_FindItem(ews: Any, box: Mailbox, op: Any) -> list[str]:
    fid = folder_id(box, op.find("m:ParentFolderIds", NS)[0])
    uri = op.xpath("m:Restriction/t:IsEqualTo/t:FieldURI/@FieldURI", namespaces=NS)
    value = op.xpath(
        "m:Restriction/t:IsEqualTo/t:FieldURIOrConstant/t:Constant/@Value", namespaces=NS
    )
    if uri != ["message:InternetMessageId"] or len(value) != 1:
        ews.violations.append(f"FindItem restriction {uri} not supported here")
        return [x.error("FindItem", "ErrorInvalidRestriction")]
    hits = [
        i
        for i in box.items.values()
        if i.folder == fid and message_from_bytes(i.raw).get("Message-ID") == value[0]
    ]
    found = "".join(f"<t:Message>{x.item_id(i.id, i.change_key)}</t:Message>" for i in hits)
    root = (
        f'<m:RootFolder IndexedPagingOffset="{len(hits)}" TotalItemsInView="{len(hits)}" '
        f'IncludesLastItemInRange="true"><t:Items>{found}</t:Items></m:RootFolder>'
    )
    return [x.ok("FindItem", root)]


def op_CreateItem(ews: Any, box: Mailbox, op: Any) -> list[str]:
    if op.get("MessageDisposition") != "SendAndSaveCopy":
        ews.violations.append(f"CreateItem MessageDisposition={op.get('MessageDisposition')}")
    saved = folder_id(box, op.find("m:SavedItemFolderId", NS)[0])
    if saved != box.well_known["sentitems"]:
        ews.violations.append("CreateItem does not save to the mailbox's Sent Items")
    msg = op.find("m:Items/t:Message", NS)
    raw = base64.b64decode(msg.findtext("t:MimeContent", "", NS))
    bcc = [
        str(a) for a in msg.xpath("t:BccRecipients/t:Mailbox/t:EmailAddress/text()", namespaces=NS)
    ]
    parsed = message_from_bytes(raw)
    rcpts = [a for _, a in getaddresses(parsed.get_all("To", []) + parsed.get_all("Cc", []))] + bcc
    if any(a.lower() in ews.refuse_recipients for a in rcpts):
        return [x.error("CreateItem", "ErrorInvalidRecipients", "<m:Items/>")]
    ews.sent.append({"mailbox": box.address, "raw": raw, "bcc": bcc, "recipients": rcpts})
    item = Item(
        new_id(),
        "CQAAABYAAAB" + secrets.token_urlsafe(6),
        box.well_known["sentitems"],
        raw,
        datetime.now(UTC),
    )
    box.items[item.id] = item
    box.changes[item.folder].append(("Create", item.id, item.change_key))
    return [x.ok("CreateItem", "<m:Items/>")]


def _message(item: Item, fields: set[str]) -> str:
    msg = message_from_bytes(item.raw)
    name, addr = parseaddr(str(msg.get("From", "")))
    to = [(n, a) for n, a in getaddresses(msg.get_all("To", [])) if a]
    return x.message(
        item.id,
        item.change_key,
        subject=str(msg.get("Subject", "")),
        received=item.received,
        sent=item.received,
        size=len(item.raw),
        sender=(name, addr) if addr else None,
        to=to,
        message_id=msg.get("Message-ID"),
        headers=[(k, str(v)) for k, v in msg.items()],
        fields=fields or None,
    )
