"""Client side: fetch OAuth access tokens with the client-credentials grant (RFC 6749 §4.4),
and exchange a token for another (RFC 7523 JWT bearer, RFC 8693 token exchange).

`TokenProvider` asks the token endpoint named by `ClientCredentials` (``auth.client._credentials``),
caches the answer per (token endpoint, client id, resource), refreshes it ahead of expiry, and
makes concurrent callers share one request. Exchanged tokens are cached per (grant and target,
digest of the subject token) in a bounded cache: one caller's exchanged token is never handed to
another. Access tokens never appear in a ``repr``, a message or the log; the log carries the token
endpoint, client id, resource, HTTP status and lifetime only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import os
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
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
from ._exchange import ExchangeTarget, check_exchange_response, exchange_request_form, token_digest
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


class _BoundedCache:
    """Issued tokens by key, at most ``max_entries``; the least recently used goes first."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[Hashable, IssuedToken] = OrderedDict()

    def get(self, key: Hashable) -> IssuedToken | None:
        issued = self._entries.get(key)
        if issued is not None:
            self._entries.move_to_end(key)
        return issued

    def put(self, key: Hashable, issued: IssuedToken) -> None:
        self._entries[key] = issued
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def discard(self, token: str) -> None:
        for key, issued in list(self._entries.items()):
            if hmac.compare_digest(issued.access_token.encode(), token.encode()):
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class TokenProvider:
    """Fetches, caches and refreshes client-credentials access tokens, and exchanges tokens.

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
        exchange_cache_size: how many exchanged tokens to keep (one per subject token and target).
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
        exchange_cache_size: int = 1024,
    ) -> None:
        if exchange_cache_size < 1:
            raise ValueError("exchange_cache_size must be at least 1")
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
        self._exchanged = _BoundedCache(exchange_cache_size)
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
        stale = None if force_refresh else cached
        return await self._fetch_or_stale(key, lambda: self._fetch(key), stale, endpoint, "token refresh")

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (say, a resource server refused it), so the next call fetches anew.

        A token that was already replaced is ignored: many requests failing with the same
        stale token cause one new request, not one each.
        """
        for key, issued in list(self._cache.items()):
            if hmac.compare_digest(issued.access_token.encode(), token.encode()):
                del self._cache[key]
        self._exchanged.discard(token)

    async def exchange(
        self,
        subject_token: str,
        target: ExchangeTarget = ExchangeTarget(),  # noqa: B008 (frozen, so sharing the default is safe)
        *,
        actor_token: str | None = None,
        actor_token_type: str | None = None,
        subject_expires_in: float | None = None,
        force_refresh: bool = False,
    ) -> IssuedToken:
        """A token for ``target`` in exchange for ``subject_token`` (RFC 7523 or RFC 8693).

        The answer is cached per (target, subject token, actor token) until shortly before it
        expires, and never past ``subject_expires_in`` seconds from now (how long the subject
        token stays valid, when known): a token derived from the caller's outlives no call of
        theirs. Concurrent calls with the same key share one request. The subject token is
        sent only to the token endpoint, never logged.

        Raises:
            TokenRequestRejected: the exchange was refused (``invalid_grant``, ``invalid_target``,
                ``unauthorized_client``, ...); `InvalidClient` when our credentials were.
            TokenEndpointUnreachable: connection errors, timeouts or 5xx on every attempt.
            TokenResponseError: the answer is no usable bearer token of the kind asked for.
            ConfigError: an empty subject token, or an actor token with ``jwt-bearer``.
        """
        resource = target.resource or self._credentials.resource
        endpoint = self._token_endpoint or await self.token_endpoint()
        key = (
            "exchange",
            endpoint,
            self._credentials.client_id,
            target,
            resource,
            token_digest(subject_token),
            token_digest(actor_token) if actor_token is not None else None,
        )
        cached = self._exchanged.get(key)
        if cached is not None and not force_refresh and self._clock() < cached.refresh_at:
            return cached  # the hit: a digest and a dict lookup, no form, no I/O
        form = exchange_request_form(
            self._credentials,
            subject_token,
            target,
            resource=resource,
            actor_token=actor_token,
            actor_token_type=actor_token_type,
        )

        async def fetch() -> IssuedToken:
            issued = await self._request_token(endpoint, form, resource, target)
            if subject_expires_in is not None and subject_expires_in < issued.expires_in:
                issued = dataclasses.replace(issued, expires_in=max(subject_expires_in, 0.001))
            self._exchanged.put(key, issued)
            return issued

        stale = None if force_refresh else cached
        return await self._fetch_or_stale(key, fetch, stale, endpoint, "token exchange")

    async def _fetch_or_stale(
        self,
        key: Hashable,
        fetch: Callable[[], Awaitable[IssuedToken]],
        stale: IssuedToken | None,
        endpoint: str,
        what: str,
    ) -> IssuedToken:
        """One shared request for ``key``; when the endpoint is unreachable, ``stale`` while it is unexpired."""
        try:
            return await self._flight.run(key, fetch)
        except TokenEndpointUnreachable:
            if stale is not None and self._clock() < stale.expires_at:
                log.warning(
                    "%s failed for client %s at %s; using the cached token (%.0f s left)",
                    what,
                    self._credentials.client_id,
                    endpoint,
                    stale.expires_at - self._clock(),
                )
                return stale
            raise

    @property
    def cached_exchanges(self) -> int:
        """How many exchanged tokens the cache holds (for metrics and tests)."""
        return len(self._exchanged)

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
        endpoint, _, resource = key
        issued = await self._request_token(endpoint, token_request_form(self._credentials, resource), resource)
        self._cache[key] = issued
        return issued

    async def _request_token(
        self, endpoint: str, form: dict[str, str], resource: str | None, target: ExchangeTarget | None = None
    ) -> IssuedToken:
        creds = self._credentials
        client_id = creds.client_id
        headers = {"Accept": "application/json"}
        if creds.client_secret is not None:
            headers["Authorization"] = basic_authorization(client_id, creds.client_secret)
        grant = "client_credentials" if target is None else target.grant
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
            if target is not None:
                issued = check_exchange_response(issued, reply.body, target, token_endpoint=endpoint)
        except TokenRequestRejected as exc:
            log.error(
                "%s token request for client %s at %s refused: HTTP %s %s %s",
                grant,
                client_id,
                endpoint,
                exc.status,
                exc.error or "",
                (exc.description or "")[:200],
            )
            raise
        except TokenResponseError as exc:
            log.error("%s token request for client %s at %s: %s", grant, client_id, endpoint, exc)
            raise
        log.info(
            "%s token for client %s at %s (resource %s): expires in %.0f s",
            grant,
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
