"""The faster nats-py header parser and encoder give exactly nats-py's results."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common import natsfast

ORIGINAL = natsfast._ORIGINAL

TRICKY = [
    b"",
    b"\r\n",
    b"ce-id: 1\r\nce-type: a.b.c\r\n\r\n",
    b"Name:Value\r\n",
    b"Name:\tValue \r\n",
    b"  padded  :  value  \r\n",
    b"a b: skipped\r\nok: 1\r\n",
    b"no colon here\r\nk: v\r\n",
    b": empty name\r\n",
    b"k: v: with: colons\r\n",
    b"dup: 1\r\ndup: 2\r\n",
    b"lone\ncr\rk: v\r\n",
    b"k: \x1cv\x1c\r\n",
    b"\x1ck: v\r\n",
    b"k\x0b: v\x0c\r\n",
    "k: caf\u00e9\r\n".encode(),
    b"k: \xff\xfe\r\n",
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
]


@pytest.mark.parametrize("raw", TRICKY)
def test_parser_matches_nats_py_on_tricky_blocks(raw: bytes) -> None:
    assert natsfast.parse_header_lines(raw) == ORIGINAL(raw)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet=" \t\x0b\x0c\x1c:-abcXY\u00e9", max_size=8),
            st.text(alphabet=" \t\x0b\x0c\x1c:\r\nab1\u00e9", max_size=10),
        ),
        max_size=6,
    )
)
def test_parser_matches_nats_py_on_random_blocks(lines: list[tuple[str, str]]) -> None:
    raw = "".join(f"{k}:{v}\r\n" if i % 3 else f"{k}{v}\r\n" for i, (k, v) in enumerate(lines))
    data = raw.encode()
    assert natsfast.parse_header_lines(data) == ORIGINAL(data)


def test_install_replaces_the_parser_of_every_client() -> None:
    from nats.aio.client import Client

    natsfast.install()
    assert Client._parse_header_lines(b"k: v\r\n") == {"k": "v"}
    assert Client._parse_header_lines is natsfast.parse_header_lines


def test_header_block_round_trips_and_refuses_line_breaks() -> None:
    block = natsfast.header_block({"Nats-Msg-Id": "x1", "ce-type": " t "})
    assert block.startswith(b"NATS/1.0\r\n") and block.endswith(b"\r\n\r\n")
    assert natsfast.parse_header_lines(block[len(b"NATS/1.0\r\n") :]) == {
        "Nats-Msg-Id": "x1",
        "ce-type": "t",
    }
    with pytest.raises(ValueError, match="line break"):
        natsfast.header_block({"k": "a\r\nInjected: 1"})
    with pytest.raises(ValueError, match="invalid header name"):
        natsfast.header_block({"bad name": "v"})


def test_a_block_parsed_again_gives_an_equal_dict_of_its_own() -> None:
    """Consumers of one process get the same header block: the second parse is a lookup, and
    no caller's changes reach another's dict."""
    raw = b"ce-id: 0193-x\r\nce-type: mailroom.registry.EmployeeAdded.v1\r\n"
    first = natsfast.parse_header_lines(raw)
    first["ce-id"] = "changed"
    second = natsfast.parse_header_lines(bytes(raw))
    assert second == {"ce-id": "0193-x", "ce-type": "mailroom.registry.EmployeeAdded.v1"}
    assert second is not first
    assert natsfast.parse_header_lines(bytearray(raw)) == ORIGINAL(bytes(raw))


def test_the_parsed_blocks_kept_are_bounded() -> None:
    for i in range(natsfast._PARSED_MAX + 50):
        assert natsfast.parse_header_lines(f"k: {i}\r\n".encode()) == {"k": str(i)}
    assert len(natsfast._PARSED) == natsfast._PARSED_MAX
    assert b"k: 0\r\n" not in natsfast._PARSED  # the oldest went first


def test_headers_appended_to_a_block_read_back_as_nats_py_reads_them() -> None:
    block = natsfast.header_block({"Nats-Msg-Id": "x1", "ce-actor": "admin:é"})
    more = natsfast.with_headers(block, {"Nats-Batch-Id": "b", "Nats-Batch-Sequence": "2"})
    assert natsfast.headers_of_block(more) == {
        "Nats-Msg-Id": "x1", "ce-actor": "admin:é", "Nats-Batch-Id": "b", "Nats-Batch-Sequence": "2"
    }  # fmt: skip
    with pytest.raises(ValueError):
        natsfast.with_headers(block, {"bad name": "v"})
    with pytest.raises(ValueError):
        natsfast.headers_of_block(b"k: v\r\n\r\n")
