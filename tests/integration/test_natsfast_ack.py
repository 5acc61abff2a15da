"""``natsfast.ack_all`` acknowledges a pulled batch in one write, as ``Msg.ack`` would each
message (real nats-server with JetStream)."""

from __future__ import annotations

from typing import Any

import nats
import pytest
from nats.errors import MsgAlreadyAckdError

from libs.common.natsfast import ack_all
from libs.common.natsserver import NatsServer
from tests.support.stack import wait_until

pytestmark = [pytest.mark.connected]


async def test_ack_all_acknowledges_every_message_once(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="ACKS", subjects=["acks.>"])
        for i in range(50):
            await js.publish(f"acks.{i % 3}", str(i).encode())
        sub = await js.pull_subscribe("acks.>", durable="d", stream="ACKS")
        msgs = await sub.fetch(50, timeout=5)
        assert len(msgs) == 50
        await ack_all(msgs[:30])
        await msgs[30].ack()  # mixed with single acks
        await ack_all(msgs[31:])
        await nc.flush()

        async def settled() -> Any:  # the server applies acks after our flush returns
            info = await js.consumer_info("ACKS", "d")
            return info if info.num_ack_pending == 0 else None

        info = await wait_until(settled, timeout=5, interval=0.05)
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
        assert info.ack_floor.stream_seq == 50
        with pytest.raises(MsgAlreadyAckdError):
            await ack_all(msgs[:1])
        await ack_all([])
    finally:
        await nc.close()
