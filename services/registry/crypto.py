"""Envelope encryption of stored mailbox credentials.

Scheme (format version 1)
-------------------------
``seal`` draws a fresh random 256-bit data key (DEK) per call and encrypts the
credential with AES-256-GCM under a fresh random 96-bit nonce. The associated data binds
the ciphertext to ``(format version, tenant_id, account_id, field)``, so a blob copied
to another tenant, account or field does not open. The DEK is then wrapped with
AES-256-GCM under the ring's *active* KEK (see ``keyring.KeyRing``) with its own random
nonce and associated data ``(format version, kek_version, tenant_id, account_id,
field)``. The two associated-data strings carry distinct domain labels and
length-prefixed UTF-8 fields, so no two bindings encode alike.

Each DEK encrypts exactly one message, so the data nonce can never repeat under a key;
KEK nonces are random, and a KEK should be rotated long before 2**32 wraps.

Blob format (``SealedSecret.to_bytes``), one BLOB column, all integers big-endian::

    offset  size  field
    0       3     magic b"MRS" ("Mailroom sealed secret")
    3       1     format version = 0x01
    4       4     kek_version (unsigned)
    8       12    dek_nonce
    20      48    wrapped_dek (32-byte DEK + 16-byte GCM tag)
    68      12    nonce
    80      >=16  ciphertext (plaintext + 16-byte GCM tag), up to the end

Overhead is 96 bytes per credential; the plaintext length is not hidden.

Key rotation: ``KeyRing.with_new_version`` adds and activates a new KEK; ``rewrap``
moves each blob's DEK under it without touching the credential ciphertext; old blobs keep
opening while their KEK is in the ring; ``KeyRing.retire`` drops the old KEK once no blob
uses it.

Crypto-shredding: deleting a blob's row deletes its only wrapped DEK, which makes the
credential unrecoverable; no code is needed beyond the DELETE. Copies in database
backups stay openable until the KEK that wrapped them is retired and destroyed in every
copy of the key secret, so retiring old KEKs also shreds expired backups.

Not covered: a party able to write the blob table can put back an *older* blob of the same
(tenant, account, field) — a rollback; versioning of the row (``CredentialRef.version``)
is the registry's job. DEKs and plaintexts live briefly in ordinary Python ``bytes``,
which cannot be reliably wiped.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretBytes, SecretStr

from services.registry.keyring import (
    ENV_KEKS,
    ENV_KEKS_FILE,
    MAX_KEK_VERSION,
    CryptoError,
    KeyRetireRefusedError,
    KeyRing,
    KeyRingError,
)

__all__ = [
    "ENV_KEKS",
    "ENV_KEKS_FILE",
    "FORMAT_VERSION",
    "CredentialDecryptError",
    "CryptoError",
    "KeyRetireRefusedError",
    "KeyRing",
    "KeyRingError",
    "MalformedSealedSecretError",
    "SealedSecret",
    "UnknownKekVersionError",
    "open_sealed",
    "rewrap",
    "seal",
]

FORMAT_VERSION = 1
NONCE_BYTES = 12
DEK_BYTES = 32
TAG_BYTES = 16
WRAPPED_DEK_BYTES = DEK_BYTES + TAG_BYTES

_MAGIC = b"MRS"
_HEADER = struct.Struct(f">3sBI{NONCE_BYTES}s{WRAPPED_DEK_BYTES}s{NONCE_BYTES}s")
_DATA_LABEL = b"mailroom/credential/data\x00"
_DEK_LABEL = b"mailroom/credential/dek\x00"


class CredentialDecryptError(CryptoError):
    """A sealed credential cannot be opened: wrong binding, wrong key, or tampered data.

    The message never contains plaintext or key material.
    """


class UnknownKekVersionError(CredentialDecryptError):
    """The blob was wrapped under a KEK version that is not in the key ring."""


class MalformedSealedSecretError(CredentialDecryptError, ValueError):
    """The stored bytes are not a well-formed sealed secret (truncated, bad magic, ...)."""


@dataclass(frozen=True, slots=True, repr=False)
class SealedSecret:
    """One envelope-encrypted credential; store ``to_bytes()`` in a single BLOB column."""

    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION

    kek_version: int
    wrapped_dek: bytes
    dek_nonce: bytes
    nonce: bytes
    ciphertext: bytes

    def __post_init__(self) -> None:
        if isinstance(self.kek_version, bool) or not isinstance(self.kek_version, int):
            raise MalformedSealedSecretError("kek_version must be an integer")
        if not 1 <= self.kek_version <= MAX_KEK_VERSION:
            raise MalformedSealedSecretError(f"kek_version {self.kek_version} out of range")
        self._check_bytes("wrapped_dek", exact=WRAPPED_DEK_BYTES)
        self._check_bytes("dek_nonce", exact=NONCE_BYTES)
        self._check_bytes("nonce", exact=NONCE_BYTES)
        self._check_bytes("ciphertext", minimum=TAG_BYTES)

    def _check_bytes(self, name: str, *, exact: int | None = None, minimum: int = 0) -> None:
        value = getattr(self, name)
        if not isinstance(value, bytes):
            raise MalformedSealedSecretError(f"{name} must be bytes")
        if exact is not None and len(value) != exact:
            raise MalformedSealedSecretError(f"{name} must be {exact} bytes, got {len(value)}")
        if len(value) < minimum:
            raise MalformedSealedSecretError(
                f"{name} must be at least {minimum} bytes, got {len(value)}"
            )

    def __repr__(self) -> str:
        return (
            f"SealedSecret(format={FORMAT_VERSION}, kek_version={self.kek_version}, "
            f"ciphertext_len={len(self.ciphertext)})"
        )

    __str__ = __repr__

    def to_bytes(self) -> bytes:
        """The compact binary form documented in the module docstring."""
        header = _HEADER.pack(
            _MAGIC,
            FORMAT_VERSION,
            self.kek_version,
            self.dek_nonce,
            self.wrapped_dek,
            self.nonce,
        )
        return header + self.ciphertext

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> SealedSecret:
        """Parse ``to_bytes`` output (drivers may hand back ``memoryview``)."""
        data = bytes(blob)
        if len(data) < _HEADER.size + TAG_BYTES:
            raise MalformedSealedSecretError(
                f"sealed secret too short ({len(data)} bytes, need at least "
                f"{_HEADER.size + TAG_BYTES})"
            )
        magic, version, kek_version, dek_nonce, wrapped_dek, nonce = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise MalformedSealedSecretError("not a sealed secret (bad magic)")
        if version != FORMAT_VERSION:
            raise MalformedSealedSecretError(f"unsupported sealed-secret format {version}")
        return cls(
            kek_version=kek_version,
            wrapped_dek=wrapped_dek,
            dek_nonce=dek_nonce,
            nonce=nonce,
            ciphertext=data[_HEADER.size :],
        )


def _binding(tenant_id: str, account_id: str, field: str) -> bytes:
    parts = []
    for name, value in (("tenant_id", tenant_id), ("account_id", account_id), ("field", field)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be str, got {type(value).__name__}")
        if not value:
            raise ValueError(f"{name} must not be empty")
        raw = value.encode("utf-8")
        parts.append(struct.pack(">I", len(raw)) + raw)
    return b"".join(parts)


def _data_aad(binding: bytes) -> bytes:
    return _DATA_LABEL + bytes([FORMAT_VERSION]) + binding


def _dek_aad(kek_version: int, binding: bytes) -> bytes:
    return _DEK_LABEL + bytes([FORMAT_VERSION]) + struct.pack(">I", kek_version) + binding


def _kek(keyring: KeyRing, version: int) -> AESGCM:
    return AESGCM(keyring.key(version).get_secret_value())


def _wrap(keyring: KeyRing, dek: bytes, binding: bytes) -> tuple[int, bytes, bytes]:
    version = keyring.active_version
    dek_nonce = secrets.token_bytes(NONCE_BYTES)
    wrapped = _kek(keyring, version).encrypt(dek_nonce, dek, _dek_aad(version, binding))
    return version, dek_nonce, wrapped


def _unwrap(keyring: KeyRing, sealed: SealedSecret, binding: bytes, field: str) -> bytes:
    if sealed.kek_version not in keyring:
        raise UnknownKekVersionError(
            f"cannot open credential {field!r}: KEK version {sealed.kek_version} is not in "
            f"the key ring (versions {list(keyring.versions)})"
        )
    try:
        return _kek(keyring, sealed.kek_version).decrypt(
            sealed.dek_nonce, sealed.wrapped_dek, _dek_aad(sealed.kek_version, binding)
        )
    except InvalidTag:
        raise CredentialDecryptError(
            f"cannot open credential {field!r}: data key does not unwrap under KEK version "
            f"{sealed.kek_version} (wrong tenant/account/field, wrong key, or tampered blob)"
        ) from None


def seal(
    keyring: KeyRing,
    plaintext: SecretStr | SecretBytes | bytes,
    *,
    tenant_id: str,
    account_id: str,
    field: str,
) -> SealedSecret:
    """Encrypt ``plaintext`` under a fresh DEK wrapped by the ring's active KEK.

    ``SecretStr`` is encoded as UTF-8.
    """
    if isinstance(plaintext, SecretStr):
        data = plaintext.get_secret_value().encode("utf-8")
    elif isinstance(plaintext, SecretBytes):
        data = plaintext.get_secret_value()
    elif isinstance(plaintext, bytes | bytearray | memoryview):
        data = bytes(plaintext)
    else:
        raise TypeError(
            f"plaintext must be SecretStr, SecretBytes or bytes, got {type(plaintext).__name__}"
        )
    binding = _binding(tenant_id, account_id, field)
    dek = AESGCM.generate_key(bit_length=256)
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(dek).encrypt(nonce, data, _data_aad(binding))
    kek_version, dek_nonce, wrapped = _wrap(keyring, dek, binding)
    return SealedSecret(
        kek_version=kek_version,
        wrapped_dek=wrapped,
        dek_nonce=dek_nonce,
        nonce=nonce,
        ciphertext=ciphertext,
    )


def open_sealed(
    keyring: KeyRing,
    sealed: SealedSecret,
    *,
    tenant_id: str,
    account_id: str,
    field: str,
) -> bytes:
    """Decrypt ``sealed``; raises ``CredentialDecryptError`` on any mismatch or tampering."""
    binding = _binding(tenant_id, account_id, field)
    dek = _unwrap(keyring, sealed, binding, field)
    try:
        return AESGCM(dek).decrypt(sealed.nonce, sealed.ciphertext, _data_aad(binding))
    except InvalidTag:
        raise CredentialDecryptError(
            f"cannot open credential {field!r}: ciphertext failed authentication "
            "(wrong tenant/account/field or tampered blob)"
        ) from None


def rewrap(
    keyring: KeyRing,
    sealed: SealedSecret,
    *,
    tenant_id: str,
    account_id: str,
    field: str,
) -> SealedSecret:
    """Re-wrap the DEK under the active KEK; ``nonce`` and ``ciphertext`` stay identical.

    Only the DEK is unwrapped; the credential is not decrypted, so a tampered ciphertext
    is detected by the next ``open_sealed``, not here. A blob already under the active
    version is returned unchanged (after checking that its DEK unwraps), so callers can
    skip the write when ``result is sealed``.
    """
    binding = _binding(tenant_id, account_id, field)
    dek = _unwrap(keyring, sealed, binding, field)
    if sealed.kek_version == keyring.active_version:
        return sealed
    kek_version, dek_nonce, wrapped = _wrap(keyring, dek, binding)
    return SealedSecret(
        kek_version=kek_version,
        wrapped_dek=wrapped,
        dek_nonce=dek_nonce,
        nonce=sealed.nonce,
        ciphertext=sealed.ciphertext,
    )
