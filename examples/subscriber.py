"""An internal service that reacts to Mailroom events: new accounts and offboarded employees.

A durable JetStream pull consumer on the ``MAILROOM`` stream, filtered to the two event subjects
it needs; each message is decoded into the typed models of ``libs.common.events`` (old versions
are upcast to the newest) and acknowledged after it was handled. The durable remembers its
position: restart it and it continues where it stopped. Subjects and payloads: docs/asyncapi.json.

    MAILROOM_NATS_URL=nats://127.0.0.1:4222 python examples/subscriber.py [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import os

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from libs.common.events import (
    AccountAdded,
    EmployeeOffboarded,
    Envelope,
    EventDecodeError,
    UnknownEventType,
)
from libs.common.subjects import STREAM

DURABLE = "example-subscriber"
SUBJECTS = [
    "mailroom.*.registry.account.*.AccountAdded",
    "mailroom.*.registry.employee.*.EmployeeOffboarded",
]


def handle(env: Envelope) -> None:
    event = env.event()  # the typed, validated model
    if isinstance(event, AccountAdded):
        print(f"account added: {event.address} ({event.protocol}) in {env.tenant_id}", flush=True)
    elif isinstance(event, EmployeeOffboarded):
        boxes = ", ".join(event.mailbox_ids) or "no mailboxes"
        print(f"employee offboarded: {env.aggregate_id} in {env.tenant_id} ({boxes})", flush=True)


async def main(url: str, count: int) -> None:
    nc = await nats.connect(url, name=DURABLE)
    js = nc.jetstream()
    config = ConsumerConfig(
        durable_name=DURABLE,
        filter_subjects=SUBJECTS,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=5,
    )
    await js.add_consumer(STREAM, config)  # idempotent for the same configuration
    sub = await js.pull_subscribe_bind(DURABLE, STREAM)
    handled = 0
    try:
        while count == 0 or handled < count:
            try:
                msgs = await sub.fetch(batch=64, timeout=5)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                try:
                    handle(Envelope.from_nats(msg.headers, msg.data))
                except (EventDecodeError, UnknownEventType):
                    await msg.term()  # not a valid event: never redeliver it
                    continue
                await msg.ack()
                handled += 1
    finally:
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    args = parser.parse_args()
    url = os.environ.get("MAILROOM_NATS_URL", "nats://127.0.0.1:4222")
    asyncio.run(main(url, args.count))
