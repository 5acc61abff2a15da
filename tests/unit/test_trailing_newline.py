"""Patterns anchored with ``$`` also match before a trailing newline: every validator uses ``\\Z``.

Found by hypothesis (tests/unit/test_sender_mime.py): a display name of "\\n" passed the
"printable" check and was written into a header as a quoted string holding a bare LF.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.common.subjects import SubjectError, event_subject
from services.sender import domain, mime
from services.sender.models import MessageIn


@pytest.mark.parametrize("name", ["\n", "Sales\n", "a\nBcc: x@evil.example"])
def test_a_display_name_with_a_newline_never_reaches_the_header_raw(name: str) -> None:
    msg = MessageIn.model_validate({"to": [{"address": "a@example.com"}], "text": "hi"})
    who = domain.Identity(domain.Person(name, "sales@corp.example"), None)
    raw = mime.build(msg, who, send_id="0190-test", now=datetime.now(UTC)).raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize("tenant", ["acme\n", "acme\r\n"])
def test_a_subject_token_with_a_trailing_newline_is_refused(tenant: str) -> None:
    with pytest.raises(SubjectError):
        event_subject(tenant, "registry", "account", "a1", "AccountAdded")
