"""A private Dovecot (IMAP + POP3) instance for connected tests.

Never touches the system service: each ``Dovecot`` has its own temp dir holding
``dovecot.conf``, base_dir, state, logs, the users (JSON files) and the maildirs, and
listens on free loopback ports:

* ``imap_port``  plain IMAP with STARTTLS     * ``imaps_port`` implicit TLS
* ``pop3_port``  plain POP3 with STLS         * ``pop3s_port`` implicit TLS

``oauth2_introspection_url`` (opt-in) adds SASL XOAUTH2/OAUTHBEARER to IMAP and POP3 alike
(``auth_mechanisms`` is global): an ``oauth2`` passdb checks the bearer token by RFC 7662
introspection (POST) and takes the ``username`` it returns; the user must exist
(``add_user``: its maildir and userdb entry).

As root, mail processes run as ``nobody:nogroup`` (Dovecot refuses uid 0 for
mail); as any other user, everything runs as that user with chroots disabled.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dovecot_config import render_auth_dict_config, render_config
from tests.support.infra import unavailable
from tests.support.ports import (
    LOOPBACK,
    free_port,
    greets,
    process_group,
    wait_for_ports,
    wait_ports_closed,
)
from tests.support.tlsca import TestPKI, make_pki, session_pki

STRICT_LOOPBACK = "127.0.0.2"
_CLIENT_PROCS = {"imap", "pop3", "imap-login", "pop3-login"}
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_instances: set[Dovecot] = set()


def _find(binary: str) -> str | None:
    """``which`` that also looks in the sbin dirs (often missing from a user's PATH)."""
    return shutil.which(binary, path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS]))


def require_dovecot() -> str:
    """Return the dovecot path; skip the test if missing (``pytest.fail`` under CI=true)."""
    path = _find("dovecot")
    if path is None or _find("doveadm") is None:
        unavailable(
            "dovecot/doveadm not installed: run `.ci/install-debian-deps.sh` (needs root/sudo)"
        )
    return path


def _nogroup() -> int:
    try:
        return grp.getgrnam("nogroup").gr_gid
    except KeyError:
        return pwd.getpwnam("nobody").pw_gid


class DovecotError(RuntimeError):
    pass


class Dovecot:
    """One private Dovecot instance. ``start()`` blocks until all listeners accept."""

    def __init__(
        self,
        *,
        pki: TestPKI | None = None,
        root: Path | str | None = None,
        allow_plaintext_auth: bool = True,
        default_quota: str = "100M",
        host: str | None = None,
        oauth2_introspection_url: str | None = None,
    ) -> None:
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="mailroom-dovecot-"))
        # Unprivileged dovecot processes (auth, mail) must traverse and read it.
        self.root.chmod(0o755)
        self.pki = pki or make_pki(self.root / "pki")
        self.ca_path: Path = self.pki.ca_path
        # Dovecot treats a client whose IP equals the server's IP as "secured" and then
        # allows plaintext auth anyway; clients connecting to 127.0.0.2 come from
        # 127.0.0.1, so a strict instance listens there (the test cert covers it).
        self.host = host or (LOOPBACK if allow_plaintext_auth else STRICT_LOOPBACK)
        self.allow_plaintext_auth = allow_plaintext_auth
        self.default_quota = default_quota
        self.oauth2_introspection_url = oauth2_introspection_url
        self._assign_ports()
        self._started = False
        self.config_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self.auth_dir = self.root / "auth"
        self.mail_root = self.root / "mail"
        self._users: dict[str, tuple[str, str | None]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._counter = itertools.count(1)
        if os.geteuid() == 0:  # Dovecot refuses uid 0 for mail processes: use nobody
            self._uid, self._gid, self._run_as = pwd.getpwnam("nobody")[2], _nogroup(), "root"
        else:
            self._uid, self._gid = os.geteuid(), os.getegid()
            self._run_as = pwd.getpwuid(self._uid).pw_name
        self._bin = _find("dovecot") or "dovecot"
        self._doveadm = _find("doveadm") or "doveadm"

    # ----------------------------------------------------------- setup ---
    @property
    def ports(self) -> dict[str, int]:
        """``{"imap": .., "imaps": .., "pop3": .., "pop3s": ..}``"""
        return {k: getattr(self, f"{k}_port") for k in ("imap", "imaps", "pop3", "pop3s")}

    def _config(self) -> str:
        return render_config(self)

    def _auth_dict_config(self) -> str:
        return render_auth_dict_config(self)

    def _write_user(self, name: str) -> None:
        password, quota = self._users[name]
        userdb: dict[str, str | int] = {
            "uid": self._uid,
            "gid": self._gid,
            "home": f"{self.mail_root}/{name}",
        }
        if quota:
            userdb["quota_rule"] = f"*:storage={quota}"
        passdb = {"password": password, "nodelay": "yes"}  # no 2 s delay on failures
        for db, data in (("passdb", passdb), ("userdb", userdb)):
            path = self.auth_dir / db / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(json.dumps(data))
            tmp.chmod(0o644)
            tmp.replace(path)

    def _prepare(self) -> None:
        for sub in ("run", "state"):
            (self.root / sub).mkdir(exist_ok=True)
        self.mail_root.mkdir(exist_ok=True)
        os.chown(self.mail_root, self._uid, self._gid)
        self._prepare_auth_dirs()
        (self.root / "auth-dict.conf.ext").write_text(self._auth_dict_config())
        if self.oauth2_introspection_url:
            oauth2 = self.root / "dovecot-oauth2.conf.ext"
            oauth2.write_text(
                f"introspection_mode = post\n"
                f"introspection_url = {self.oauth2_introspection_url}\n"
                "force_introspection = yes\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
            )
            oauth2.chmod(0o644)
        self.config_path.write_text(self._config())

    # ------------------------------------------------------- lifecycle ---
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _assign_ports(self) -> None:
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = (
            free_port(self.host) for _ in range(4)
        )

    def start(self, timeout: float = 15.0) -> Dovecot:
        """Start (no-op if running); returns once IMAP and POP3 greet."""
        for attempt in range(5):
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start(timeout)
                self._started = True
                return self
            except DovecotError:
                with self.log_path.open("rb") as log:
                    log.seek(log_size)
                    if attempt == 4 or b"Address already in use" not in log.read():
                        raise
                # A port was taken meanwhile: on first start pick new ports; on restart
                # they must stay the same, so wait for them to come free.
                if self._started:
                    time.sleep(0.2)
                else:
                    self._assign_ports()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> None:
        if self.running:
            return
        self._prepare()
        stderr = (self.root / "dovecot.stderr").open("ab")
        self._proc = subprocess.Popen(
            [self._bin, "-F", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
        stderr.close()
        _instances.add(self)
        deadline = time.monotonic() + timeout
        ports = list(self.ports.values())
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                _instances.discard(self)
                raise DovecotError(f"dovecot exited with {code}:\n{self.logs()}")
            try:
                wait_for_ports(ports, self.host, timeout=0.2)
                # Login processes greet only once auth is ready: wait for that too.
                h = self.host
                if greets(h, self.imap_port, b"* OK") and greets(h, self.pop3_port, b"+OK"):
                    return
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise DovecotError(f"dovecot not ready after {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 10.0, grace: float = 1.0) -> None:
        """SIGTERM (clients get BYE), SIGKILL what is left after ``grace`` s; ports closed after.

        Login processes sometimes ignore SIGTERM for seconds, hence the short grace.
        """
        proc, self._proc = self._proc, None
        _instances.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # master SIGTERMs its children, then idles ~1 s before exiting
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and proc.poll() is None:
                # Once the client-facing and mail processes are gone, the rest (auth, anvil,
                # log, config and the master's fixed ~1 s idle) is not worth waiting for.
                if not _CLIENT_PROCS.intersection(process_group(proc.pid)):
                    break
                time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
        wait_ports_closed(list(self.ports.values()), self.host, timeout=timeout)

    def restart(self) -> Dovecot:
        """Stop and start again on the same ports, keeping users and mail."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop and remove the temp dir (only if this instance created it)."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def logs(self) -> str:
        """Tail of Dovecot's own stderr and log file (for failure messages)."""
        files = (self.root / "dovecot.stderr", self.log_path)
        return "\n".join(f.read_text(errors="replace")[-8000:] for f in files if f.exists())

    # ----------------------------------------------------------- users ---
    def add_user(self, name: str, password: str, *, quota: str | None = None) -> str:
        """Add (or replace) a user; ``quota`` like "1M" overrides the storage limit."""
        if not name or any(c in name for c in "/\\\n\0") or name.startswith("."):
            raise ValueError(f"unsupported test user name {name!r}")
        self._prepare_auth_dirs()
        self._users[name] = (password, quota)
        self._write_user(name)
        return name

    def _prepare_auth_dirs(self) -> None:
        for db in ("passdb", "userdb"):
            (self.auth_dir / db).mkdir(parents=True, exist_ok=True)

    def new_user(self, prefix: str = "user", *, quota: str | None = None) -> tuple[str, str]:
        """Add a uniquely named user; returns ``(name, password)``."""
        name = f"{prefix}{next(self._counter)}-{os.getpid()}"
        password = f"pw-{name}-{time.monotonic_ns()}"
        self.add_user(name, password, quota=quota)
        return name, password

    def set_password(self, name: str, password: str) -> None:
        """Change a password; effective for the next login (open sessions stay)."""
        if name not in self._users:
            raise KeyError(name)
        self.add_user(name, password, quota=self._users[name][1])

    def remove_user(self, name: str) -> None:
        """Remove the login (the maildir stays)."""
        self._users.pop(name, None)
        for db in ("passdb", "userdb"):
            (self.auth_dir / db / name).unlink(missing_ok=True)

    @property
    def users(self) -> dict[str, str]:
        return {n: pw for n, (pw, _) in self._users.items()}

    # ------------------------------------------------------------ mail ---
    def doveadm(self, *args: str, input: bytes | None = None, check: bool = True) -> str:
        """Run ``doveadm -c <this config> ARGS`` and return stdout."""
        res = subprocess.run(
            [self._doveadm, "-c", str(self.config_path), *args],
            input=input,
            capture_output=True,
            timeout=30,
        )
        if check and res.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} failed ({res.returncode}): "
                f"{res.stderr.decode(errors='replace')}"
            )
        return res.stdout.decode(errors="replace")

    def create_folder(self, user: str, folder: str) -> None:
        self.doveadm("mailbox", "create", "-u", user, folder, check=False)

    def deliver(self, user: str, raw: bytes, folder: str = "INBOX") -> int:
        """Store ``raw`` (RFC 5322 bytes) in ``folder``; returns its UID.

        Uses ``doveadm save``, so running IMAP sessions (incl. IDLE) see it.
        """
        if not raw.endswith(b"\n"):
            raw += b"\r\n"
        try:
            self.doveadm("save", "-u", user, "-m", folder, input=raw)
        except DovecotError:
            if folder == "INBOX":
                raise
            self.create_folder(user, folder)
            self.doveadm("save", "-u", user, "-m", folder, input=raw)
        return max(self.uids(user, folder))

    def uids(self, user: str, folder: str = "INBOX") -> list[int]:
        out = self.doveadm("search", "-u", user, "mailbox", folder, "all")
        return [int(line.split()[1]) for line in out.splitlines() if line.strip()]

    def delete_message(self, user: str, uid: int, folder: str = "INBOX") -> None:
        """Expunge one message by UID."""
        self.doveadm("expunge", "-u", user, "mailbox", folder, "uid", str(uid))

    def set_flags(self, user: str, uid: int, *flags: str, folder: str = "INBOX") -> None:
        self.doveadm(
            "flags", "add", "-u", user, " ".join(flags), "mailbox", folder, "uid", str(uid)
        )

    def quota(self, user: str) -> str:
        """``doveadm quota get`` output (tab separated)."""
        return self.doveadm("quota", "get", "-u", user)

    def __repr__(self) -> str:
        return f"<Dovecot {self.host} ports={self.ports} root={self.root}>"


@atexit.register
def _stop_all() -> None:
    for instance in list(_instances):
        instance.stop()


# ----------------------------------------------------------------- fixtures ---
@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """A session-wide Dovecot. Use ``dovecot.new_user()`` to stay isolated from other tests."""
    require_dovecot()
    instance = Dovecot(pki=session_pki())
    instance.start()
    yield instance
    instance.cleanup()


@pytest.fixture
def dovecot_factory() -> Iterator[Callable[..., Dovecot]]:
    """Factory for private, started instances (stopped after the test)::

    server = dovecot_factory(allow_plaintext_auth=False)
    """
    require_dovecot()
    made: list[Dovecot] = []

    def make(**kwargs: Any) -> Dovecot:
        kwargs.setdefault("pki", session_pki())
        instance = Dovecot(**kwargs)
        made.append(instance)
        return instance.start()

    yield make
    for instance in made:
        instance.cleanup()
