"""A 3-node NATS cluster on loopback with an R3 stream: kill one node under load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.nats import connect
from libs.common.natsserver import NatsServer, free_port
from tests.chaos.test_nats_crash import _audited, _post_all
from tests.support.stack import start_stack, wait_until

pytestmark = [pytest.mark.connected, pytest.mark.chaos]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    cluster_ports = [free_port() for _ in range(3)]
    routes = [f"nats-route://127.0.0.1:{p}" for p in cluster_ports]
    nodes = [
        NatsServer(
            tmp_path / f"n{i}",
            name=f"n{i}",
            cluster={"name": "mailroom", "port": cluster_ports[i], "routes": routes},
        )
        for i in range(3)
    ]
    for n in nodes:
        n.start()
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


async def _jetstream_ready(node: NatsServer) -> None:
    """A fresh cluster elects its JetStream meta leader first (seconds on a busy machine):
    until then every JetStream API call times out."""
    nc = await connect(node.url, name="cluster-probe")
    try:

        async def ready() -> bool:
            try:
                await nc.jetstream().account_info()
            except Exception:  # no meta leader yet: "timeout" or "JetStream not enabled"
                return False
            return True

        await wait_until(ready, timeout=90, interval=0.5)
    finally:
        await nc.close()


async def test_losing_one_node_loses_no_acknowledged_event(
    tmp_path: Path, cluster: list[NatsServer]
) -> None:
    # The services connect to node 0 and learn the others from it; the stream's leader is
    # killed under load (if that is node 0, the services fail over to another node too).
    await _jetstream_ready(cluster[0])
    stack = await start_stack(tmp_path, cluster[0], ("registry", "audit"), stream_replicas=3)
    js = stack.host.runtime.js

    async def leader() -> str | None:
        si = await js.stream_info("MAILROOM")
        return si.cluster.leader if si.cluster else None

    leader_name = await wait_until(leader, timeout=30)
    victim = next(n for n in cluster if n.name == leader_name)
    try:
        total = 600
        killed = asyncio.Event()

        async def chaos(i: int) -> None:
            if i == total // 3 and not killed.is_set():
                killed.set()
                victim.kill()

        ok = await _post_all(stack, total, chaos)
        assert killed.is_set() and len(ok) == total
        audit_db = stack.host.service("audit").db

        async def all_audited() -> bool:
            return len(await _audited(audit_db)) >= total

        await wait_until(all_audited, timeout=120, interval=0.5)
        audited = await _audited(audit_db)
        assert set(audited) == set(ok) and set(audited.values()) == {1}
        info = await stack.host.runtime.js.stream_info("MAILROOM")
        assert info.config.num_replicas == 3

        victim.start()  # the node rejoins and catches up

        async def rejoined() -> bool:
            si = await stack.host.runtime.js.stream_info("MAILROOM")
            replicas = si.cluster.replicas or [] if si.cluster else []
            return len(replicas) == 2 and all(r.current for r in replicas)

        await wait_until(rejoined, timeout=60, interval=0.5)
    finally:
        await stack.client.aclose()
        await stack.host.stop()
