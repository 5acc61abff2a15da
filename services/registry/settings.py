"""Registry settings and where its key-encryption keys (KEKs) come from.

Production mounts the KEKs: ``MAILROOM_KEKS`` (inline JSON) or ``MAILROOM_KEKS_FILE`` (a path,
e.g. a Kubernetes secret), see :mod:`services.registry.keyring`. That ring is the operator's:
the registry only reads it (again on every ``keys rotate``) and never writes it.

The embedded stack, when neither is set, generates ``<data_dir>/keks.json`` once (mode 0600) and
manages it: ``keys rotate`` adds a new version to that file and ``keys retire`` removes one. A
warning says that production must mount its own secret: a key file next to the database it
protects only guards against leaked database dumps, not against a stolen disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.settings import Settings
from services.registry.discovery import DEFAULT_AUTOCONFIG_URLS
from services.registry.keyring import ENV_KEKS, ENV_KEKS_FILE, KeyRing, KeyRingError

log = logging.getLogger("mailroom.registry")

EMBEDDED_KEK_FILE = "keks.json"
KeySource = Literal["env", "embedded"]


class RegistrySettings(BaseSettings):
    """Registry-only settings (environment variables prefixed ``MAILROOM_REGISTRY_``)."""

    model_config = SettingsConfigDict(env_prefix="MAILROOM_REGISTRY_", extra="ignore")

    lease_ttl_s: int = 300
    """How long a leased secret may be used before the holder must lease again."""
    idempotency_ttl_s: int = 24 * 3600
    """How long an ``Idempotency-Key`` of ``POST /v1/accounts`` is remembered."""
    rotate_batch: int = 200
    """Blobs re-wrapped per query during KEK rotation."""
    ca_file: Path | None = None
    """Extra CA certificates (PEM) trusted by connection tests; unset: the system store only."""
    dns_server: str | None = None
    """``host[:port]`` asked by discovery and connection tests instead of the system resolver."""
    allow_private_targets: bool = False
    """Let autoconfig fetches and connection tests reach loopback, link-local and private
    addresses (admins may always test servers on private addresses of their network)."""
    autoconfig_urls: list[str] = list(DEFAULT_AUTOCONFIG_URLS)
    """Thunderbird autoconfig URL templates ({domain}, {address}, {localpart})."""
    discovery_timeout_s: float = 5.0
    """Per network step of discovery (MX, SRV, each autoconfig URL)."""
    connect_timeout_s: float = 10.0
    """Per step of a connection test (resolve, connect, TLS, greeting, login, select)."""
    import_chunk_rows: int = 500
    """Rows of a CSV import written per transaction."""
    import_max_rows: int = 50_000
    import_max_bytes: int = 50 * 1024 * 1024
    import_test_concurrency: int = 16
    """Default number of connection tests run at once by an import with tests."""
    key_admin_tenants: list[str] = ["demo"]
    """Tenants whose admins may change the deployment's key ring: add a KEK version to the
    embedded key file, retire one (``MAILROOM_REGISTRY_KEY_ADMIN_TENANTS='["ops"]'``). The ring
    serves every tenant, so other tenants' admins only re-wrap their own credentials."""
    oauth_state_ttl_s: int = 600
    """How long an OAuth2 authorization started by ``/v1/oauth/{provider}/start`` may take."""
    oauth_redirect_base: str | None = None
    """Public base URL of the API (``https://mail.example.com``): the callback is
    ``{base}/v1/oauth/{provider}/callback``; unset: the URL the start request came to."""
    oauth_refresh_margin_s: float = 300.0
    """An access token expiring sooner than this is refreshed before it is leased."""
    oauth_forced_refresh_min_age_s: float = 10.0
    """A lease asking for a refresh (after an authentication failure) gets the current access
    token if it is younger than this (another service just refreshed it)."""
    oauth_timeout_s: float = 10.0
    """Per request to a provider's token or discovery endpoint."""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def load_embedded_ring(path: Path) -> KeyRing:
    """Read the embedded key file, creating it (one fresh KEK, 0600) on first start."""
    if not path.exists():
        ring = KeyRing.generate()
        _write_private(path, ring.to_json())
        log.warning(
            "no KEK configured (%s / %s): generated an embedded key ring at %s. "
            "Production must mount its own KEK secret.",
            ENV_KEKS,
            ENV_KEKS_FILE,
            path,
        )
        return ring
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); restricting it to 0600", path, mode)
        path.chmod(0o600)
    log.warning(
        "using the embedded key ring %s; production must mount a KEK secret (%s)",
        path,
        ENV_KEKS_FILE,
    )
    return KeyRing.from_json(path.read_text(encoding="utf-8"))


class KeyStore:
    """The registry's current key ring and where it came from.

    A ``KeyRing`` is immutable; this holder swaps in a new ring after ``reload``, ``add_version``
    or ``retire``. Only the embedded ring (``managed``) is ever written.
    """

    def __init__(
        self,
        ring: KeyRing,
        *,
        source: KeySource,
        path: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._ring = ring
        self.source: KeySource = source
        self.path = path
        self._environ = environ
        self.lock = asyncio.Lock()

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def managed(self) -> bool:
        return self.source == "embedded"

    def reload(self) -> KeyRing:
        """Re-read the ring from its source (a remounted secret may hold a new version)."""
        if self.managed:
            assert self.path is not None
            self._ring = KeyRing.from_json(self.path.read_text(encoding="utf-8"))
        else:
            self._ring = KeyRing.from_env(
                self._environ if self._environ is not None else os.environ
            )
        return self._ring

    def add_version(self) -> KeyRing:
        if not self.managed or self.path is None:
            raise KeyRingError("the key ring is mounted by the operator; add the version there")
        ring = self.reload().with_new_version()
        _write_private(self.path, ring.to_json())
        self._ring = ring
        log.warning("added KEK version %d to %s (now active)", ring.active_version, self.path)
        return ring

    def retire(self, version: int, still_in_use: int) -> bool:
        """Drop ``version``; True if the ring file was changed (embedded ring only)."""
        ring = self.reload().retire(version, still_in_use)
        if not self.managed or self.path is None:
            return False
        _write_private(self.path, ring.to_json())
        self._ring = ring
        return True


def load_keystore(settings: Settings, environ: Mapping[str, str] | None = None) -> KeyStore:
    env = os.environ if environ is None else environ
    if env.get(ENV_KEKS, "").strip() or env.get(ENV_KEKS_FILE, "").strip():
        return KeyStore(KeyRing.from_env(env), source="env", environ=env)
    path = settings.data_dir / EMBEDDED_KEK_FILE
    return KeyStore(load_embedded_ring(path), source="embedded", path=path)
