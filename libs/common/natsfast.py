"""Two hot spots of nats-py 2.16, done cheaper with the same results.

Profiling the event pipeline (bench/pipeline.py) showed that nats-py spends most of a consumer's
time parsing message headers (a generator per header name to look for whitespace) and most of the
relay's time encoding them (``str.translate`` per value). Every Mailroom event carries a dozen
CloudEvents headers, so both run a dozen times per message.

* :func:`parse_header_lines` replaces ``nats.aio.client.Client._parse_header_lines`` (a static
  method) for ASCII header blocks — which CloudEvents attributes, ids and ``traceparent`` are — and
  defers to the original for anything else, so every edge case keeps nats-py's behaviour
  (tests/unit/test_natsfast.py compares both on tricky inputs).
* :func:`header_block` + :func:`publish_with_header_block` publish with headers encoded once,
  refusing values with CR/LF instead of silently replacing them (our headers never hold any).
* :func:`ack_all` acknowledges a consumer's batch in one buffered write instead of a publish
  (checks, buffer append, flusher kick) per message.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from nats import errors as _errors
from nats.aio import client as _client
from nats.aio.msg import Msg as _Msg
from nats.protocol import command as _command

_ORIGINAL = _client.Client._parse_header_lines
_WHITESPACE = re.compile(r"\s")
# What bytes.strip() strips inside a line (str.strip() would also strip \x1c-\x1f).
_STRIP = " \t\x0b\x0c"
_HEADER_KEY = _client._HEADER_KEY_RE  # the token characters nats-py accepts


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """Same result as nats-py's parser: ``Name: Value`` lines; names with whitespace skipped.

    Every consumer of a process gets its own delivery of an event with the same header block
    (the embedded stack runs every service's consumers): a block parsed a moment ago is not
    parsed again. Each caller gets its own dict."""
    if type(raw) is not bytes:
        return _parse(raw)
    hit = _PARSED.get(raw)
    if hit is not None:
        return dict(hit)
    out = _parse(raw)
    _PARSED[raw] = out
    if len(_PARSED) > _PARSED_MAX:
        try:
            _PARSED.popitem(last=False)  # the oldest
        except KeyError:  # emptied meanwhile by another thread's client
            pass
    return dict(out)


_PARSED: OrderedDict[bytes, dict[str, str]] = OrderedDict()
_PARSED_MAX = 1024  # a few consumer batches (256 messages each)


def _parse(raw: bytes) -> dict[str, str]:
    if not raw.isascii():
        return _ORIGINAL(raw)
    text = raw.decode("ascii")
    crlf = text.count("\r\n")
    if text.count("\r") != crlf or text.count("\n") != crlf:  # a lone CR or LF
        return _ORIGINAL(raw)
    out: dict[str, str] = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip(_STRIP)] = value.strip(_STRIP)
    if _WHITESPACE.search("".join(out)):  # nats-py skips names with whitespace
        return _ORIGINAL(raw)
    return out


def install() -> None:
    """Use :func:`parse_header_lines` in every nats-py client of this process (idempotent)."""
    _client.Client._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]


def header_block(headers: dict[str, str]) -> bytes:
    """The ``NATS/1.0`` header block of a message; ValueError for a name or value nats-py
    would reject or rewrite (CR/LF in a value)."""
    parts = [BLOCK_START]
    for name, value in headers.items():
        if name not in _VALID_NAMES:
            if not _HEADER_KEY.fullmatch(name):
                raise ValueError(f"invalid header name {name!r}")
            if len(_VALID_NAMES) < 4096:  # names are a few constants; bounded all the same
                _VALID_NAMES.add(name)
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} holds a line break")
        parts.append(f"{name}: {value.strip()}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode()


BLOCK_START = "NATS/1.0\r\n"
_VALID_NAMES: set[str] = set()


def with_headers(block: bytes, extra: dict[str, str]) -> bytes:
    """``block`` (from :func:`header_block`) with more headers at its end (same checks)."""
    return block[:-2] + header_block(extra)[len(BLOCK_START) :]


def headers_of_block(block: bytes) -> dict[str, str]:
    """The headers of a block from :func:`header_block`, as nats-py hands them to a receiver."""
    if not block.startswith(BLOCK_START.encode()):
        raise ValueError("not a NATS/1.0 header block")
    return parse_header_lines(block[len(BLOCK_START) :])


async def publish_with_header_block(
    nc: Any, subject: str, payload: bytes, block: bytes, reply: str = ""
) -> None:
    """``nc.publish`` with a prepared header block (same checks, same buffering and flushing)."""
    if nc.is_closed:
        raise _errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise _errors.ConnectionDrainingError
    size = len(payload)
    if size > nc._max_payload:
        raise _errors.MaxPayloadError
    if not nc.is_connected and (
        nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size
    ):
        raise _errors.OutboundBufferLimitError
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += size
    await nc._send_command(_command.hpub_cmd(subject, reply, block, payload))
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


async def ack_all(msgs: Sequence[Any]) -> None:
    """``await m.ack()`` for each message, as one buffered write of their ``+ACK`` publishes
    (same checks: a message without a reply subject or acknowledged already raises)."""
    if not msgs:
        return
    if any(type(m) is not _Msg for m in msgs):  # another message type: its own ack()
        for m in msgs:
            await m.ack()
        return
    nc = msgs[0]._client
    if nc.is_closed:
        raise _errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise _errors.ConnectionDrainingError
    for m in msgs:
        m._check_reply()
        if m._client is not nc:
            raise ValueError("messages of different connections")
    block = b"".join(_command.pub_cmd(m.reply, "", b"") for m in msgs)
    nc.stats["out_msgs"] += len(msgs)
    await nc._send_command(block)
    for m in msgs:
        m._ackd = True
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
