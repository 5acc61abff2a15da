"""Loopback ports and local server processes: free ports, readiness waits, process groups."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_ports(ports: list[int], host: str = LOOPBACK, timeout: float = 10.0) -> None:
    """Block until every port accepts connections; raise ``TimeoutError`` otherwise."""
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        pending = [p for p in pending if not port_open(p, host)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"ports {pending} on {host} not accepting after {timeout}s")
        time.sleep(0.02)


def wait_ports_closed(ports: list[int], host: str = LOOPBACK, timeout: float = 10.0) -> None:
    """Block until no port accepts connections any more."""
    deadline = time.monotonic() + timeout
    while any(port_open(p, host) for p in ports):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ports {ports} on {host} still open after {timeout}s")
        time.sleep(0.02)


def greets(host: str, port: int, prefix: bytes, timeout: float = 1.0) -> bool:
    """True if a new connection to ``host:port`` is greeted with a line starting ``prefix``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return sock.recv(64).startswith(prefix)
    except OSError:
        return False


def process_group(pgid: int) -> list[str]:
    """Names (last path part of argv[0]) of the live processes in process group ``pgid``."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            state, _, group = text[text.rindex(")") + 2 :].split()[:3]
            if state != "Z" and int(group) == pgid:
                names.append(cmd.rsplit("/", 1)[-1])
    return names
