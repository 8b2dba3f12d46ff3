"""Client side: fetch OAuth access tokens with the client-credentials grant (RFC 6749 §4.4).

`TokenProvider` asks the token endpoint named by `ClientCredentials` (``auth.client._credentials``),
caches the answer per (token endpoint, client id, resource), refreshes it ahead of expiry, and
makes concurrent callers share one request. Access tokens never appear in a ``repr``, a message
or the log; the log carries the token endpoint, client id, resource, HTTP status and lifetime only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from .._errors import ConfigError
from .._settings import check_issuer_url
from ._credentials import (
    ClientCredentials,
    DiscoveryError,
    IssuedToken,
    RetryPolicy,
    TokenEndpointUnreachable,
    TokenRequestRejected,
    TokenResponseError,
    backoff_delay,
    basic_authorization,
    check_resource,
    client_ssl_context,
    discovery_urls,
    json_object,
    parse_token_response,
    token_request_form,
)
from ._httpx import Httpx2BearerAuth, HttpxBearerAuth

__all__ = [
    "TokenProvider",
]

log = logging.getLogger("auth.client")

_MAX_BODY = 64 * 1024  # a token response is a few KiB; refuse to buffer more


# --------------------------------------------------------------------------- provider

_T = TypeVar("_T")


class _SingleFlight:
    """Callers asking for the same key while a call is running share its result."""

    def __init__(self) -> None:
        self._tasks: dict[object, asyncio.Task[Any]] = {}

    async def run(self, key: object, factory: Callable[[], Awaitable[_T]]) -> _T:
        task = self._tasks.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(factory())  # a Task: it runs even if no caller waits
            self._tasks[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        # shield: one impatient caller being cancelled must not cancel everyone's request.
        return await asyncio.shield(task)

    def _done(self, key: object, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an abandoned failure is not reported as unhandled


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # the HTTP-date form is not worth honouring here


def _tls_verification_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class TokenProvider:
    """Fetches, caches and refreshes client-credentials access tokens.

    Args:
        credentials: who we are and where to ask.
        http_client: an ``httpx.AsyncClient`` to use (not closed by us). For mTLS it must
            already present the certificate (see `client_ssl_context`). By default the
            provider creates its own, closed by `aclose`.
        ca_bundle: trust store for the client it creates (tests, private CAs).
        timeout: seconds per HTTP attempt.
        retry: attempts and back-off for timeouts, connection errors and 5xx.
        default_lifetime: assumed lifetime when a response has no ``expires_in``.
        clock: monotonic seconds (injectable for tests).
        sleep: awaited between attempts (injectable for tests).
        jitter: returns a float in [0, 1) for back-off jitter.
    """

    def __init__(
        self,
        credentials: ClientCredentials,
        *,
        http_client: httpx.AsyncClient | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen, so sharing the default is safe)
        default_lifetime: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._credentials = credentials
        self._client = http_client
        self._owns_client = http_client is None
        self._ca_bundle = ca_bundle
        self._timeout = httpx.Timeout(timeout)
        self._retry = retry
        self._default_lifetime = default_lifetime
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._cache: dict[tuple[str, str, str | None], IssuedToken] = {}
        self._flight = _SingleFlight()
        self._token_endpoint: str | None = credentials.token_endpoint
        self.requests = 0  # token requests sent (attempts included), for metrics and tests

    def __repr__(self) -> str:
        return f"TokenProvider({self._credentials!r})"

    @property
    def credentials(self) -> ClientCredentials:
        return self._credentials

    async def __aenter__(self) -> TokenProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if the provider created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            ctx = client_ssl_context(self._credentials, ca_bundle=self._ca_bundle)
            self._client = httpx.AsyncClient(verify=ctx, timeout=self._timeout, follow_redirects=False)
        return self._client

    async def token(self, force_refresh: bool = False, *, resource: str | None = None) -> str:
        """A valid access token, from the cache when it is not yet due for refresh.

        ``resource`` overrides the credentials' resource for this call.

        Raises:
            TokenRequestError: or one of its subclasses.
        """
        return (await self.issued_token(force_refresh, resource=resource)).access_token

    async def issued_token(self, force_refresh: bool = False, *, resource: str | None = None) -> IssuedToken:
        """Like `token`, with the token's type, scope and lifetime.

        Raises:
            TokenRequestError: or one of its subclasses.
            ConfigError: ``resource`` is not an absolute URI.
        """
        resource = check_resource(resource) or self._credentials.resource
        endpoint = await self.token_endpoint()
        key = (endpoint, self._credentials.client_id, resource)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and not force_refresh and now < cached.refresh_at:
            return cached
        try:
            return await self._flight.run(key, lambda: self._fetch(key))
        except TokenEndpointUnreachable:
            if cached is not None and not force_refresh and self._clock() < cached.expires_at:
                log.warning(
                    "token refresh failed for client %s at %s; using the cached token (%.0f s left)",
                    self._credentials.client_id,
                    endpoint,
                    cached.expires_at - self._clock(),
                )
                return cached
            raise

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (say, a resource server refused it), so the next call fetches anew.

        A token that was already replaced is ignored: many requests failing with the same
        stale token cause one new request, not one each.
        """
        for key, issued in list(self._cache.items()):
            if hmac.compare_digest(issued.access_token.encode(), token.encode()):
                del self._cache[key]

    def httpx_auth(self, *, resource: str | None = None) -> HttpxBearerAuth:
        """An ``httpx.Auth`` that sends our token and retries once on a 401."""
        return HttpxBearerAuth(self, resource=resource)

    def httpx2_auth(self, *, resource: str | None = None) -> Httpx2BearerAuth:
        """An ``httpx2.Auth`` (for the ``mcp`` client) that sends our token and retries once on a 401."""
        return Httpx2BearerAuth(self, resource=resource)

    async def token_endpoint(self) -> str:
        """The token endpoint, discovered from the issuer on first use.

        Raises:
            DiscoveryError: no usable metadata.
            TokenEndpointUnreachable: the issuer could not be reached.
        """
        if self._token_endpoint is None:
            self._token_endpoint = await self._flight.run("discovery", self._discover)
        return self._token_endpoint

    async def _fetch(self, key: tuple[str, str, str | None]) -> IssuedToken:
        endpoint, client_id, resource = key
        creds = self._credentials
        headers = {"Accept": "application/json"}
        if creds.client_secret is not None:
            headers["Authorization"] = basic_authorization(client_id, creds.client_secret)
        form = token_request_form(creds, resource)
        obtained_at = self._clock()  # before sending: the lifetime counts from the server's clock
        reply = await self._exchange("POST", endpoint, data=form, headers=headers)
        try:
            issued = parse_token_response(
                reply.status,
                reply.body,
                obtained_at=obtained_at,
                default_lifetime=self._default_lifetime,
                token_endpoint=endpoint,
            )
        except TokenRequestRejected as exc:
            log.error(
                "token request for client %s at %s refused: HTTP %s %s %s",
                client_id,
                endpoint,
                exc.status,
                exc.error or "",
                exc.description or "",
            )
            raise
        except TokenResponseError as exc:
            log.error("token request for client %s at %s: %s", client_id, endpoint, exc)
            raise
        self._cache[key] = issued
        log.info(
            "token for client %s at %s (resource %s): expires in %.0f s",
            client_id,
            endpoint,
            resource or "-",
            issued.expires_in,
        )
        return issued

    async def _exchange(self, method: str, url: str, **kwargs: Any) -> _Reply:
        """Send with retries on transient failures; return the first non-5xx answer.

        Raises:
            TokenEndpointUnreachable: every attempt failed, or the server's TLS certificate is not trusted.
            TokenResponseError: the answer is larger than any token response should be.
        """
        client = self._http()
        last, last_status = "", None
        for attempt in range(1, self._retry.attempts + 1):
            retry_after = None
            self.requests += 1
            try:
                async with client.stream(
                    method, url, timeout=self._timeout, follow_redirects=False, **kwargs
                ) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > _MAX_BODY:
                            raise TokenResponseError(
                                f"answer from {url} exceeds {_MAX_BODY} bytes",
                                token_endpoint=url,
                                status=response.status_code,
                            )
                    status = response.status_code
                    if status < 500:
                        return _Reply(status, bytes(body))
                    last, last_status = f"HTTP {status}", status
                    retry_after = _retry_after(response.headers.get("retry-after"))
            except httpx.TransportError as exc:
                last, last_status = type(exc).__name__, None
                if _tls_verification_failed(exc):
                    raise TokenEndpointUnreachable(
                        f"{url}: server certificate not trusted", token_endpoint=url
                    ) from exc
            log.warning(
                "%s %s for client %s: %s (attempt %d of %d)",
                method,
                url,
                self._credentials.client_id,
                last,
                attempt,
                self._retry.attempts,
            )
            if attempt < self._retry.attempts:
                await self._sleep(backoff_delay(self._retry, attempt, self._jitter(), retry_after))
        raise TokenEndpointUnreachable(
            f"{url}: {last} after {self._retry.attempts} attempts", token_endpoint=url, status=last_status
        )

    async def _discover(self) -> str:
        issuer = self._credentials.issuer
        assert issuer is not None  # token_endpoint is set otherwise
        problems = []
        for url in discovery_urls(issuer):
            reply = await self._exchange("GET", url, headers={"Accept": "application/json"})
            doc = json_object(reply.body) if reply.status == 200 else None
            if doc is None:
                problems.append(
                    f"{url}: HTTP {reply.status}" + (" not a JSON object" if reply.status == 200 else "")
                )
                continue
            # RFC 8414 §3.3 / OIDC Discovery §4.3: the document must name the issuer we asked.
            if str(doc.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
                problems.append(f"{url}: names issuer {doc.get('issuer')!r}")
                continue
            endpoint = doc.get("token_endpoint")
            aliases = doc.get("mtls_endpoint_aliases")
            if self._credentials.auth_method == "tls_client_auth" and isinstance(aliases, dict):
                endpoint = aliases.get("token_endpoint", endpoint)  # RFC 8705 §5
            try:
                endpoint = check_issuer_url(endpoint if isinstance(endpoint, str) else "", "token_endpoint")
            except ConfigError as exc:
                problems.append(f"{url}: {exc}")
                continue
            log.info("discovered token endpoint %s for issuer %s", endpoint, issuer)
            return endpoint
        raise DiscoveryError(f"no token endpoint for issuer {issuer}: " + "; ".join(problems))
