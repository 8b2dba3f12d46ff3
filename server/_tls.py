"""uvicorn terminating (mutual) TLS itself, with the client certificate in the ASGI scope.

uvicorn can ask for a client certificate (``ssl_cert_reqs``) but does not tell the app which
one came. The protocol classes here add the ASGI TLS extension
(https://asgi.readthedocs.io/en/latest/specs/tls.html) to every HTTP scope of a TLS
connection, so `auth` can check certificate-bound tokens (RFC 8705 §3) and the dev issuer can
authenticate clients by certificate (RFC 8705 §2.1)::

    scope["extensions"]["tls"] == {
        "server_cert": "-----BEGIN CERTIFICATE-----...",   # or None
        "client_cert_chain": ["-----BEGIN CERTIFICATE-----..."],  # [] without a client certificate
        "client_cert_name": "CN=dev-x509",                 # RFC 4514, or None
        "client_cert_error": None,                         # a presented certificate was verified
        "tls_version": 0x0304,                             # TLS 1.3
        "cipher_suite": 0x1302,                            # TLS_AES_256_GCM_SHA384
    }

Plain-HTTP connections get no ``tls`` extension (the spec forbids it there). WebSocket
connections are not covered (uvicorn hands them to another protocol class).

    uvicorn.Config(app, **uvicorn_tls_options("server.pem", "server-key.pem", "client-ca.pem"))
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["TLSH11Protocol", "tls_extension", "uvicorn_tls_options", "check_tls_files"]

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

ASGIApp = Callable[..., Any]


@functools.lru_cache(maxsize=64)
def _cipher_ids(context: ssl.SSLContext) -> dict[str, int]:
    # OpenSSL's id is 0x0300XXXX for TLS suites; the low 16 bits are the IANA number.
    return {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}


@functools.lru_cache(maxsize=16)
def _first_pem(path: str, mtime: float) -> str | None:
    try:
        with open(path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        return None
    return certs[0].public_bytes(serialization.Encoding.PEM).decode("ascii") if certs else None


def _server_cert_pem(cert_file: str | os.PathLike[str] | None) -> str | None:
    if not cert_file:
        return None
    path = os.fspath(cert_file)
    try:
        return _first_pem(path, os.stat(path).st_mtime)
    except OSError:
        return None


def _pem(der: bytes) -> str:
    return ssl.DER_cert_to_PEM_cert(der)


def tls_extension(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, *, server_cert: str | None = None
) -> dict[str, Any]:
    """The ASGI ``tls`` extension for one established TLS connection.

    ``client_cert_chain`` lists what the client sent, its own certificate first (Python ≥ 3.13
    gives the whole chain; older versions the client's certificate only).
    """
    leaf = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    if leaf:
        chain.append(_pem(leaf))
        unverified = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13+: what the client sent
        try:
            sent = unverified() if unverified is not None else None
        except (ssl.SSLError, ValueError):
            sent = None
        for cert in sent or ():
            der = bytes(cert) if isinstance(cert, (bytes, bytearray)) else None
            if der is not None and der != leaf:  # the server side may or may not list the leaf itself
                chain.append(_pem(der))
    name = None
    if chain:
        try:
            name = x509.load_pem_x509_certificate(chain[0].encode("ascii")).subject.rfc4514_string()
        except ValueError:
            name = None
    cipher = ssl_object.cipher()
    cipher_suite = None
    if cipher is not None:
        cipher_suite = _cipher_ids(ssl_object.context).get(cipher[0])
    return {
        "server_cert": server_cert,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # an unverifiable certificate fails the handshake (CERT_OPTIONAL/REQUIRED)
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": cipher_suite,
    }


class _TLSScopeMixin:
    """Wraps the protocol's app per connection so each HTTP scope gets the ``tls`` extension."""

    app: ASGIApp
    config: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:  # plain HTTP: no extension (ASGI TLS spec)
            return
        server_cert = _server_cert_pem(getattr(self.config, "ssl_certfile", None))
        tls = tls_extension(ssl_object, server_cert=server_cert)
        app = self.app

        async def with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                extensions = dict(scope.get("extensions") or {})
                extensions["tls"] = {**tls, "client_cert_chain": list(tls["client_cert_chain"])}
                scope["extensions"] = extensions
            await app(scope, receive, send)

        self.app = with_tls


class TLSH11Protocol(_TLSScopeMixin, H11Protocol):
    """uvicorn's h11 protocol, adding the ASGI TLS extension to HTTP scopes."""


def uvicorn_tls_options(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    client_ca_file: str | os.PathLike[str] | None = None,
    *,
    http: type | None = None,
) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments to serve HTTPS and read optional client certificates.

    Args:
        cert_file: the server certificate (PEM, chain allowed).
        key_file: its private key (PEM).
        client_ca_file: CAs that client certificates must chain to. Without it, no client
            certificate is requested (TLS only).
        http: the protocol class; `TLSH11Protocol` by default.

    Client certificates are optional at the TLS layer (``CERT_OPTIONAL``): a client without one
    still connects, and the app decides (certificate-bound tokens, ``tls_client_auth``).
    A presented certificate that does not chain to ``client_ca_file`` fails the handshake.
    """
    options: dict[str, Any] = {
        "ssl_certfile": os.fspath(cert_file),
        "ssl_keyfile": os.fspath(key_file),
        "http": http or TLSH11Protocol,
    }
    if client_ca_file is not None:
        options["ssl_ca_certs"] = os.fspath(client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_OPTIONAL
    return options


def check_tls_files(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    client_ca_file: str | os.PathLike[str] | None,
) -> str | None:
    """Load the files as uvicorn will; return which one is at fault (``cert``/``key``/``ca``) or None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for which, path in (("cert", cert_file), ("key", key_file), ("ca", client_ca_file)):
        if path is not None and not os.path.isfile(path):
            return which
    try:
        ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    except ssl.SSLError:
        return "key"
    except OSError:
        return "cert"
    if client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=os.fspath(client_ca_file))
        except (ssl.SSLError, OSError):
            return "ca"
    return None
