"""Reading an accounts CSV that may come from any spreadsheet, any locale, or an attacker.

* Encoding: the ``encoding`` asked for; else a byte-order mark (UTF-8, UTF-16, UTF-32); else
  UTF-16 recognised by its zero bytes; else UTF-8; else the legacy encoding whose decoding
  reads most like its own script (GB18030/GBK, Big5, Shift_JIS, EUC-KR, Windows-1251,
  Windows-1252, Latin-1).
* Delimiter: ``,`` ``;`` tab or ``|``, whichever makes the header name the most known columns.
* Header names are case-, space- and dash-insensitive; unknown columns are ignored (reported).
* A cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR (a spreadsheet formula) is refused
  for its row and never echoed back; only ``password`` may start so.
* Rows are numbered as a spreadsheet shows them (the header is row 1).

File-level problems raise :class:`CsvError` (422) naming what is wrong; row-level problems are
returned per row, with the row number and the column.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
from dataclasses import dataclass, field

from libs.common.errors import MailroomError

COLUMNS = (
    "address",
    "display_name",
    "protocol",
    "preset",
    "incoming_host",
    "incoming_port",
    "incoming_security",
    "incoming_protocol",
    "ews_url",
    "outgoing_host",
    "outgoing_port",
    "outgoing_security",
    "username",
    "password",
    "auth_mode",
    "allow_insecure",
    "ownership",
    "owner_email",
    "employee_name",
    "employee_title",
    "department",
    "polling_interval_s",
    "daily_send_limit",
    "forwarding",
    "auto_bcc",
    "send_as_name",
    "send_as_address",
    "leave_on_server",
    "folders",
)
REQUIRED = ("address",)
ALIASES = {
    "email": "address",
    "email_address": "address",
    "mailbox": "address",
    "preset_id": "preset",
    "owner": "owner_email",
    "employee_email": "owner_email",
    "title": "employee_title",
    "polling_interval": "polling_interval_s",
    "forward": "forwarding",
}
SECRET_COLUMNS = frozenset({"password"})
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
DELIMITERS = (",", ";", "\t", "|")
MAX_HEADER_COLUMNS = 100
MAX_CELL = 8192
_LEGACY = ("gb18030", "big5", "shift_jis", "euc_kr", "cp1251", "cp1252", "latin_1")
_SCRIPT = {
    "gb18030": "CJK",
    "big5": "CJK",
    "shift_jis": "CJK",
    "euc_kr": "HANGUL",
    "cp1251": "CYRILLIC",
    "cp1252": "LATIN",
    "latin_1": "LATIN",
}
_NORMALISE = re.compile(r"[\s\-.]+")


class CsvError(MailroomError):
    """The file as a whole cannot be imported (422)."""

    status = 422
    code = "invalid_csv"


@dataclass(frozen=True, slots=True)
class Row:
    number: int
    cells: dict[str, str]


@dataclass(frozen=True, slots=True)
class RowProblem:
    number: int
    code: str
    message: str
    column: str | None = None


@dataclass
class Parsed:
    encoding: str
    delimiter: str
    columns: list[str]
    ignored: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


def safe_text(value: str, limit: int = 120) -> str:
    """A cell value fit to show: formula starts neutralised (``'`` prefix), controls removed."""
    text = "".join(c if c.isprintable() else " " for c in value[:limit])
    if text.lstrip().startswith(FORMULA_START[:4]):
        text = "'" + text
    return text + ("…" if len(value) > limit else "")


# --- decoding ---------------------------------------------------------------------------------
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _utf16_without_bom(data: bytes) -> str | None:
    head = data[:4096]
    if len(head) < 4 or head.count(0) < len(head) // 4:
        return None
    odd = sum(1 for b in head[1::2] if b == 0)
    even = sum(1 for b in head[0::2] if b == 0)
    return "utf-16-le" if odd > even else "utf-16-be"


def _script_score(text: str, script: str, encoding: str) -> int:
    """Bytes-weighted plausibility: non-ASCII letters of the expected script count for,
    anything else (symbols, other scripts, a non-Latin letter inside a Latin word) against."""
    score = 0
    for i, ch in enumerate(text):
        if ord(ch) < 128:
            continue
        weight = len(ch.encode(encoding))  # per byte: a 2-byte character counts twice
        name = unicodedata.name(ch, "")
        hit = "HALFWIDTH" not in name and name.startswith(script)
        hit = hit or (script == "CJK" and "KATAKANA" in name and "HALFWIDTH" not in name)
        hit = hit or (script == "CJK" and "HIRAGANA" in name)
        hit = hit and unicodedata.category(ch).startswith("L")
        if hit and script != "LATIN":
            around = text[max(i - 1, 0) : i + 2]
            hit = not any(c.isascii() and c.isalpha() for c in around)
        score += weight if hit else -weight
    return score


def _guess_legacy(data: bytes) -> tuple[str, str]:
    best: tuple[int, int, str, str] | None = None
    for rank, encoding in enumerate(_LEGACY):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        key = (_script_score(text, _SCRIPT[encoding], encoding), -rank, encoding, text)
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None  # latin_1 decodes anything
    return best[2], best[3]


def decode(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """``(text, encoding used)``."""
    if encoding:
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise CsvError(
                f"unknown encoding {safe_text(encoding, 40)!r}", code="unknown_encoding"
            ) from None
        try:
            return data.decode(name), name
        except UnicodeDecodeError as exc:
            raise CsvError(
                f"the file is not valid {name} (byte {exc.start}); "
                "leave out encoding to have it detected",
                code="undecodable",
            ) from None
    for bom, name in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(name), name
            except UnicodeDecodeError:
                raise CsvError(
                    f"the file starts as {name} but is not", code="undecodable"
                ) from None
    utf16 = _utf16_without_bom(data)
    if utf16 is not None:
        try:
            return data.decode(utf16), utf16
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        name, text = _guess_legacy(data)
        return text, name


# --- header and delimiter ---------------------------------------------------------------------
def column_name(cell: str) -> str:
    key = _NORMALISE.sub("_", cell.replace("\ufeff", "").strip().strip("\"'").lower())
    return ALIASES.get(key, key)


def _header(text: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(text[:65536]), delimiter=delimiter), [])
    except csv.Error:
        return []


def sniff(text: str) -> tuple[str, list[str]]:
    """The delimiter that makes the header name the most known columns, and the header."""
    best: tuple[int, int, str, list[str]] | None = None
    for delimiter in DELIMITERS:
        header = _header(text, delimiter)
        known = sum(1 for c in header if column_name(c) in COLUMNS)
        key = (known, len(header), delimiter, header)
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    return best[2], best[3]


# --- parsing ----------------------------------------------------------------------------------
def parse(data: bytes, *, encoding: str | None = None, max_rows: int = 50_000) -> Parsed:
    text, used = decode(data, encoding)
    text = text.replace("\x00", "")
    if not text.strip():
        raise CsvError("the file is empty", code="empty_csv")
    delimiter, header = sniff(text)
    if len(header) > MAX_HEADER_COLUMNS:
        raise CsvError(
            f"the header has {len(header)} columns; at most {MAX_HEADER_COLUMNS} are read",
            code="too_many_columns",
        )
    names = [column_name(c) for c in header]
    known = [n for n in names if n in COLUMNS]
    dupes = sorted({n for n in known if known.count(n) > 1})
    if dupes:
        raise CsvError(
            f"column(s) named twice: {', '.join(dupes)}",
            code="duplicate_columns",
            details={"columns": dupes},
        )
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise CsvError(
            f"missing required column(s): {', '.join(missing)} (the first line must name the "
            f"columns, e.g. {','.join(COLUMNS[:4])}...)",
            code="missing_columns",
            details={"missing": missing, "known": list(COLUMNS)},
        )
    parsed = Parsed(
        encoding=used,
        delimiter=delimiter,
        columns=known,
        ignored=[safe_text(h, 40) for h, n in zip(header, names, strict=True) if n not in COLUMNS],
    )
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    number = 0
    try:
        for number, record in enumerate(reader, start=1):
            if number == 1:
                continue
            if len(parsed.rows) + len(parsed.problems) >= max_rows:
                raise CsvError(
                    f"more than {max_rows} rows: split the file",
                    code="too_many_rows",
                    details={"limit": max_rows},
                )
            _row(parsed, names, number, record)
    except csv.Error as exc:
        raise CsvError(
            f"row {number + 1}: the file is not readable CSV ({exc})", code="csv_unreadable"
        ) from None
    if not parsed.rows and not parsed.problems:
        raise CsvError("the file has a header but no rows", code="empty_csv")
    return parsed


def _row(parsed: Parsed, names: list[str], number: int, record: list[str]) -> None:
    if not any(c.strip() for c in record):
        return  # a blank line
    if len(record) > len(names) and any(c.strip() for c in record[len(names) :]):
        parsed.problems.append(
            RowProblem(
                number,
                "too_many_columns",
                f"row {number} has {len(record)} cells, the header names {len(names)}: "
                "a delimiter inside a cell must be quoted",
            )
        )
        return
    cells: dict[str, str] = {}
    for name, raw in zip(names, record, strict=False):
        if name not in COLUMNS:
            continue
        value = raw if name in SECRET_COLUMNS else raw.strip()
        if len(value) > MAX_CELL:
            parsed.problems.append(
                RowProblem(
                    number, "cell_too_long", f"{name} is longer than {MAX_CELL} characters", name
                )
            )
            return
        if name not in SECRET_COLUMNS and value.startswith(FORMULA_START):
            parsed.problems.append(
                RowProblem(
                    number,
                    "formula_injection",
                    f"{name} starts with {value[0]!r}, which a spreadsheet runs as a formula: "
                    "refused (remove the leading character)",
                    name,
                )
            )
            return
        cells[name] = value
    parsed.rows.append(Row(number, cells))
