"""Signatures, pure: sanitise rich-text HTML, derive plain text, check and fill placeholders.

HTML is cleaned with nh3 (ammonia) on the way in: only formatting tags survive; scripts, styles,
forms, frames and event handlers are removed with their content; links keep http(s), mailto and
tel; images keep only embedded ``data:image/…`` and ``cid:`` sources, so a signature cannot load
a remote resource (tracking pixels, CSS ``url()`` tricks) when the mail is opened.
Placeholders such as ``{employee.name}`` are checked when a signature is saved and filled at send
time, HTML-escaped in the HTML part.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Mapping
from html.parser import HTMLParser

import nh3

PLACEHOLDERS = frozenset(
    {
        "employee.name",
        "employee.title",
        "employee.email",
        "employee.department",
        "mailbox.address",
        "mailbox.display_name",
    }
)
MAX_HTML = 64 * 1024

_TAGS = {
    "a", "b", "strong", "i", "em", "u", "s", "br", "p", "div", "span", "small", "big",
    "sub", "sup", "hr", "ul", "ol", "li", "blockquote", "h1", "h2", "h3", "h4",
    "table", "thead", "tbody", "tr", "td", "th", "img", "font", "center",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "align", "valign", "width"},
    "th": {"colspan", "rowspan", "align", "valign", "width"},
    "table": {"width", "cellpadding", "cellspacing", "border", "align"},
    "font": {"color", "size", "face"},
    "p": {"align"},
    "div": {"align"},
}
_DROP_WITH_CONTENT = {"script", "style", "iframe", "object", "embed", "form", "noscript", "title"}
_PLACEHOLDER = re.compile(r"\{([a-z_]+(?:\.[a-z_]+)*)\}")


class SignatureError(ValueError):
    """A signature that cannot be saved; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    if tag == "img" and attr == "src":
        v = value.strip().lower()
        if v.startswith("cid:") or re.match(r"data:image/(png|gif|jpeg|webp);base64,", v):
            return value
        return None  # remote images load when the mail is opened: refused
    return value


def sanitize_html(raw: str) -> str:
    if len(raw) > MAX_HTML:
        raise SignatureError("signature_too_large", f"a signature may be {MAX_HTML} bytes")
    return nh3.clean(
        raw,
        tags=_TAGS,
        clean_content_tags=_DROP_WITH_CONTENT,
        attributes=_ATTRIBUTES,
        attribute_filter=_attribute_filter,
        url_schemes={"http", "https", "mailto", "tel", "cid", "data"},
        strip_comments=True,
        link_rel="noopener noreferrer",
    ).strip()


class _Text(HTMLParser):
    _BREAKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "hr", "table", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._BREAKS:
            self.parts.append("\n")
        if tag == "td":
            self.parts.append(" ")
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href and self._href.startswith(("http", "mailto:", "tel:")):
            target = self._href.removeprefix("mailto:").removeprefix("tel:")
            self.parts.append(f" <{target}>")
        if tag == "a":
            self._href = None
        if tag in ("p", "div", "table", "blockquote"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(re.sub(r"\s+", " ", data))


def derive_text(clean_html: str) -> str:
    """The plain-text version of sanitised HTML: line breaks kept, link targets shown."""
    parser = _Text()
    parser.feed(clean_html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def placeholders_in(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text))


def check_placeholders(text: str) -> None:
    unknown = sorted(placeholders_in(text) - PLACEHOLDERS)
    if unknown:
        known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
        raise SignatureError(
            "unknown_placeholder",
            f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; known: {known}",
        )


def prepare(raw_html: str) -> tuple[str, str]:
    """Sanitise a signature as it is saved: (clean HTML, plain text)."""
    clean = sanitize_html(raw_html)
    check_placeholders(clean)
    return clean, derive_text(clean)


def render(template: str, values: Mapping[str, str], *, html: bool) -> str:
    """Fill placeholders at send time (HTML-escaped in the HTML part); unknown ones stay empty."""

    def fill(m: re.Match[str]) -> str:
        value = values.get(m.group(1), "")
        return htmllib.escape(value) if html else value

    return _PLACEHOLDER.sub(fill, template)
