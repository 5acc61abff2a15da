"""Identifiers: UUIDv7 (time-ordered, RFC 9562) for events and aggregates."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_POOL_BYTES = 8192
_pool = b""
_pos = 0


def _random(n: int) -> int:
    """``n`` bytes from the OS CSPRNG as an int, drawn from a pool (one getrandom call per
    ~800 ids instead of two per id: system calls are dear in sandboxes). Call under ``_lock``."""
    global _pool, _pos
    if _pos + n > len(_pool):
        _pool, _pos = os.urandom(_POOL_BYTES), 0
    value = int.from_bytes(_pool[_pos : _pos + n], "big")
    _pos += n
    return value


def _reset_after_fork() -> None:
    global _pool, _pos
    _pool, _pos = b"", 0  # a forked child never reuses its parent's random bytes


os.register_at_fork(after_in_child=_reset_after_fork)


def _uuid7_int() -> int:
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = _random(2) & 0x3FF
        counter = _counter
        rand_b = _random(8) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return value


def uuid7() -> uuid.UUID:
    """Return a UUIDv7; monotonic within this process (12-bit counter in rand_a)."""
    return uuid.UUID(int=_uuid7_int())


def new_id() -> str:
    """A UUIDv7 in its canonical text form (formatted directly: one per event, so it counts)."""
    h = f"{_uuid7_int():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
