"""One decode per event per process: the consumers of the embedded stack share envelopes."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from libs.common import consumer
from libs.common.consumer import BadMessage, decode_message
from libs.common.events import CATALOGUE, CommandContext, EmployeeAdded, Envelope
from libs.common.ids import new_id


def _message(name: str = "Ada", env: Envelope | None = None) -> tuple[Msg, Envelope]:
    env = env or Envelope.wrap(
        EmployeeAdded(name=name, email="ada@example.com"),
        CommandContext("acme", "admin:a"),
        aggregate_id=new_id(),
        aggregate_version=1,
    )
    msg = Msg(_client=None, subject=env.nats_subject, headers=env.to_headers(), data=env.body())  # type: ignore[arg-type]
    return msg, env


def test_the_same_event_delivered_twice_is_decoded_once() -> None:
    msg, env = _message()
    again = Msg(
        _client=None, subject=msg.subject, headers=dict(msg.headers or {}), data=bytes(msg.data)
    )  # type: ignore[arg-type]
    first = decode_message(msg, CATALOGUE)
    assert first.id == env.id and first.data == env.data
    assert decode_message(again, CATALOGUE) is first


def test_a_different_message_under_the_same_id_is_decoded_on_its_own() -> None:
    msg, env = _message()
    first = decode_message(msg, CATALOGUE)
    forged = env.model_copy(update={"data": {**env.data, "name": "Mallory"}})
    msg2, _ = _message(env=forged)
    second = decode_message(msg2, CATALOGUE)
    assert second is not first and second.data["name"] == "Mallory"
    garbage = Msg(_client=None, subject=msg.subject, headers=msg.headers, data=b"{not json")  # type: ignore[arg-type]
    with pytest.raises(BadMessage):
        decode_message(garbage, CATALOGUE)


def test_the_envelopes_kept_are_bounded_oldest_first() -> None:
    msgs = [_message(f"P{i}")[0] for i in range(consumer._DECODED_MAX + 20)]
    for m in msgs:
        decode_message(m, CATALOGUE)
    assert len(consumer._DECODED) == consumer._DECODED_MAX
    oldest = (id(CATALOGUE), msgs[0].subject, (msgs[0].headers or {})["ce-id"])
    newest = (id(CATALOGUE), msgs[-1].subject, (msgs[-1].headers or {})["ce-id"])
    assert oldest not in consumer._DECODED and newest in consumer._DECODED
