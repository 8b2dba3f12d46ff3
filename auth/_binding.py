"""Certificate-bound access tokens (RFC 8705 §3): compare ``cnf.x5t#S256`` with the client certificate.

The certificate comes from the TLS connection (the ASGI ``tls`` extension, when the server
terminates mutual TLS itself) or, only when configured to trust it, from the
``X-Forwarded-Client-Cert`` header a TLS-terminating proxy adds: SAP BTP's gorouter writes one
line of base64 DER; Envoy/Istio (Kyma) writes ``Hash=…;Cert="<url-encoded PEM>"`` elements, to
which the app's own Istio sidecar appends one for its peer (``forwarded_client_cert_gateway``).
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

from ._errors import CertificateMismatch
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
_MAX_SPECIALS = 512  # separators, quotes and escapes in an Envoy-form value
_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
# Envoy's element keys (the gorouter's base64 DER contains no '=' before its padding, and no ';').
_ENVOY_KEYS = frozenset({"Hash", "Cert", "By", "Subject", "URI", "DNS"})
_SPECIALS = re.compile(r'["\\,;]')  # a single character class: one linear scan, no backtracking


def certificate_thumbprint(der: bytes) -> str:
    """``base64url(SHA-256(DER))`` without padding: the form of ``x5t#S256`` (RFC 8705 §3.1)."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def _der_from_text(text: str) -> bytes:
    # Linear: find() for the armour, split() for whitespace; no pattern can backtrack (issue 7).
    begin = text.find(_BEGIN)
    if begin >= 0:
        end = text.find(_END, begin + len(_BEGIN))
        if end < 0:
            raise CertificateMismatch("client certificate PEM has no END line")
        text = text[begin + len(_BEGIN) : end]
    body = "".join(text.split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CertificateMismatch("client certificate is not base64") from exc
    try:
        x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateMismatch("client certificate is not an X.509 certificate") from exc
    return der


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside double quotes (backslash escapes inside quotes), linearly."""
    if '"' not in text:
        return text.split(sep)
    parts: list[str] = []
    start, quoted, escaped_at = 0, False, -1
    for match in _SPECIALS.finditer(text):  # visits only the special characters, each once
        at = match.start()
        if at == escaped_at:
            continue
        ch = match.group()
        if quoted:
            if ch == "\\":
                escaped_at = at + 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == sep:
            parts.append(text[start:at])
            start = at + 1
    if quoted:
        raise CertificateMismatch("X-Forwarded-Client-Cert has an unterminated quote")
    parts.append(text[start:])
    return parts


def _is_envoy(value: str) -> bool:
    """Whether ``value`` is Envoy's ``Key=value;...`` form: some element starts with a known key."""
    if "=" not in value:
        return False  # the gorouter's base64 DER has '=' only as padding, after no known key
    for piece in value.replace(",", ";").split(";"):
        key, eq, _ = piece.partition("=")
        if eq and key.lstrip() in _ENVOY_KEYS:
            return True
    return False


def _client_element(elements: list[str], gateway: str | None) -> str:
    """The element describing the client: the last one, or with ``gateway`` the one before the mesh hop.

    An Istio sidecar in front of the app appends its own element (``APPEND_FORWARD``, with
    ``Subject``, ``URI`` and ``DNS`` of its peer, never ``Cert``), so behind Kyma's ingress gateway
    the header reads ``<gateway's element>,<sidecar's element>``. The sidecar's element is trusted
    only when its ``URI`` (the peer's SPIFFE identity, verified by mesh mutual TLS) is ``gateway``;
    anything another workload in the mesh sent stays before it and is never read.
    """
    if gateway is None:
        return elements[-1]
    if len(elements) < 2:
        raise CertificateMismatch("X-Forwarded-Client-Cert has no element from the gateway before the sidecar's")
    uris = []
    for pair in _split_outside_quotes(elements[-1], ";"):
        key, _, raw = pair.strip().partition("=")
        if key.lower() == "uri":
            uris.append(raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw)
    if gateway not in uris:
        raise CertificateMismatch("X-Forwarded-Client-Cert did not come through the configured gateway")
    return elements[-2]


def parse_forwarded_client_cert(value: str, *, gateway: str | None = None) -> bytes:
    """The DER client certificate from an ``X-Forwarded-Client-Cert`` value (pure, linear time).

    Envoy form: elements separated by ``,``, pairs by ``;``; the last element's ``Cert``
    (url-encoded PEM) is the certificate the nearest proxy saw; with ``gateway`` (a SPIFFE ID),
    the element before the app's Istio sidecar's, when that sidecar names ``gateway`` as its peer
    (`_client_element`). Otherwise the value is the gorouter's base64 DER (PEM armour tolerated),
    which ``gateway`` does not accept.

    Raises:
        InvalidToken: the header cannot be parsed into one X.509 certificate.
    """
    value = value.strip()
    if not value or len(value) > _MAX_XFCC:
        raise CertificateMismatch("X-Forwarded-Client-Cert is empty or too long")
    if _is_envoy(value):
        # A few proxies with a handful of pairs each; counting in C keeps the worst case cheap.
        if sum(value.count(c) for c in '",;\\') > _MAX_SPECIALS:
            raise CertificateMismatch("X-Forwarded-Client-Cert has too many elements, pairs or quotes")
        element = _client_element(_split_outside_quotes(value, ","), gateway)
        for pair in _split_outside_quotes(element, ";"):
            key, _, raw = pair.strip().partition("=")
            if key.lower() == "cert":
                raw = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
                return _der_from_text(unquote(raw))
        raise CertificateMismatch("X-Forwarded-Client-Cert has no Cert in the client's element")
    if gateway is not None:
        raise CertificateMismatch("X-Forwarded-Client-Cert is not in Envoy's form, as the configured gateway writes it")
    return _der_from_text(value)


def client_certificate(scope: dict[str, Any], *, trust_forwarded: bool, gateway: str | None = None) -> bytes | None:
    """The DER certificate the client presented, or None (``gateway``: see `parse_forwarded_client_cert`).

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
        raise CertificateMismatch("more than one X-Forwarded-Client-Cert header")
    return parse_forwarded_client_cert(values[0].decode("latin-1"), gateway=gateway)


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
            raise CertificateMismatch("token is not certificate-bound (cnf.x5t#S256) and bound tokens are required")
        return
    if certificate is None:
        raise CertificateMismatch("certificate-bound token presented without a client certificate")
    # Bytes on both sides: compare_digest refuses non-ASCII str with a TypeError (a 500, issue 7).
    if not hmac.compare_digest(certificate_thumbprint(certificate).encode(), expected.encode("utf-8", "replace")):
        raise CertificateMismatch("client certificate does not match the token's cnf.x5t#S256")


def certificate_check(settings: AuthSettings) -> Callable[[dict[str, Any], VerifiedToken], None] | None:
    """The middleware hook for ``settings.cert_binding``, or None when binding is off."""
    if settings.cert_binding == "off":
        return None
    mode, trust = settings.cert_binding, settings.trust_forwarded_client_cert
    gateway = settings.forwarded_client_cert_gateway

    def check(scope: dict[str, Any], token: VerifiedToken) -> None:
        if token.certificate_thumbprint is None and mode != "required":
            return  # don't parse headers we will not use
        check_certificate_binding(token, client_certificate(scope, trust_forwarded=trust, gateway=gateway), mode=mode)

    return check
