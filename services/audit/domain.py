"""The audit chain, pure: entry hash and chain hash of each stored event.

entry_hash = SHA-256(canonical JSON of the envelope)
chain_i    = SHA-256(chain_{i-1} || entry_hash_i), chain_0 = 32 zero bytes, per tenant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

GENESIS = bytes(32)


def entry_hash(canonical: bytes) -> bytes:
    return hashlib.sha256(canonical).digest()


def chain_hash(previous: bytes, entry: bytes) -> bytes:
    return hashlib.sha256(previous + entry).digest()


@dataclass(frozen=True, slots=True)
class StoredEntry:
    position: int
    tenant_seq: int
    canonical: bytes
    entry_hash: bytes
    chain_hash: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    checked: int
    first_bad_position: int | None = None
    first_bad_tenant_seq: int | None = None
    problem: str | None = None


class ChainWalker:
    """Checks one tenant's entries fed in order; remembers the first entry that breaks the chain."""

    def __init__(self, previous: bytes = GENESIS, expect_seq: int = 1) -> None:
        self.previous = previous
        self.expect_seq = expect_seq
        self.checked = 0
        self.bad: Verdict | None = None

    def feed(self, e: StoredEntry) -> bool:
        """Return False once the chain is broken (stop feeding)."""
        if self.bad is not None:
            return False
        problem = None
        if e.tenant_seq != self.expect_seq:
            problem = f"sequence gap: expected {self.expect_seq}, found {e.tenant_seq}"
        elif entry_hash(e.canonical) != e.entry_hash:
            problem = "entry content does not match its hash"
        elif chain_hash(self.previous, e.entry_hash) != e.chain_hash:
            problem = "chain hash does not follow from the previous entry"
        if problem:
            self.bad = Verdict(False, self.checked, e.position, e.tenant_seq, problem)
            return False
        self.previous = e.chain_hash
        self.expect_seq += 1
        self.checked += 1
        return True

    def verdict(self) -> Verdict:
        return self.bad or Verdict(True, self.checked)


def verify(entries: Iterable[StoredEntry]) -> Verdict:
    walker = ChainWalker()
    for e in entries:
        if not walker.feed(e):
            break
    return walker.verdict()
