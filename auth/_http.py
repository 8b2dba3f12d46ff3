"""The verifier's HTTP client for discovery and key fetches: CAs, timeouts, and why TLS failed.

A private issuer (or a TLS-inspecting proxy) needs its CA trusted: ``AuthSettings.ca_file``
(``MCP_AUTH_CA_FILE``, else ``SSL_CERT_FILE``) is added to the public CAs httpx trusts. A
failed connection is logged with its cause (``certificate verify failed: ...``), which the key
cache's own line reduces to the exception's name.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import certifi
import httpx

from ._request import clip
from ._settings import AuthSettings

__all__ = ["key_fetch_client", "tls_context", "failure_reason", "LogBudget"]

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


class LogBudget:
    """At most ``lines`` log lines per ``window`` seconds; the lines held back are counted (pure state, injected clock).

    Multi-tenant issuers are named by unverified tokens, so connection failures to them are
    the attacker's to cause: their log lines come out of this budget, not the disk's.
    """

    __slots__ = ("_lines", "_window", "_clock", "_start", "_used", "_held")

    def __init__(self, lines: int = 20, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lines, self._window, self._clock = lines, window, clock
        self._start, self._used, self._held = clock(), 0, 0

    def take(self) -> int | None:
        """None when the line must be held back; else how many were held back since the last line that went out."""
        now = self._clock()
        if now - self._start >= self._window:
            self._start, self._used = now, 0
        if self._used >= self._lines:
            self._held += 1
            return None
        self._used += 1
        held, self._held = self._held, 0
        return held


class _ExplainingTransport(httpx.AsyncBaseTransport):
    """Log why a connection failed (within a `LogBudget`), then re-raise unchanged."""

    def __init__(self, inner: httpx.AsyncBaseTransport, ca_file: str | None) -> None:
        self._inner = inner
        self._hint = "" if ca_file else " (a private CA? set MCP_AUTH_CA_FILE)"
        self._budget = LogBudget()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            held = self._budget.take()
            if held is not None:
                reason = failure_reason(exc)
                hint = self._hint if "certificate" in reason else ""
                origin = urlsplit(str(request.url))
                more = f" ({held} similar lines held back)" if held else ""
                log.warning("cannot reach %s://%s: %s%s%s", origin.scheme, clip(origin.netloc), reason, hint, more)
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
