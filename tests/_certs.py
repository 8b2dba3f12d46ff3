"""Throw-away X.509 material for tests: a CA, server certificates and client certificates.

Everything is generated at test time with ``cryptography`` and written under a directory
the test owns (``tmp_path``); no key material is checked in.

    ca = TestCA(tmp_path)
    server = ca.issue_server()                # 127.0.0.1, ::1 and localhost
    client = ca.issue_client("my-client-id")  # clientAuth
    uvicorn.Config(app, ssl_certfile=server.cert_path, ssl_keyfile=server.key_path,
                   ssl_ca_certs=ca.cert_path, ssl_cert_reqs=ssl.CERT_REQUIRED)
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from server._devcerts import host_names, issue_leaf, new_ca

__all__ = ["TestCA", "Issued", "KeyType"]

KeyType = Literal["ec", "rsa"]
_counter = itertools.count(1)


def _new_key(kind: KeyType) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, kind: KeyType) -> bytes:
    # RSA keys in the traditional "RSA PRIVATE KEY" form, as IAS bindings carry them.
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL if kind == "rsa" else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in memory and on disk."""

    certificate: x509.Certificate
    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


class TestCA:
    """A self-signed CA that issues short-lived leaf certificates into ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "Test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.certificate, self._key = new_ca(name, now=dt.datetime.now(dt.UTC), days=1)
        self.cert_pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        self.cert_path = self.directory / f"ca-{next(_counter)}.pem"
        self.cert_path.write_bytes(self.cert_pem)

    def _issue(
        self, name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName], kind: KeyType
    ) -> Issued:
        cert, key = issue_leaf(self._key, self.certificate, name, usage, sans, now=dt.datetime.now(dt.UTC),
                               lifetime=dt.timedelta(hours=12), key=_new_key(kind))
        stem = self.directory / f"{name.replace('/', '_')}-{next(_counter)}"
        issued = Issued(
            certificate=cert,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=_key_pem(key, kind),
            cert_path=stem.with_suffix(".crt"),
            key_path=stem.with_suffix(".key"),
        )
        issued.cert_path.write_bytes(issued.cert_pem)
        issued.key_path.write_bytes(issued.key_pem)
        issued.key_path.chmod(0o600)
        return issued

    def issue_server(
        self, hosts: tuple[str, ...] = ("127.0.0.1", "::1", "localhost"), kind: KeyType = "ec"
    ) -> Issued:
        """A TLS server certificate for ``hosts`` (IP addresses or DNS names)."""
        return self._issue(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, host_names(hosts), kind)

    def issue_client(self, common_name: str, kind: KeyType = "ec") -> Issued:
        """A TLS client certificate (``clientAuth``) with ``common_name`` as its subject."""
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], kind)
