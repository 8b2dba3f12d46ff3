"""Render ``WWW-Authenticate`` challenges and error bodies from `AuthError` (RFC 6750 §3)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote

from ._errors import AuthError, InsufficientScope

__all__ = ["challenge", "error_headers", "error_body"]


_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def _quoted(value: str) -> str:
    """RFC 9110 §5.6.4 quoted-string of ``value``, printable ASCII only.

    Control characters (CR and LF above all: header injection) and anything outside ASCII
    cannot appear in a header value, so they are percent-encoded (RFC 3986 §2.1) first.
    """
    value = _PRINTABLE.sub(lambda m: quote(m.group(), safe="", errors="replace"), value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(exc: AuthError, *, resource_metadata: str, scopes: Iterable[str] = ()) -> str:
    """The ``WWW-Authenticate`` value for ``exc``.

    No ``error`` when credentials are missing (RFC 6750 §3.1); ``scope`` names what basic
    use needs on a 401 and everything the operation needs on a 403 (MCP authorization).
    """
    params: list[tuple[str, str]] = [("resource_metadata", resource_metadata)]
    if exc.error:
        params.append(("error", exc.error))
    if exc.description:
        params.append(("error_description", exc.description))
    needed = sorted(exc.required) if isinstance(exc, InsufficientScope) else sorted(set(scopes))
    if needed:
        params.append(("scope", " ".join(needed)))
    return "Bearer " + ", ".join(f"{k}={_quoted(v)}" for k, v in params)


def error_headers(exc: AuthError, *, resource_metadata: str, scopes: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Response headers for ``exc``: the challenge, ``Retry-After`` on 503, and no caching."""
    headers = [("www-authenticate", challenge(exc, resource_metadata=resource_metadata, scopes=scopes))]
    retry_after = getattr(exc, "retry_after", None)
    if exc.status == 503 and retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    headers.append(("cache-control", "no-store"))
    return headers


def error_body(exc: AuthError) -> bytes:
    """A small JSON body with the stable code only; the detailed reason stays in the log."""
    body: dict[str, str] = {"error": exc.error or ("temporarily_unavailable" if exc.status == 503 else "unauthorized")}
    if exc.description:
        body["error_description"] = exc.description
    return json.dumps(body).encode()
