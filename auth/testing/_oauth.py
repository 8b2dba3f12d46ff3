"""The token endpoint's wire format: form bodies, HTTP Basic, RFC 6749 §5.2 errors (pure, no I/O)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Literal
from urllib.parse import parse_qsl, unquote_plus

__all__ = [
    "MAX_FORM_BYTES",
    "NO_STORE",
    "TokenError",
    "TokenEndpointError",
    "parse_basic",
    "parse_form",
]

MAX_FORM_BYTES = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1

TokenError = Literal[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_target",
    "unsupported_response_type",
]


class TokenEndpointError(Exception):
    """An RFC 6749 §5.2 error answer; ``description`` is sent to the client, so never put a secret in it."""

    def __init__(self, error: TokenError, description: str, status: int = 400) -> None:
        super().__init__(error)
        self.error: TokenError = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def headers(self) -> dict[str, str]:
        headers = dict(NO_STORE)
        if self.error == "invalid_client":
            headers["WWW-Authenticate"] = 'Basic realm="dev-ias"'
        return headers


def parse_basic(authorization: str) -> tuple[str, str]:
    """Decode ``Basic base64(urlencode(id):urlencode(secret))`` (RFC 6749 §2.3.1).

    Raises:
        TokenEndpointError: invalid_client when the header is not usable Basic credentials.
    """
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise TokenEndpointError("invalid_client", "unsupported authorization scheme", 401)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise TokenEndpointError("invalid_client", "malformed Basic credentials", 401) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id:
        raise TokenEndpointError("invalid_client", "malformed Basic credentials", 401)
    return unquote_plus(client_id), unquote_plus(secret)


def parse_form(body: bytes | None, headers: Mapping[str, str]) -> dict[str, str]:
    """Parse an ``application/x-www-form-urlencoded`` body.

    Args:
        body: the body, or None when it was larger than `MAX_FORM_BYTES` (the caller stopped reading).
        headers: request headers, lower-case names.

    Raises:
        TokenEndpointError: invalid_request for another media type, an oversized or undecodable
            body, or a repeated parameter (RFC 6749 §3.2).
    """
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise TokenEndpointError("invalid_request", "the body must be application/x-www-form-urlencoded")
    if body is None or len(body) > MAX_FORM_BYTES:
        raise TokenEndpointError("invalid_request", "request body too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise TokenEndpointError("invalid_request", "the body is not UTF-8") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise TokenEndpointError("invalid_request", f"parameter {name[:64]!r} is repeated")
        form[name] = value
    return form
