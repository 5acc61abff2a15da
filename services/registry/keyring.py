"""The key-encryption-key (KEK) ring used to wrap per-credential data keys.

A ``KeyRing`` holds versioned 256-bit KEKs and names one of them *active*: new data keys
are wrapped under the active version, older versions stay in the ring only so that blobs
wrapped under them can still be opened (or re-wrapped) until nothing uses them any more.

Key material is read from the environment, in this JSON shape::

    {"active": 2, "keys": {"1": "<base64 of 32 bytes>", "2": "<base64 of 32 bytes>"}}

either inline in ``MAILROOM_KEKS`` or in a file named by ``MAILROOM_KEKS_FILE`` (a mounted
Kubernetes secret, say). Setting both is refused as ambiguous. Keys use standard base64
with padding, e.g. ``openssl rand -base64 32``.

A ``KeyRing`` is immutable: ``with_new_version`` and ``retire`` return a new ring. Key
bytes are held in ``pydantic.SecretBytes`` and never appear in ``repr``/``str`` or in error
messages; only ``to_json`` (for writing the secret back) reveals them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretBytes

__all__ = [
    "ENV_KEKS",
    "ENV_KEKS_FILE",
    "KEK_BYTES",
    "MAX_KEK_VERSION",
    "CryptoError",
    "KeyRetireRefusedError",
    "KeyRing",
    "KeyRingError",
]

ENV_KEKS = "MAILROOM_KEKS"
ENV_KEKS_FILE = "MAILROOM_KEKS_FILE"
KEK_BYTES = 32
MAX_KEK_VERSION = 2**32 - 1  # stored as an unsigned 32-bit integer in sealed blobs

_VERSION_RE = re.compile(r"[1-9][0-9]{0,9}")


class CryptoError(Exception):
    """Base class of every error raised by the credential-encryption code."""


class KeyRingError(CryptoError, ValueError):
    """Key material is missing, malformed, or an operation on the ring is invalid."""


class KeyRetireRefusedError(KeyRingError):
    """A KEK version cannot be retired: it is active or blobs are still wrapped under it."""


def _check_version(version: object, what: str) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise KeyRingError(f"{what} must be an integer, got {type(version).__name__}")
    if not 1 <= version <= MAX_KEK_VERSION:
        raise KeyRingError(f"{what} must be between 1 and {MAX_KEK_VERSION}, got {version}")
    return version


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise KeyRingError(f"key material JSON: duplicate member {key!r}")
        out[key] = value
    return out


class KeyRing:
    """Versioned KEKs (32 random bytes each) with exactly one active version."""

    __slots__ = ("_active", "_keys")

    _keys: Mapping[int, SecretBytes]
    _active: int

    def __init__(self, keys: Mapping[int, bytes | SecretBytes], active: int) -> None:
        checked: dict[int, SecretBytes] = {}
        seen: dict[bytes, int] = {}
        for version, key in sorted(keys.items()):
            _check_version(version, "key version")
            raw = key.get_secret_value() if isinstance(key, SecretBytes) else bytes(key)
            if len(raw) != KEK_BYTES:
                raise KeyRingError(
                    f"key version {version}: expected {KEK_BYTES} bytes, got {len(raw)}"
                )
            if raw in seen:
                raise KeyRingError(
                    f"key versions {seen[raw]} and {version} have identical key material"
                )
            seen[raw] = version
            checked[version] = SecretBytes(raw)
        if not checked:
            raise KeyRingError("the key ring holds no keys")
        _check_version(active, "active version")
        if active not in checked:
            raise KeyRingError(
                f"active version {active} is not among the key versions {sorted(checked)}"
            )
        object.__setattr__(self, "_keys", MappingProxyType(checked))
        object.__setattr__(self, "_active", active)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("KeyRing is immutable")

    def __repr__(self) -> str:
        return f"KeyRing(active={self._active}, versions={list(self._keys)})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("KeyRing must not be pickled (it holds key material)")

    def __contains__(self, version: object) -> bool:
        return version in self._keys

    @property
    def active_version(self) -> int:
        return self._active

    @property
    def versions(self) -> tuple[int, ...]:
        """All versions in the ring, ascending."""
        return tuple(self._keys)

    def key(self, version: int) -> SecretBytes:
        """The KEK of ``version`` (still wrapped in ``SecretBytes``)."""
        try:
            return self._keys[version]
        except KeyError:
            raise KeyRingError(f"KEK version {version} is not in the key ring") from None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def generate(cls) -> KeyRing:
        """A ring with one fresh random key, version 1, active."""
        return cls({1: AESGCM.generate_key(bit_length=256)}, active=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyRing:
        """Parse ``{"active": N, "keys": {"N": "<base64>", ...}}``."""
        try:
            doc = json.loads(text, object_pairs_hook=_reject_duplicates)
        except json.JSONDecodeError as exc:
            # Only the position: the exception's .doc holds the key material.
            raise KeyRingError(
                f"key material is not valid JSON ({exc.msg} at line {exc.lineno} "
                f"column {exc.colno})"
            ) from None
        except UnicodeDecodeError:
            raise KeyRingError("key material is not valid UTF-8") from None
        if not isinstance(doc, dict):
            raise KeyRingError('key material must be a JSON object {"active": ..., "keys": ...}')
        unknown = sorted(set(doc) - {"active", "keys"})
        if unknown:
            raise KeyRingError(f"key material has unknown members {unknown}")
        if "active" not in doc:
            raise KeyRingError('key material lacks "active"')
        if "keys" not in doc:
            raise KeyRingError('key material lacks "keys"')
        entries = doc["keys"]
        if not isinstance(entries, dict):
            raise KeyRingError('"keys" must be an object mapping version -> base64 key')
        keys: dict[int, bytes] = {}
        for name, encoded in entries.items():
            if not _VERSION_RE.fullmatch(name):
                raise KeyRingError(f"key version {name!r} is not a positive decimal integer")
            version = _check_version(int(name), "key version")
            if not isinstance(encoded, str):
                raise KeyRingError(f"key version {version}: key must be a base64 string")
            try:
                keys[version] = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(
                    f"key version {version}: not valid standard base64 "
                    "(generate one with `openssl rand -base64 32`)"
                ) from None
        return cls(keys, active=_check_version(doc["active"], '"active"'))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> KeyRing:
        """Load from ``MAILROOM_KEKS`` (inline JSON) or ``MAILROOM_KEKS_FILE`` (path)."""
        inline = environ.get(ENV_KEKS, "").strip()
        path = environ.get(ENV_KEKS_FILE, "").strip()
        if inline and path:
            raise KeyRingError(f"both {ENV_KEKS} and {ENV_KEKS_FILE} are set; set only one")
        if inline:
            return cls.from_json(inline)
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
                raise KeyRingError(
                    f"cannot read key file {path!r} ({ENV_KEKS_FILE}): {reason}"
                ) from None
            return cls.from_json(text)
        raise KeyRingError(f"no key material configured: set {ENV_KEKS} or {ENV_KEKS_FILE}")

    # -- serialisation and lifecycle ----------------------------------------------------

    def to_json(self) -> str:
        """The ring in the ``from_json`` format. REVEALS the key material."""
        keys = {
            str(v): base64.b64encode(k.get_secret_value()).decode("ascii")
            for v, k in self._keys.items()
        }
        return json.dumps({"active": self._active, "keys": keys}, sort_keys=True)

    def _raw(self, versions: Iterable[int]) -> dict[int, bytes]:
        return {v: self._keys[v].get_secret_value() for v in versions}

    def with_new_version(self) -> KeyRing:
        """A ring with a fresh key at version ``max + 1``, made active (``keys rotate``).

        Blobs wrapped under older versions stay openable; re-wrap them with
        ``crypto.rewrap`` and then ``retire`` the old versions.
        """
        new = max(self._keys) + 1
        _check_version(new, "new key version")
        keys = self._raw(self._keys)
        keys[new] = AESGCM.generate_key(bit_length=256)
        return KeyRing(keys, active=new)

    def retire(self, version: int, still_in_use: int) -> KeyRing:
        """A ring without ``version``; refused while it is active or still wraps blobs.

        ``still_in_use`` is the caller's count of stored blobs whose ``kek_version`` is
        ``version``. Once the retired key is also gone from every copy of the secret,
        backups of blobs wrapped only under it are unreadable (crypto-shredded).
        """
        if version not in self._keys:
            raise KeyRingError(f"KEK version {version} is not in the key ring")
        if version == self._active:
            raise KeyRetireRefusedError(
                f"KEK version {version} is the active version; rotate first "
                "(`mailroom keys rotate`) and re-wrap, then retire it"
            )
        if still_in_use < 0:
            raise ValueError(f"still_in_use must be >= 0, got {still_in_use}")
        if still_in_use > 0:
            raise KeyRetireRefusedError(
                f"KEK version {version} still wraps {still_in_use} stored credential(s); "
                "re-wrap them under the active version first"
            )
        return KeyRing(self._raw(v for v in self._keys if v != version), active=self._active)
