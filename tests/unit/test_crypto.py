"""Unit tests of the envelope encryption of stored credentials (services.registry.crypto)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretBytes, SecretStr

from services.registry.crypto import (
    CredentialDecryptError,
    CryptoError,
    KeyRetireRefusedError,
    KeyRing,
    KeyRingError,
    MalformedSealedSecretError,
    SealedSecret,
    UnknownKekVersionError,
    open_sealed,
    rewrap,
    seal,
)

T, A, F = "tenant-1", "account-1", "imap_password"
BIND = {"tenant_id": T, "account_id": A, "field": F}
SECRET = "correct horse battery staple"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _ring_json(active: int, keys: dict[str, object]) -> str:
    return json.dumps({"active": active, "keys": keys})


def _key_bytes(ring: KeyRing) -> list[bytes]:
    return [ring.key(v).get_secret_value() for v in ring.versions]


def _leak_forms(raw: bytes) -> list[str]:
    forms = [
        raw.hex(),
        raw.hex().upper(),
        _b64(raw),
        base64.urlsafe_b64encode(raw).decode(),
        repr(raw),
    ]
    try:
        forms.append(raw.decode())
    except UnicodeDecodeError:
        pass
    return forms


def _assert_no_leak(text: str, secrets_: list[bytes]) -> None:
    for raw in secrets_:
        for form in _leak_forms(raw):
            assert form not in text, f"secret leaked in {text!r}"


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


# -- seal / open ----------------------------------------------------------------------------


def test_roundtrip_secretstr_bytes_and_blob(ring: KeyRing) -> None:
    sealed = seal(ring, SecretStr(SECRET), **BIND)
    assert open_sealed(ring, sealed, **BIND) == SECRET.encode()
    assert open_sealed(ring, SealedSecret.from_bytes(sealed.to_bytes()), **BIND) == (
        SECRET.encode()
    )
    raw = b"\x00\xffbinary token"
    assert open_sealed(ring, seal(ring, raw, **BIND), **BIND) == raw
    assert open_sealed(ring, seal(ring, SecretBytes(raw), **BIND), **BIND) == raw
    assert open_sealed(ring, seal(ring, b"", **BIND), **BIND) == b""
    # drivers may hand back memoryview/bytearray
    blob = sealed.to_bytes()
    assert SealedSecret.from_bytes(memoryview(blob)) == sealed
    assert SealedSecret.from_bytes(bytearray(blob)) == sealed


def test_blob_layout(ring: KeyRing) -> None:
    sealed = seal(ring, b"abc", **BIND)
    blob = sealed.to_bytes()
    assert blob[:4] == b"MRS\x01"
    assert int.from_bytes(blob[4:8], "big") == sealed.kek_version == 1
    assert blob[8:20] == sealed.dek_nonce
    assert blob[20:68] == sealed.wrapped_dek
    assert blob[68:80] == sealed.nonce
    assert blob[80:] == sealed.ciphertext
    assert len(blob) == 96 + 3


def test_fresh_dek_and_nonces_over_many_seals(ring: KeyRing) -> None:
    sealed = [seal(ring, b"same plaintext", **BIND) for _ in range(2000)]
    for attr in ("nonce", "dek_nonce", "wrapped_dek", "ciphertext"):
        values = {getattr(s, attr) for s in sealed}
        assert len(values) == len(sealed), attr
    assert all(len(s.nonce) == 12 and len(s.dek_nonce) == 12 for s in sealed)


@pytest.mark.parametrize(
    "wrong",
    [
        {"tenant_id": "tenant-2"},
        {"account_id": "account-2"},
        {"field": "smtp_password"},
        # length-prefixing: shifting characters between fields must not collide
        {"tenant_id": "tenant-1a", "account_id": "ccount-1"},
    ],
)
def test_aad_binding(ring: KeyRing, wrong: dict[str, str]) -> None:
    sealed = seal(ring, SECRET.encode(), **BIND)
    with pytest.raises(CredentialDecryptError) as info:
        open_sealed(ring, sealed, **{**BIND, **wrong})
    assert SECRET not in str(info.value)
    with pytest.raises(CredentialDecryptError):
        rewrap(ring.with_new_version(), sealed, **{**BIND, **wrong})


def _flip(value: bytes, index: int) -> bytes:
    out = bytearray(value)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("attr", ["wrapped_dek", "dek_nonce", "nonce", "ciphertext"])
@pytest.mark.parametrize("where", [0, -1])
def test_tamper_each_component(ring: KeyRing, attr: str, where: int) -> None:
    sealed = seal(ring, SECRET.encode(), **BIND)
    changes: dict[str, Any] = {attr: _flip(getattr(sealed, attr), where)}
    tampered = dataclasses.replace(sealed, **changes)
    with pytest.raises(CredentialDecryptError) as info:
        open_sealed(ring, tampered, **BIND)
    assert SECRET not in str(info.value)


def test_tamper_kek_version() -> None:
    ring = KeyRing.generate().with_new_version()  # versions 1, 2
    sealed = seal(ring, SECRET.encode(), **BIND)
    assert sealed.kek_version == 2
    with pytest.raises(CredentialDecryptError):
        open_sealed(ring, dataclasses.replace(sealed, kek_version=1), **BIND)
    with pytest.raises(UnknownKekVersionError):
        open_sealed(ring, dataclasses.replace(sealed, kek_version=3), **BIND)


def test_tamper_every_blob_byte(ring: KeyRing) -> None:
    blob = seal(ring, SECRET.encode(), **BIND).to_bytes()
    for i in range(len(blob)):
        with pytest.raises(CredentialDecryptError):  # incl. MalformedSealedSecretError
            open_sealed(ring, SealedSecret.from_bytes(_flip(blob, i)), **BIND)
    with pytest.raises(CredentialDecryptError):
        open_sealed(ring, SealedSecret.from_bytes(blob + b"\x00"), **BIND)
    with pytest.raises(MalformedSealedSecretError):
        SealedSecret.from_bytes(blob[:95])
    with pytest.raises(CredentialDecryptError):
        open_sealed(ring, SealedSecret.from_bytes(blob[:-1]), **BIND)


def test_malformed_sealed_secret() -> None:
    with pytest.raises(MalformedSealedSecretError, match="magic"):
        SealedSecret.from_bytes(b"XYZ\x01" + bytes(92))
    with pytest.raises(MalformedSealedSecretError, match="format"):
        SealedSecret.from_bytes(b"MRS\x02" + bytes(92))
    with pytest.raises(MalformedSealedSecretError, match="kek_version"):
        SealedSecret.from_bytes(b"MRS\x01" + bytes(92))  # version 0
    with pytest.raises(MalformedSealedSecretError, match="nonce"):
        SealedSecret(
            kek_version=1, wrapped_dek=bytes(48), dek_nonce=bytes(12), nonce=b"", ciphertext=b""
        )


def test_wrong_keyring(ring: KeyRing) -> None:
    sealed = seal(ring, SECRET.encode(), **BIND)
    with pytest.raises(CredentialDecryptError):
        open_sealed(KeyRing.generate(), sealed, **BIND)


def test_bad_binding_arguments(ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="field"):
        seal(ring, b"x", tenant_id=T, account_id=A, field="")
    with pytest.raises(TypeError):
        seal(ring, SECRET, **BIND)  # type: ignore[arg-type]  # plain str refused


# -- rotation ---------------------------------------------------------------------------------


def test_rewrap_keeps_ciphertext_and_opens_with_new_key(ring: KeyRing) -> None:
    old = seal(ring, SECRET.encode(), **BIND)
    rotated = ring.with_new_version()
    assert rotated.active_version == 2 and rotated.versions == (1, 2)
    new = rewrap(rotated, old, **BIND)
    assert new.kek_version == 2
    assert new.ciphertext == old.ciphertext and new.nonce == old.nonce
    assert new.wrapped_dek != old.wrapped_dek and new.dek_nonce != old.dek_nonce
    assert open_sealed(rotated, new, **BIND) == SECRET.encode()
    # opens with the new key alone once version 1 is retired
    only_new = rotated.retire(1, still_in_use=0)
    assert only_new.versions == (2,)
    assert open_sealed(only_new, new, **BIND) == SECRET.encode()
    with pytest.raises(UnknownKekVersionError):
        open_sealed(only_new, old, **BIND)
    # already under the active version: unchanged
    assert rewrap(rotated, new, **BIND) is new


def test_rewrap_does_not_decrypt_ciphertext(ring: KeyRing) -> None:
    old = seal(ring, SECRET.encode(), **BIND)
    tampered = dataclasses.replace(old, ciphertext=_flip(old.ciphertext, 0))
    rotated = ring.with_new_version()
    new = rewrap(rotated, tampered, **BIND)  # succeeds: only the DEK is touched
    assert new.ciphertext == tampered.ciphertext
    with pytest.raises(CredentialDecryptError):
        open_sealed(rotated, new, **BIND)


def test_old_blobs_open_after_rotation(ring: KeyRing) -> None:
    v1 = seal(ring, b"one", **BIND)
    ring2 = ring.with_new_version()
    v2 = seal(ring2, b"two", **BIND)
    ring3 = ring2.with_new_version()
    v3 = seal(ring3, b"three", **BIND)
    assert [s.kek_version for s in (v1, v2, v3)] == [1, 2, 3]
    assert [open_sealed(ring3, s, **BIND) for s in (v1, v2, v3)] == [b"one", b"two", b"three"]
    # the rotated ring survives its own serialisation
    reloaded = KeyRing.from_json(ring3.to_json())
    assert open_sealed(reloaded, v1, **BIND) == b"one"
    assert reloaded.to_json() == ring3.to_json()


def test_retire_refused_while_in_use_or_active(ring: KeyRing) -> None:
    rotated = ring.with_new_version()
    with pytest.raises(KeyRetireRefusedError, match="still wraps 3"):
        rotated.retire(1, still_in_use=3)
    with pytest.raises(KeyRetireRefusedError, match="active"):
        rotated.retire(2, still_in_use=0)
    with pytest.raises(KeyRingError, match="not in the key ring"):
        rotated.retire(7, still_in_use=0)
    with pytest.raises(ValueError):
        rotated.retire(1, still_in_use=-1)
    retired = rotated.retire(1, still_in_use=0)
    assert retired.versions == (2,) and retired.active_version == 2
    assert rotated.versions == (1, 2)  # rings are immutable
    assert retired.with_new_version().versions == (2, 3)
    assert isinstance(KeyRetireRefusedError("x"), CryptoError)


# -- key material loading ---------------------------------------------------------------------


def test_from_env_inline_and_file(tmp_path: Path) -> None:
    k1, k2 = bytes(range(32)), bytes(range(32, 64))
    text = _ring_json(2, {"1": _b64(k1), "2": _b64(k2)})
    from_env = KeyRing.from_env({"MAILROOM_KEKS": text})
    assert from_env.active_version == 2 and _key_bytes(from_env) == [k1, k2]

    path = tmp_path / "keks.json"
    path.write_text(text + "\n")
    from_file = KeyRing.from_env({"MAILROOM_KEKS_FILE": str(path)})
    assert from_file.to_json() == from_env.to_json()

    with pytest.raises(KeyRingError, match="both"):
        KeyRing.from_env({"MAILROOM_KEKS": text, "MAILROOM_KEKS_FILE": str(path)})
    with pytest.raises(KeyRingError, match="no key material"):
        KeyRing.from_env({"MAILROOM_KEKS": "  "})
    with pytest.raises(KeyRingError, match="cannot read key file") as info:
        KeyRing.from_env({"MAILROOM_KEKS_FILE": str(tmp_path / "missing.json")})
    assert "missing.json" in str(info.value)


def test_generate_and_to_json_roundtrip() -> None:
    ring = KeyRing.generate()
    assert ring.versions == (1,) and ring.active_version == 1
    assert len(ring.key(1).get_secret_value()) == 32
    doc = json.loads(ring.to_json())
    assert doc["active"] == 1 and set(doc["keys"]) == {"1"}
    assert KeyRing.from_json(ring.to_json()).to_json() == ring.to_json()
    assert _key_bytes(KeyRing.generate()) != _key_bytes(ring)


GOOD = _b64(bytes(32))
OTHER = _b64(bytes([1]) * 32)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        (json.dumps({"keys": {"1": GOOD}}), 'lacks "active"'),
        (json.dumps({"active": 1}), 'lacks "keys"'),
        (json.dumps({"active": 1, "keys": {"1": GOOD}, "activ": 1}), "unknown members"),
        (_ring_json(2, {"1": GOOD}), "active version 2 is not among"),
        (_ring_json(1, {}), "no keys"),
        (json.dumps({"active": "1", "keys": {"1": GOOD}}), "must be an integer"),
        (json.dumps({"active": True, "keys": {"1": GOOD}}), "must be an integer"),
        (_ring_json(1, {"1": _b64(bytes(16))}), "expected 32 bytes, got 16"),
        (_ring_json(1, {"1": _b64(bytes(33))}), "expected 32 bytes, got 33"),
        (_ring_json(1, {"1": "not base64!!"}), "not valid standard base64"),
        (_ring_json(1, {"1": GOOD[:-1]}), "not valid standard base64"),
        (_ring_json(1, {"1": 12}), "base64 string"),
        (_ring_json(1, {"one": GOOD}), "not a positive decimal"),
        (_ring_json(1, {"0": GOOD, "1": OTHER}), "not a positive decimal"),
        (_ring_json(1, {"1": GOOD, "2": GOOD}), "identical key material"),
        ('{"active": 1, "keys": {"1": "' + GOOD + '", "1": "' + OTHER + '"}}', "duplicate"),
        (_ring_json(1, {"1": GOOD, "4294967296": OTHER}), "between 1 and"),
    ],
)
def test_malformed_key_material(text: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message) as info:
        KeyRing.from_json(text)
    # error messages never echo key material
    assert GOOD not in str(info.value) and OTHER not in str(info.value)


def test_constructor_validation() -> None:
    with pytest.raises(KeyRingError, match="expected 32 bytes"):
        KeyRing({1: b"short"}, active=1)
    with pytest.raises(KeyRingError, match="active version 2"):
        KeyRing({1: bytes(32)}, active=2)
    ring = KeyRing({3: SecretBytes(bytes(32))}, active=3)
    assert ring.versions == (3,) and 3 in ring and 1 not in ring
    with pytest.raises(AttributeError):
        ring._active = 1


# -- nothing leaks ----------------------------------------------------------------------------


def test_repr_and_str_never_contain_keys_or_plaintext() -> None:
    ring = KeyRing.generate().with_new_version()
    keys = _key_bytes(ring)
    for text in (repr(ring), str(ring), f"{ring}", repr(ring.key(1)), str(ring.key(2))):
        _assert_no_leak(text, keys)
    assert repr(ring) == "KeyRing(active=2, versions=[1, 2])"

    plaintext = b"hunter2-very-secret-password"
    sealed = seal(ring, plaintext, **BIND)
    for text in (repr(sealed), str(sealed), f"{sealed!r}"):
        _assert_no_leak(text, [*keys, plaintext, sealed.wrapped_dek, sealed.ciphertext])
    assert repr(sealed) == f"SealedSecret(format=1, kek_version=2, ciphertext_len={16 + 28})"

    # error messages neither
    for bad in (
        dataclasses.replace(sealed, ciphertext=_flip(sealed.ciphertext, 3)),
        dataclasses.replace(sealed, wrapped_dek=_flip(sealed.wrapped_dek, 3)),
    ):
        with pytest.raises(CredentialDecryptError) as info:
            open_sealed(ring, bad, **BIND)
        _assert_no_leak(str(info.value), [*keys, plaintext])
        _assert_no_leak(repr(info.value), [*keys, plaintext])
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_keyring_is_not_picklable() -> None:
    ring = KeyRing.generate()
    with pytest.raises(TypeError):
        pickle.dumps(ring)
    with pytest.raises(TypeError):
        copy.copy(ring)


# -- properties -------------------------------------------------------------------------------

_ids = st.text(min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=4096), tenant=_ids, account=_ids, field=_ids)
def test_property_roundtrip(plaintext: bytes, tenant: str, account: str, field: str) -> None:
    ring = _PROPERTY_RING
    bind = {"tenant_id": tenant, "account_id": account, "field": field}
    sealed = seal(ring, plaintext, **bind)
    assert len(sealed.ciphertext) == len(plaintext) + 16
    blob = sealed.to_bytes()
    assert open_sealed(ring, SealedSecret.from_bytes(blob), **bind) == plaintext
    rewrapped = rewrap(_PROPERTY_RING_ROTATED, sealed, **bind)
    assert open_sealed(_PROPERTY_RING_ROTATED, rewrapped, **bind) == plaintext


@settings(max_examples=50, deadline=None)
@given(text=st.text(min_size=0, max_size=200))
def test_property_secretstr_utf8(text: str) -> None:
    sealed = seal(_PROPERTY_RING, SecretStr(text), **BIND)
    assert open_sealed(_PROPERTY_RING, sealed, **BIND).decode("utf-8") == text


_PROPERTY_RING = KeyRing.generate()
_PROPERTY_RING_ROTATED = _PROPERTY_RING.with_new_version()
