"""Async JWKS cache: one fetch however many requests miss, bounded refreshes, stale on error.

Rules (style.md §6, ias.md):
- keys live ``ttl`` seconds; a stale set keeps serving while the issuer is unreachable;
- an unknown ``kid`` refreshes at most once per ``cooldown``, so forged tokens cannot make
  us hammer the identity provider;
- with nothing cached and the issuer unreachable, callers get `KeysUnavailable` (503);
- responses are size-capped and time-bounded; ``jku``-style hints from tokens are never used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping

import httpx

from ._errors import InvalidToken, KeysUnavailable
from ._jws import PublicJWK, parse_jwks
from ._settings import check_issuer_url

__all__ = ["JWKSCache"]

log = logging.getLogger("auth.jwks")


class _FetchError(Exception):
    pass


class JWKSCache:
    """Signing keys of one issuer.

    Args:
        issuer: the trusted issuer URL; discovery is ``{issuer}/.well-known/openid-configuration``.
        client: the shared ``httpx.AsyncClient`` (its timeouts bound every fetch).
        jwks_uri: skip discovery and fetch keys here.
        headers: extra request headers (IAS: ``x-client_id``, ``x-app_tid`` from configuration).
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        issuer: str,
        client: httpx.AsyncClient,
        *,
        jwks_uri: str | None = None,
        headers: Mapping[str, str] | None = None,
        ttl: float = 600.0,
        cooldown: float = 30.0,
        failure_backoff: float = 5.0,
        max_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._client = client
        self._jwks_uri = jwks_uri
        self._headers = dict(headers or {})
        self._ttl = ttl
        self._cooldown = cooldown
        self._failure_backoff = min(failure_backoff, cooldown)
        self._max_bytes = max_bytes
        self._clock = clock
        self._keys: dict[str, PublicJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._failed = False
        self._generation = 0
        self._lock = asyncio.Lock()
        self.fetches = 0  # attempts made, for metrics and tests

    def has_kid(self, kid: str) -> bool:
        """Whether ``kid`` is in the current key set (the token cache purges entries whose key left)."""
        return kid in self._keys

    def _since(self, when: float | None) -> float:
        return math.inf if when is None else self._clock() - when

    def _should_fetch(self, kid: str) -> bool:
        if self._failed and self._since(self._attempted_at) < self._failure_backoff:
            return False  # don't hammer an issuer that just failed
        if self._fetched_at is None or self._since(self._fetched_at) >= self._ttl:
            return True
        return kid not in self._keys and self._since(self._attempted_at) >= self._cooldown

    async def get(self, kid: str) -> PublicJWK:
        """Return the key named ``kid``, fetching the key set if needed.

        Raises:
            InvalidToken: the issuer has no such key (after at most one refresh per cooldown).
            KeysUnavailable: no key set could ever be fetched and the issuer is unreachable now.
        """
        if self._should_fetch(kid):
            generation = self._generation
            async with self._lock:
                # Whoever held the lock already fetched for us: single flight.
                if generation == self._generation and self._should_fetch(kid):
                    await self._refresh()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._fetched_at is None:
            wait = max(1, math.ceil(self._failure_backoff - self._since(self._attempted_at)))
            raise KeysUnavailable(f"no signing keys for {self.issuer} yet", retry_after=wait)
        raise InvalidToken(f"unknown kid {kid!r} for issuer {self.issuer}")

    async def _refresh(self) -> None:
        self.fetches += 1
        self._attempted_at = self._clock()
        self._generation += 1
        try:
            uri = self._jwks_uri or await self._discover()
            keys = parse_jwks(await self._get_json(uri))
            if not keys:
                raise _FetchError("key set has no usable signing key")
        except (_FetchError, ValueError) as exc:
            self._failed = True
            stale = "serving the stale key set" if self._keys else "no keys cached"
            log.warning("JWKS fetch for %s failed (%s); %s", self.issuer, exc, stale)
            return
        dropped = set(self._keys) - set(keys)
        self._keys = keys
        self._fetched_at = self._attempted_at
        self._failed = False
        log.info("JWKS for %s: %d keys%s", self.issuer, len(keys), f", removed {sorted(dropped)}" if dropped else "")

    async def _discover(self) -> str:
        doc = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
            raise _FetchError("discovery document names another issuer")  # OIDC Discovery §4.3
        uri = doc.get("jwks_uri")
        try:
            check_issuer_url(uri if isinstance(uri, str) else "", "jwks_uri")
        except ValueError as exc:
            raise _FetchError(f"bad jwks_uri in discovery: {exc}") from exc
        self._jwks_uri = uri  # stable for the life of the process
        return uri

    async def _get_json(self, url: str) -> object:
        try:
            async with self._client.stream("GET", url, headers=self._headers) as response:
                if response.status_code != 200:
                    raise _FetchError(f"GET {url} answered {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise _FetchError(f"GET {url} is larger than {self._max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise _FetchError(f"GET {url}: {type(exc).__name__}") from exc
        try:
            return json.loads(bytes(body))
        except ValueError as exc:
            raise _FetchError(f"GET {url} is not JSON") from exc
