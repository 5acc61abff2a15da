"""A throw-away test PKI: a CA plus server certificates for localhost / 127.0.0.1.

``make_pki(dir)`` gives the CA and a server cert the fixtures use; clients trust it
through ``pki.client_context()``.  ``make_untrusted_pki(dir)`` gives a server cert
issued by a *different* CA, so a client using the trusted context must reject it
("certificate verify failed").  ``CertificateAuthority.issue`` can also make expired
or wrong-hostname certificates.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import ipaddress
import shutil
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTNAMES = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "127.0.0.2", "::1")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mailroom tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def client_context(ca_path: Path | str) -> ssl.SSLContext:
    """A verifying client context (hostname check on) that trusts only ``ca_path``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_path))
    return ctx


def server_context(cert_path: Path | str, key_path: Path | str) -> ssl.SSLContext:
    """A server-side context presenting ``cert_path``/``key_path``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


@dataclass(frozen=True)
class ServerCert:
    cert_path: Path
    key_path: Path


class CertificateAuthority:
    """A CA whose key stays in memory; its certificate is written to ``cert_path``."""

    def __init__(self, directory: Path, name: str = "ca", common_name: str | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = _key()
        now = dt.datetime.now(dt.UTC)
        subject = _name(common_name or f"Mailroom Test CA ({name})")
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = _write(self.directory / f"{name}.pem", _cert_pem(self.cert))

    def issue(
        self,
        name: str = "server",
        *,
        hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
        ips: Sequence[str] = DEFAULT_IPS,
        valid_days: int = 365,
        expired: bool = False,
    ) -> ServerCert:
        """Issue a TLS server certificate; files ``<name>.pem`` / ``<name>.key``."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        if expired:
            not_before, not_after = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
        else:
            not_before, not_after = now - dt.timedelta(days=1), now + dt.timedelta(days=valid_days)
        sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cn = hostnames[0] if hostnames else (ips[0] if ips else name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return ServerCert(
            cert_path=_write(self.directory / f"{name}.pem", _cert_pem(cert)),
            # 0644 on purpose: unprivileged server processes (dovecot) read it too.
            key_path=_write(self.directory / f"{name}.key", _key_pem(key), 0o644),
        )


@dataclass(frozen=True)
class TestPKI:
    """CA certificate plus one server certificate/key issued by it (all PEM files)."""

    __test__ = False  # not a pytest test class

    ca: CertificateAuthority
    ca_path: Path
    cert_path: Path
    key_path: Path

    def client_context(self) -> ssl.SSLContext:
        """Client context trusting this PKI's CA (verification + hostname check on)."""
        return client_context(self.ca_path)

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.cert_path, self.key_path)


def make_pki(directory: Path | str, prefix: str = "") -> TestPKI:
    """Create ``<prefix>ca.pem``, ``<prefix>server.pem`` and ``<prefix>server.key``."""
    ca = CertificateAuthority(Path(directory), name=f"{prefix}ca")
    leaf = ca.issue(f"{prefix}server")
    return TestPKI(ca=ca, ca_path=ca.cert_path, cert_path=leaf.cert_path, key_path=leaf.key_path)


def make_untrusted_pki(directory: Path | str) -> TestPKI:
    """A server cert for localhost issued by a separate, untrusted CA.

    Serve ``cert_path``/``key_path`` and connect with the *trusted* PKI's
    ``client_context()`` to get a certificate verification failure.
    """
    return make_pki(directory, prefix="untrusted-")


@functools.cache
def session_pki() -> TestPKI:
    """The process-wide test PKI, created once (world-readable temp dir, removed at exit).

    The Dovecot and SMTP fixtures use it, so one ``client_context()`` trusts all of them.
    """
    directory = Path(tempfile.mkdtemp(prefix="mailroom-pki-"))
    directory.chmod(0o755)
    atexit.register(shutil.rmtree, directory, True)
    return make_pki(directory)


@pytest.fixture(scope="session")
def tls_pki() -> Iterator[TestPKI]:
    """Session-wide test PKI shared by the Dovecot and SMTP fixtures."""
    yield session_pki()
