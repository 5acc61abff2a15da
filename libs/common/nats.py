"""NATS connections and the JetStream streams Mailroom needs."""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from libs.common import natsfast
from libs.common.subjects import DLQ_PREFIX, DLQ_STREAM, PREFIX, STREAM

natsfast.install()  # nats-py's header parser costs half a consumer's time (natsfast.py)

log = logging.getLogger("mailroom.nats")

DUPLICATE_WINDOW_S = 300.0


async def connect(url: str, name: str = "mailroom") -> Any:
    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    servers = [u.strip() for u in url.split(",") if u.strip()]  # "nats://a:4222,nats://b:4222"
    return await nats.connect(
        servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        error_cb=on_error,
    )


def stream_configs(replicas: int = 1) -> list[StreamConfig]:
    """One ``MAILROOM`` stream for every service's events (README: "Why one stream")."""
    return [
        StreamConfig(
            name=STREAM,
            subjects=[f"{PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            discard=DiscardPolicy.OLD,
            allow_atomic=True,  # the outbox relay publishes a batch as one atomic write
        ),
        StreamConfig(
            name=DLQ_STREAM,
            subjects=[f"{DLQ_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
        ),
    ]


async def ensure_streams(js: Any, replicas: int = 1) -> None:
    for cfg in stream_configs(replicas):
        try:
            await js.stream_info(cfg.name)
            await js.update_stream(cfg)
        except nats.js.errors.NotFoundError:
            await js.add_stream(cfg)
