"""EWS SOAP responses as Exchange 2016 and Exchange Online send them, for the local EWS server
(tests/support/ews_server.py).

The shapes follow Microsoft's EWS reference (GetFolder, FindFolder, SyncFolderItems, GetItem,
CreateItem request/response examples: ``MicrosoftDocs/office-developer-exchange-docs``,
``docs/web-service-reference``) and exchangelib's own fixtures (the ``ErrorServerBusy`` fault
with ``BackOffMilliseconds``, ``tests/test_services.py``): the ``ServerVersionInfo`` header, the
``m:``/``t:`` namespaces, ``ResponseClass``/``ResponseCode`` per message, ``MessageText`` and
``DescriptiveLinkKey`` on errors, SOAP faults for server-wide errors.
"""

from __future__ import annotations

from datetime import UTC, datetime
from xml.sax.saxutils import escape, quoteattr

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
ERR = "http://schemas.microsoft.com/exchange/services/2006/errors"

#: ServerVersionInfo of Exchange 2016 CU23 and of Exchange Online.
VERSIONS = {
    "exchange2016": ('MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" '
                     'MinorBuildNumber="6" Version="V2017_07_11"'),
    "office365": ('MajorVersion="15" MinorVersion="20" MajorBuildNumber="7409" '
                  'MinorBuildNumber="30" Version="V2018_01_08"'),
}  # fmt: skip

MESSAGES = {
    "ErrorNonExistentMailbox": "The SMTP address has no mailbox associated with it.",
    "ErrorAccessDenied": "Access is denied. Check credentials and try again.",
    "ErrorItemNotFound": "The specified object was not found in the store.",
    "ErrorInvalidSyncStateData": "Synchronization state data is corrupt or otherwise invalid.",
    "ErrorInvalidRecipients": "At least one recipient isn't valid.",
    "ErrorFolderNotFound": "The specified folder could not be found in the store.",
    "ErrorImpersonateUserDenied": "The account does not have permission to impersonate the "
    "requested user.",
    "ErrorSendAsDenied": "The user account which was used to submit this request does not have "
    "the right to send mail on behalf of the specified sending account.",
}


def envelope(body: str, flavour: str = "exchange2016") -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP}"><s:Header>'
        f'<h:ServerVersionInfo {VERSIONS[flavour]} xmlns:h="{T}" xmlns="{T}" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>'
        '</s:Header><s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f"{body}</s:Body></s:Envelope>"
    ).encode()


def response(op: str, messages: list[str]) -> str:
    return (
        f'<m:{op}Response xmlns:m="{M}" xmlns:t="{T}"><m:ResponseMessages>'
        + "".join(messages)
        + f"</m:ResponseMessages></m:{op}Response>"
    )


def ok(op: str, inner: str = "") -> str:
    return (
        f'<m:{op}ResponseMessage ResponseClass="Success">'
        f"<m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{op}ResponseMessage>"
    )


def error(op: str, code: str, container: str = "", text: str | None = None) -> str:
    return (
        f'<m:{op}ResponseMessage ResponseClass="Error">'
        f"<m:MessageText>{escape(text or MESSAGES.get(code, code))}</m:MessageText>"
        f"<m:ResponseCode>{code}</m:ResponseCode>"
        f"<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{container}</m:{op}ResponseMessage>"
    )


def fault(code: str, message: str, back_off_ms: int | None = None) -> str:
    """A server-wide error: ``ErrorServerBusy`` (throttling) carries ``BackOffMilliseconds``."""
    extra = ""
    if back_off_ms is not None:
        extra = (
            f'<t:MessageXml xmlns:t="{T}">'
            f'<t:Value Name="BackOffMilliseconds">{back_off_ms}</t:Value></t:MessageXml>'
        )
    return (
        f'<s:Fault><faultcode xmlns:a="{T}">a:{code}</faultcode>'
        f'<faultstring xml:lang="en-US">{escape(message)}</faultstring><detail>'
        f'<e:ResponseCode xmlns:e="{ERR}">{code}</e:ResponseCode>'
        f'<e:Message xmlns:e="{ERR}">{escape(message)}</e:Message>{extra}</detail></s:Fault>'
    )


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def item_id(iid: str, change_key: str) -> str:
    return f"<t:ItemId Id={quoteattr(iid)} ChangeKey={quoteattr(change_key)}/>"


def folder(fid: str, name: str, total: int, children: int, unread: int) -> str:
    return (
        f'<t:Folder><t:FolderId Id={quoteattr(fid)} ChangeKey="AQAAABYAAAAF"/>'
        f"<t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>{escape(name)}</t:DisplayName>"
        f"<t:TotalCount>{total}</t:TotalCount><t:ChildFolderCount>{children}</t:ChildFolderCount>"
        f"<t:UnreadCount>{unread}</t:UnreadCount></t:Folder>"
    )


def mailbox(name: str, address: str) -> str:
    return (
        f"<t:Mailbox><t:Name>{escape(name or address)}</t:Name>"
        f"<t:EmailAddress>{escape(address)}</t:EmailAddress>"
        "<t:RoutingType>SMTP</t:RoutingType><t:MailboxType>OneOff</t:MailboxType></t:Mailbox>"
    )


def message(
    iid: str,
    change_key: str,
    *,
    subject: str,
    received: datetime,
    sent: datetime | None,
    size: int,
    sender: tuple[str, str] | None,
    to: list[tuple[str, str]],
    message_id: str | None,
    headers: list[tuple[str, str]],
    fields: set[str] | None,
) -> str:
    """A ``t:Message`` with the properties asked for (``fields``: FieldURIs; None: all)."""

    def want(uri: str) -> bool:
        return fields is None or uri in fields

    parts = [item_id(iid, change_key)]
    if want("item:Subject"):
        parts.append(f"<t:Subject>{escape(subject)}</t:Subject>")
    if want("item:DateTimeReceived"):
        parts.append(f"<t:DateTimeReceived>{stamp(received)}</t:DateTimeReceived>")
    if want("item:Size"):
        parts.append(f"<t:Size>{size}</t:Size>")
    if want("item:InternetMessageHeaders") and headers:
        parts.append(
            "<t:InternetMessageHeaders>"
            + "".join(
                f"<t:InternetMessageHeader HeaderName={quoteattr(k)}>{escape(v)}"
                "</t:InternetMessageHeader>"
                for k, v in headers
            )
            + "</t:InternetMessageHeaders>"
        )
    if want("item:DateTimeSent") and sent is not None:
        parts.append(f"<t:DateTimeSent>{stamp(sent)}</t:DateTimeSent>")
    if want("message:ToRecipients") and to:
        parts.append(
            "<t:ToRecipients>" + "".join(mailbox(n, a) for n, a in to) + "</t:ToRecipients>"
        )
    if want("message:From") and sender is not None:
        parts.append(f"<t:From>{mailbox(*sender)}</t:From>")
    if want("message:InternetMessageId") and message_id:
        parts.append(f"<t:InternetMessageId>{escape(message_id)}</t:InternetMessageId>")
    return "<t:Message>" + "".join(parts) + "</t:Message>"
