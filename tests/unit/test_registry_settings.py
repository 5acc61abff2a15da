"""Where the registry's KEKs come from: the operator's ring, or the embedded key file."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from libs.common.settings import Settings
from services.registry.keyring import ENV_KEKS, ENV_KEKS_FILE, KeyRing, KeyRingError
from services.registry.settings import EMBEDDED_KEK_FILE, RegistrySettings, load_keystore


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def test_embedded_ring_is_generated_once_with_0600_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mailroom.registry")
    store = load_keystore(settings(tmp_path), environ={})
    path = tmp_path / "data" / EMBEDDED_KEK_FILE
    assert store.managed and store.path == path and store.ring.versions == (1,)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "Production must mount" in caplog.text
    key = store.ring.key(1).get_secret_value()
    assert key.hex() not in caplog.text
    again = load_keystore(settings(tmp_path), environ={})
    assert again.ring.key(1).get_secret_value() == key  # reused, not regenerated


def test_embedded_ring_too_open_is_restricted(tmp_path: Path) -> None:
    load_keystore(settings(tmp_path), environ={})
    path = tmp_path / "data" / EMBEDDED_KEK_FILE
    path.chmod(0o644)
    load_keystore(settings(tmp_path), environ={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_embedded_ring_add_version_and_retire_write_the_file(tmp_path: Path) -> None:
    store = load_keystore(settings(tmp_path), environ={})
    store.add_version()
    assert store.ring.active_version == 2
    on_disk = KeyRing.from_json((tmp_path / "data" / EMBEDDED_KEK_FILE).read_text())
    assert on_disk.versions == (1, 2) and on_disk.active_version == 2
    with pytest.raises(KeyRingError):
        store.retire(1, still_in_use=3)
    assert store.retire(1, still_in_use=0) is True
    assert KeyRing.from_json((tmp_path / "data" / EMBEDDED_KEK_FILE).read_text()).versions == (2,)
    assert stat.S_IMODE((tmp_path / "data" / EMBEDDED_KEK_FILE).stat().st_mode) == 0o600


def test_operator_ring_is_read_never_written(tmp_path: Path) -> None:
    ring = KeyRing.generate().with_new_version()
    secret = tmp_path / "mounted.json"
    secret.write_text(ring.to_json())
    env = {ENV_KEKS_FILE: str(secret)}
    store = load_keystore(settings(tmp_path), environ=env)
    assert not store.managed and store.ring.active_version == 2
    assert not (tmp_path / "data" / EMBEDDED_KEK_FILE).exists()
    with pytest.raises(KeyRingError):
        store.add_version()
    assert store.retire(1, still_in_use=0) is False  # the operator removes it from the secret
    assert secret.read_text() == ring.to_json()
    secret.write_text(ring.with_new_version().to_json())  # the secret is remounted
    assert store.reload().active_version == 3
    inline = load_keystore(settings(tmp_path), environ={ENV_KEKS: ring.to_json()})
    assert inline.ring.versions == (1, 2)


def test_registry_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILROOM_REGISTRY_LEASE_TTL_S", "60")
    assert RegistrySettings().lease_ttl_s == 60
