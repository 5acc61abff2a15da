"""A local authoritative DNS server for tests (dnslib), UDP and TCP on 127.0.0.1.

Records are a dict of owner name -> list of zone-file record texts::

    records = {
        "acme.example": ["MX 10 aspmx.l.google.com.", 'TXT "v=spf1 -all"'],
        "_imaps._tcp.acme.example": ["SRV 0 1 993 mail.acme.example."],
        "mail.acme.example": ["A 192.0.2.10"],
    }
    with LocalDNSServer(records) as dns_server:
        resolver = make_resolver(dns_server.host, port=dns_server.port)

Names are case-insensitive with or without the trailing dot. A known name
without the asked type answers NOERROR/no data; an unknown name NXDOMAIN.
:class:`SilentDNSServer` binds the same kind of port and never answers.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSServer

__all__ = ["LocalDNSServer", "Records", "SilentDNSServer", "dns_server", "silent_dns_server"]

Records = Mapping[str, Sequence[str]]
HOST = "127.0.0.1"


def _key(name: str) -> str:
    return name.strip().rstrip(".").lower()


class _QuietLogger:
    """dnslib logger interface that logs nothing."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("log_"):
            return lambda *args: None
        raise AttributeError(name)


class _ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.lock = threading.Lock()
        self.zone: dict[str, list[RR]] = {}
        self.queries: list[tuple[str, str]] = []

    def load(self, records: Records) -> None:
        zone: dict[str, list[RR]] = {}
        for name, texts in records.items():
            owner = _key(name)
            rrs = zone.setdefault(owner, [])
            for text in texts:
                rrs.extend(RR.fromZone(f"{owner}. {self.ttl} IN {text}"))
        with self.lock:
            self.zone = zone

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname = _key(str(request.q.qname))
        qtype = request.q.qtype
        with self.lock:
            self.queries.append((qname, QTYPE[qtype]))
            rrs = self.zone.get(qname)
        if rrs is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rr in rrs:
            if qtype in (rr.rtype, QTYPE.ANY):
                reply.add_answer(rr)
        return reply


def _free_port_for_both() -> int:
    """A port free for both UDP and TCP on HOST (best effort, retried by the caller)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((HOST, 0))
        port: int = udp.getsockname()[1]
    return port


class LocalDNSServer:
    """Authoritative test DNS server; ``start()``/``stop()`` or use as a context manager."""

    def __init__(self, records: Records | None = None, *, ttl: int = 60) -> None:
        self.host = HOST
        self.port = 0
        self._resolver = _ZoneResolver(ttl)
        self._resolver.load(records or {})
        self._servers: list[DNSServer] = []

    @property
    def queries(self) -> list[tuple[str, str]]:
        """``(name, type)`` of every query received so far."""
        with self._resolver.lock:
            return list(self._resolver.queries)

    def set_records(self, records: Records) -> None:
        """Replace the served records (takes effect for the next query)."""
        self._resolver.load(records)

    def start(self) -> LocalDNSServer:
        last_error: OSError | None = None
        for _ in range(20):
            port = _free_port_for_both()
            try:
                servers = [
                    DNSServer(
                        self._resolver, address=HOST, port=port, tcp=tcp, logger=_QuietLogger()
                    )
                    for tcp in (False, True)
                ]
            except OSError as exc:  # port taken between probe and bind
                last_error = exc
                continue
            for server in servers:
                threading.Thread(
                    target=server.server.serve_forever,
                    kwargs={"poll_interval": 0.02},
                    name=f"test-dns-{port}",
                    daemon=True,
                ).start()
            self._servers, self.port = servers, port
            return self
        raise RuntimeError(f"no free port for the test DNS server: {last_error}")

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> LocalDNSServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SilentDNSServer:
    """Binds UDP and TCP on 127.0.0.1 and never answers: queries to it time out."""

    def __init__(self) -> None:
        self.host = HOST
        self.port = 0
        self._sockets: list[socket.socket] = []

    def start(self) -> SilentDNSServer:
        for _ in range(20):
            port = _free_port_for_both()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                udp.bind((HOST, port))
                tcp.bind((HOST, port))
                tcp.listen(8)
            except OSError:
                udp.close()
                tcp.close()
                continue
            self._sockets, self.port = [udp, tcp], port
            return self
        raise RuntimeError("no free port for the silent DNS server")

    def stop(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def __enter__(self) -> SilentDNSServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture
def dns_server() -> Iterator[LocalDNSServer]:
    """A running :class:`LocalDNSServer` with no records; call ``set_records``."""
    with LocalDNSServer() as server:
        yield server


@pytest.fixture
def silent_dns_server() -> Iterator[SilentDNSServer]:
    with SilentDNSServer() as server:
        yield server
