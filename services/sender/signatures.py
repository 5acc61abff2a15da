"""Signatures at send time: which ones, placeholders filled, added to the text and HTML parts.

The registry stores sanitised HTML and its derived text (SignatureSet, PersonalSignatureSet);
the sender keeps a projection of them (``projection_signatures.py``). For a send:

* ``signature.mode`` ``none``: nothing is added; ``default``: the mailbox's default (if any);
  ``named``: that alternate (422 ``unknown_signature`` if the mailbox has none by that name);
* the personal signature of the person sending (the employee sending on behalf, else the
  employee calling, else the mailbox's owner) goes above the mailbox signature;
* ``{employee.name}``, ``{employee.title}``, ``{employee.email}``, ``{employee.department}``
  are that person's; ``{mailbox.address}`` / ``{mailbox.display_name}`` the From address and
  name. Values are HTML-escaped in the HTML part;
* the text part gets ``-- `` (RFC 3676 signature separator) and the signatures' text; the
  HTML part a ``<div class="mailroom-signature">`` before ``</body>`` (or at the end). A message
  gets the signature in the parts it has; none are made up.
"""

from __future__ import annotations

import html as htmllib
import re
import time
from collections.abc import Mapping, Sequence

from libs.common.events.envelope import Envelope
from libs.common.store.database import Database
from services.sender import domain
from services.sender.models import Signature
from services.sender.ports import Invalid
from services.sender.repository import SenderRepository

DEFAULT = "default"
#: The placeholder syntax the registry checks when a signature is saved (same contract).
_PLACEHOLDER = re.compile(r"\{([a-z_]+(?:\.[a-z_]+)*)\}")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
Pair = tuple[str, str]  # (HTML, text)


def fill(template: str, values: Mapping[str, str], *, html: bool) -> str:
    """Placeholders filled (HTML-escaped in HTML); one without a value becomes empty."""

    def one(m: re.Match[str]) -> str:
        value = values.get(m.group(1), "")
        return htmllib.escape(value) if html else value

    return _PLACEHOLDER.sub(one, template)


def values_for(mailbox: domain.Mailbox, person: Mapping[str, str] | None) -> dict[str, str]:
    s = mailbox.settings
    found = {
        "mailbox.address": mailbox.from_address,
        "mailbox.display_name": s.send_as_name if s.send_as_name is not None else s.display_name,
    }
    for key, value in (person or {}).items():
        found[f"employee.{key}"] = value
    return found


def add_text(body: str | None, signatures: Sequence[str]) -> str:
    block = "\n\n".join(s for s in signatures if s.strip())
    if not block:
        return body or ""
    head = (body or "").rstrip()
    return f"{head}\n\n-- \n{block}" if head else f"-- \n{block}"


def add_html(body: str, signatures: Sequence[str]) -> str:
    if not signatures:
        return body
    block = (
        '<div class="mailroom-signature">'
        + "".join(f"<div>{s}</div>" for s in signatures)
        + "</div>"
    )
    ends = list(_BODY_END.finditer(body))
    if ends:
        at = ends[-1].start()
        return f"{body[:at]}{block}{body[at:]}"
    return f"{body}{block}"


def compose(
    text: str | None,
    html: str | None,
    chosen: Sequence[Pair],
    values: Mapping[str, str],
) -> tuple[str | None, str | None]:
    """The bodies with the ``chosen`` signatures (personal first) added to the parts present."""
    if not chosen:
        return text, html
    sig_html = [fill(h, values, html=True) for h, _ in chosen]
    sig_text = [fill(t, values, html=False) for _, t in chosen]
    if html is not None:
        html = add_html(html, sig_html)
    if text is not None or html is None:
        text = add_text(text, sig_text)
    return text, html


def mailbox_choice(choice: Signature) -> str | None:
    """The mailbox signature's name the request asks for (None: no signature at all)."""
    if choice.mode == "none":
        return None
    if choice.mode == "default":
        return DEFAULT
    if not choice.name:
        raise Invalid(
            "signature.name is required with mode 'named'", code="invalid_signature_choice"
        )
    return choice.name


Found = tuple[Pair | None, Pair | None, dict[str, str] | None]  # mailbox's, personal, person
MAX_ENTRIES = 10_000


class ProjectedSignatures:
    """``ports.Signatures`` from the sender's own projection of the registry's events. What a
    send reads is kept ``ttl_s`` (like the mailbox views) and dropped as soon as this replica's
    consumer applies a registry event about the mailbox or an employee (``forget``), so another
    replica may use a changed signature up to ``ttl_s`` late."""

    def __init__(self, db: Database, ttl_s: float = 0.0) -> None:
        self.db = db
        self.ttl_s = ttl_s
        # (tenant, mailbox) -> (signature name, person) -> (expiry, what was read)
        self._entries: dict[tuple[str, str], dict[tuple[str, str | None], tuple[float, Found]]]
        self._entries = {}

    def forget(self, events: Sequence[Envelope]) -> None:
        for env in events:
            if env.service != "registry":
                continue
            if env.aggregate == "account":
                self._entries.pop((env.tenant_id, env.aggregate_id), None)
            elif env.aggregate == "employee":  # a name, title or personal signature
                for key in [k for k in self._entries if k[0] == env.tenant_id]:
                    del self._entries[key]

    async def _read(self, mailbox: domain.Mailbox, name: str, person_id: str | None) -> Found:
        key = (mailbox.tenant_id, mailbox.mailbox_id)
        hit = self._entries.get(key, {}).get((name, person_id))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        async with self.db.read() as conn:
            repo = SenderRepository(conn, mailbox.tenant_id)
            own = await repo.signature(mailbox.mailbox_id, name)
            personal = await repo.personal_signature(person_id) if person_id else None
            person = (
                await repo.employee_details(person_id) if person_id and (own or personal) else None
            )
        found: Found = (own, personal, person)
        if self.ttl_s > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries.setdefault(key, {})[(name, person_id)] = (
                time.monotonic() + self.ttl_s,
                found,
            )
        return found

    async def apply(
        self,
        mailbox: domain.Mailbox,
        choice: Signature,
        text: str | None,
        html: str | None,
        *,
        employee_id: str | None = None,
    ) -> tuple[str | None, str | None]:
        name = mailbox_choice(choice)
        if name is None:
            return text, html
        own, personal, person = await self._read(mailbox, name, employee_id or mailbox.owner_id)
        if own is None and name != DEFAULT:
            raise Invalid(
                f"the mailbox has no signature named {name!r}",
                code="unknown_signature",
                details={"name": name},
            )
        chosen = [p for p in (personal, own) if p is not None]
        return compose(text, html, chosen, values_for(mailbox, person))
