"""Header injection is impossible: whatever text a caller (or an account's settings) puts in
names, subjects and addresses, the message is refused or encoded so that it has exactly the
headers it should, each holding exactly the text given."""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.sender import domain, mime
from services.sender.models import MessageIn

CONTROL = [
    "\r\n", "\n", "\r", "\r\n ", "\x00", "\t", "\x0b", "\x0c", "\x85", "\u2028", "\u2029",
    "\u202e", "\ud800", "\r\nBcc: victim@evil.example", ".\r\n",
]  # fmt: skip
PRINTABLE = [
    "Bcc: victim@evil.example", "=?utf-8?q?", "=?utf-8?b?DQpCY2M6IHhAeQ==?=", "?=", '"', "\\",
    "<", ">", ",", ";", ":", "@", "(", ")", " ", "  ", "é", "😀", "x" * 80, "ÿ" * 30,
    "RCPT TO:<victim@evil.example>", "To: victim@evil.example",
]  # fmt: skip
_visible = st.characters(  # what the sender accepts in a header (bidi controls are refused)
    blacklist_categories=["Cc", "Cs", "Zl", "Zp", "Cn", "Co"],
    blacklist_characters="".join(domain.BIDI_CONTROLS),
)
printable = st.lists(
    st.one_of(st.text(_visible, max_size=8), st.sampled_from(PRINTABLE)), max_size=10
).map("".join)
texts = st.one_of(
    printable,
    printable,
    st.lists(st.one_of(st.text(max_size=8), st.sampled_from(CONTROL + PRINTABLE)), max_size=10).map(
        "".join
    ),
)
valid = st.sampled_from(["alice@example.com", "bob@example.org", "x.y+z@sub.example.net"])
addresses = st.one_of(
    valid,
    valid,
    st.emails(),
    st.builds(lambda a, t: a + t, valid, st.sampled_from(CONTROL + PRINTABLE)),
)
people = st.fixed_dictionaries({"address": addresses, "name": texts})
EXPECTED = {
    "from", "to", "cc", "reply-to", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "sender",
}  # fmt: skip


def _unfolded_headers(raw: bytes) -> list[tuple[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    out: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            name, value = out[-1]
            out[-1] = (name, value + line)  # unfolding removes only the CRLF
        else:
            name, sep, value = line.partition(": ")
            assert sep and name and ":" not in name and " " not in name, line
            out.append((name, value))
    return out


def _decode(value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(value)))


def _check(body: dict[str, Any], from_name: str, sender_name: str | None) -> None:
    try:
        msg = MessageIn.model_validate(body)
    except ValidationError as exc:
        event(f"refused: {exc.errors()[0]['loc'][-1]}")
        return  # refused (422): nothing is built
    # The identity is not validated by the request model: it must be encoded safely anyway.
    sender = domain.Person(sender_name, "bob@corp.example") if sender_name is not None else None
    who = domain.Identity(domain.Person(from_name, "sales@corp.example"), sender)
    try:
        built = mime.build(msg, who, send_id="0190-test", now=datetime.now(UTC))
    except ValueError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in from_name + (sender_name or ""))
        return
    event("built")
    raw = built.raw
    assert raw.isascii()
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    headers = _unfolded_headers(raw)
    names = [n.lower() for n, _ in headers]
    assert set(names) <= EXPECTED and len(names) == len(set(names)), names
    assert "bcc" not in names
    assert ("sender" in names) == (sender is not None)
    values = {n.lower(): v for n, v in headers}
    # every header holds exactly the text it was given
    assert _decode(values["subject"]) == msg.subject
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(parsed["Subject"]) == msg.subject
    for field, want in (("to", msg.to), ("cc", msg.cc)):
        if not want:
            assert field not in values
            continue
        got = email.utils.getaddresses([values[field]])
        assert [a for _, a in got] == [p.address for p in want]
        assert [_decode(n) for n, _ in got] == [p.name for p in want]
    [(fname, faddr)] = email.utils.getaddresses([values["from"]])
    assert (_decode(fname), faddr) == (from_name, "sales@corp.example")
    if sender is not None:
        [(sname, saddr)] = email.utils.getaddresses([values["sender"]])
        assert (_decode(sname), saddr) == (sender.name, sender.address)
    # the envelope: everyone once, Bcc included, nobody else
    assert built.recipients == list(dict.fromkeys(a.address for a in (*msg.to, *msg.cc, *msg.bcc)))


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    to=st.lists(people, min_size=1, max_size=3),
    cc=st.lists(people, max_size=2),
    bcc=st.lists(addresses, max_size=2),
    subject=texts,
    from_name=texts,
    sender_name=st.one_of(st.none(), texts),
)
def test_anything_is_refused_or_encoded_safely(
    to: list[dict[str, str]],
    cc: list[dict[str, str]],
    bcc: list[str],
    subject: str,
    from_name: str,
    sender_name: str | None,
) -> None:
    body = {"to": to, "cc": cc, "bcc": bcc, "subject": subject, "text": "hi"}
    _check(body, from_name, sender_name)


@SETTINGS
@given(
    names=st.lists(printable.map(lambda t: t[:200]), min_size=1, max_size=3),
    subject=printable.map(lambda t: t[:998]),
    from_name=texts,
    sender_name=st.one_of(st.none(), printable),
)
def test_printable_text_is_always_accepted_and_kept_exactly(
    names: list[str], subject: str, from_name: str, sender_name: str | None
) -> None:
    """Quotes, commas, angle brackets, encoded-word look-alikes, "Bcc: ..." and any other
    printable text are not refused: they arrive as text, never as structure."""
    to = [{"address": f"r{i}@example.com", "name": n} for i, n in enumerate(names)]
    body = {"to": to, "subject": subject, "text": "hi"}
    MessageIn.model_validate(body)  # never refused
    _check(body, from_name, sender_name)


def test_sent_copy_shows_bcc_but_the_delivered_bytes_do_not() -> None:
    msg = MessageIn.model_validate({"to": ["a@example.com"], "bcc": ["b@example.com"]})
    who = domain.Identity(domain.Person("S", "s@corp.example"))
    built = mime.build(msg, who, send_id="1", now=datetime.now(UTC), auto_bcc=["arch@corp.example"])
    assert b"b@example.com" not in built.raw and b"arch@corp.example" not in built.raw
    assert built.recipients == ["a@example.com", "b@example.com", "arch@corp.example"]
    copy = mime.sent_copy(built.raw, built.bcc)
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    assert parsed["Bcc"] == "b@example.com" and parsed["Message-ID"] == "<1@corp.example>"
