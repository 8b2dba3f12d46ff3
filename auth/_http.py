"""The verifier's HTTP client for discovery and key fetches: CAs, timeouts, and why TLS failed.

A private issuer (or a TLS-inspecting proxy) needs its CA trusted: ``AuthSettings.ca_file``
(``MCP_AUTH_CA_FILE``, else ``SSL_CERT_FILE``) is added to the public CAs httpx trusts. A
failed connection is logged with its cause (``certificate verify failed: ...``), which the key
cache's own line reduces to the exception's name.
"""

from __future__ import annotations

import logging
import ssl
from urllib.parse import urlsplit

import certifi
import httpx

from ._settings import AuthSettings

__all__ = ["key_fetch_client", "tls_context", "failure_reason"]

log = logging.getLogger("auth.http")


def tls_context(ca_file: str | None) -> ssl.SSLContext | bool:
    """``True`` (httpx's default trust) or a verifying context with ``ca_file`` added to it."""
    if ca_file is None:
        return True
    context = ssl.create_default_context(cafile=certifi.where())
    context.load_verify_locations(cafile=ca_file)
    return context


def failure_reason(exc: BaseException) -> str:
    """The most specific cause in ``exc``'s chain: the certificate check's message when TLS failed (pure)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    reason = str(exc) or type(exc).__name__
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {current.verify_message}"
        if isinstance(current, ssl.SSLError):
            reason = f"TLS error: {current.reason or current}"
        current = current.__cause__ or current.__context__
    return reason


class _ExplainingTransport(httpx.AsyncBaseTransport):
    """Log why a connection failed, then re-raise unchanged."""

    def __init__(self, inner: httpx.AsyncBaseTransport, ca_file: str | None) -> None:
        self._inner = inner
        self._hint = "" if ca_file else " (a private CA? set MCP_AUTH_CA_FILE)"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            reason = failure_reason(exc)
            hint = self._hint if "certificate" in reason else ""
            origin = urlsplit(str(request.url))
            log.warning("cannot reach %s://%s: %s%s", origin.scheme, origin.netloc, reason, hint)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


def key_fetch_client(settings: AuthSettings) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for discovery and JWKS: the configured CAs and timeout, no redirects, no env proxies."""
    verify = tls_context(settings.ca_file)
    transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False)
    return httpx.AsyncClient(
        transport=_ExplainingTransport(transport, settings.ca_file),
        timeout=httpx.Timeout(settings.http_timeout_s),
        follow_redirects=False,
        trust_env=False,
    )
