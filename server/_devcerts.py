"""Throw-away X.509 material for ``python -m server --dev --mtls``.

A fresh CA, a server certificate for the loopback names and a client certificate for the dev
client ``dev-x509`` are generated at every start into one folder (default
``data/dev-certs``)::

    ca.pem            the dev CA: trust it as a client (curl --cacert), and it signs client certs
    server.pem        server certificate for 127.0.0.1, ::1 and localhost
    server-key.pem
    client.pem        client certificate of dev-x509 (clientAuth)
    client-key.pem

Keys are written with mode 0600. The CA's own key is never written: nothing else can be
signed with it once the server stops. None of this is for production.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from auth import certificate_thumbprint

__all__ = ["DEV_CERTS_DIR", "DEV_X509_CLIENT", "DevCerts", "generate_dev_certs", "new_ca", "issue_leaf", "host_names"]

DEV_CERTS_DIR = Path("data/dev-certs")
DEV_X509_CLIENT = "dev-x509"
_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class DevCerts:
    """Where the generated files are, and the client certificate's ``x5t#S256`` thumbprint."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_id: str
    client_thumbprint: str


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Replace ``path`` atomically; private files are created 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_ca(common_name: str, *, now: dt.datetime, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA (P-256) that may sign leaf certificates only (``path_length=0``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MCP dev"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def host_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    """Subject alternative names: IP addresses as such, anything else as a DNS name."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return sans


def issue_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    *,
    now: dt.datetime,
    lifetime: dt.timedelta,
    key: PrivateKey | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A leaf certificate for ``usage`` (serverAuth or clientAuth) signed by the CA; a P-256 key unless given."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def generate_dev_certs(
    directory: str | os.PathLike[str] = DEV_CERTS_DIR, *, client_id: str = DEV_X509_CLIENT, days: int = 7
) -> DevCerts:
    """Generate a CA, a loopback server certificate and ``client_id``'s client certificate.

    Raises:
        OSError: the folder cannot be created or written.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_cert, ca_key = new_ca(f"MCP dev CA {now:%Y-%m-%d %H:%M:%S}", now=now, days=days)
    server_auth, client_auth = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    lifetime = dt.timedelta(days=days)
    server_cert, server_key = issue_leaf(
        ca_key, ca_cert, _HOSTS[0], server_auth, host_names(_HOSTS), now=now, lifetime=lifetime
    )
    client_cert, client_key = issue_leaf(ca_key, ca_cert, client_id, client_auth, [], now=now, lifetime=lifetime)

    certs = DevCerts(
        directory=folder,
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client-key.pem",
        client_id=client_id,
        client_thumbprint=certificate_thumbprint(client_cert.public_bytes(serialization.Encoding.DER)),
    )
    pem = serialization.Encoding.PEM
    _write(certs.ca, ca_cert.public_bytes(pem), private=False)
    _write(certs.server_key, _key_pem(server_key), private=True)
    _write(certs.server_cert, server_cert.public_bytes(pem), private=False)
    _write(certs.client_key, _key_pem(client_key), private=True)
    _write(certs.client_cert, client_cert.public_bytes(pem), private=False)
    return certs
