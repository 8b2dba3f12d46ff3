"""Certificate-bound access tokens (RFC 8705 §3): compare ``cnf.x5t#S256`` with the client certificate.

The certificate comes from the TLS connection (the ASGI ``tls`` extension, when the server
terminates mutual TLS itself) or, only when configured to trust it, from the
``X-Forwarded-Client-Cert`` header a TLS-terminating proxy adds: SAP BTP's gorouter writes one
line of base64 DER; Envoy/Istio (Kyma) writes ``Hash=…;Cert="<url-encoded PEM>"`` elements.
A client on a route without mutual TLS could send that header itself, hence the setting.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from cryptography import x509

from ._errors import InvalidToken
from ._settings import AuthSettings
from ._token import VerifiedToken

__all__ = [
    "certificate_thumbprint",
    "parse_forwarded_client_cert",
    "client_certificate",
    "check_certificate_binding",
    "certificate_check",
]

_XFCC = b"x-forwarded-client-cert"
_MAX_XFCC = 16 * 1024
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL)


def certificate_thumbprint(der: bytes) -> str:
    """``base64url(SHA-256(DER))`` without padding: the form of ``x5t#S256`` (RFC 8705 §3.1)."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def _der_from_text(text: str) -> bytes:
    match = _PEM.search(text)
    body = match.group(1) if match else text
    body = re.sub(r"\s+", "", body)
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("client certificate is not base64") from exc
    try:
        x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise InvalidToken("client certificate is not an X.509 certificate") from exc
    return der


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise InvalidToken("X-Forwarded-Client-Cert has an unterminated quote")
    parts.append("".join(current))
    return parts


def parse_forwarded_client_cert(value: str) -> bytes:
    """The DER client certificate from an ``X-Forwarded-Client-Cert`` value (pure).

    Envoy form: elements separated by ``,``, pairs by ``;``; the last element's ``Cert``
    (url-encoded PEM) is the certificate the nearest proxy saw. Otherwise the value is the
    gorouter's base64 DER (PEM armour tolerated).

    Raises:
        InvalidToken: the header cannot be parsed into one X.509 certificate.
    """
    value = value.strip()
    if not value or len(value) > _MAX_XFCC:
        raise InvalidToken("X-Forwarded-Client-Cert is empty or too long")
    if "=" in value and re.search(r"(^|[;,])\s*(Hash|Cert|By|Subject|URI|DNS)=", value):
        element = _split_outside_quotes(value, ",")[-1]
        for pair in _split_outside_quotes(element, ";"):
            key, _, raw = pair.strip().partition("=")
            if key.lower() == "cert":
                raw = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
                return _der_from_text(unquote(raw))
        raise InvalidToken("X-Forwarded-Client-Cert has no Cert in its last element")
    return _der_from_text(value)


def client_certificate(scope: dict[str, Any], *, trust_forwarded: bool) -> bytes | None:
    """The DER certificate the client presented, or None.

    Raises:
        InvalidToken: the forwarded header is trusted but duplicated or unparsable.
    """
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    if chain:  # ASGI TLS extension: PEM strings, the client's own certificate first
        return _der_from_text(chain[0])
    if not trust_forwarded:
        return None
    values = [v for k, v in scope.get("headers", ()) if k.lower() == _XFCC]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidToken("more than one X-Forwarded-Client-Cert header")
    return parse_forwarded_client_cert(values[0].decode("latin-1"))


def check_certificate_binding(
    token: VerifiedToken, certificate: bytes | None, *, mode: str
) -> None:
    """Enforce ``mode`` (``off``, ``if-bound``, ``required``) for ``token`` and the presented certificate.

    Raises:
        InvalidToken: a bound token without its certificate or with another one, or an unbound
            token where bound tokens are required.
    """
    if mode == "off":
        return
    expected = token.certificate_thumbprint
    if expected is None:
        if mode == "required":
            raise InvalidToken("token is not certificate-bound (cnf.x5t#S256) and bound tokens are required")
        return
    if certificate is None:
        raise InvalidToken("certificate-bound token presented without a client certificate")
    if not hmac.compare_digest(certificate_thumbprint(certificate), expected):
        raise InvalidToken("client certificate does not match the token's cnf.x5t#S256")


def certificate_check(settings: AuthSettings) -> Callable[[dict[str, Any], VerifiedToken], None] | None:
    """The middleware hook for ``settings.cert_binding``, or None when binding is off."""
    if settings.cert_binding == "off":
        return None
    mode, trust = settings.cert_binding, settings.trust_forwarded_client_cert

    def check(scope: dict[str, Any], token: VerifiedToken) -> None:
        if token.certificate_thumbprint is None and mode != "required":
            return  # don't parse headers we will not use
        check_certificate_binding(token, client_certificate(scope, trust_forwarded=trust), mode=mode)

    return check
