"""The token verifier: parse, find the issuer, fetch its key, verify, check claims, cache.

One verification path for every profile. The verified-token cache means a client that
reuses its token (client-credentials tokens live for an hour) pays for RSA once, while
time checks run again on every hit and an entry dies with its signing key.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import httpx

from ._claims import check_claims, check_times, match_issuer
from ._errors import InvalidToken, KeysUnavailable
from ._jwks import JWKSCache
from ._jws import parse_jws, verify_signature
from ._settings import AuthSettings, IssuerConfig
from ._token import VerifiedToken

__all__ = ["TokenVerifier", "JWTVerifier"]

log = logging.getLogger("auth.verifier")

_MAX_TENANT_ISSUERS = 64  # multi-tenant IAS: key caches kept for this many tenants at most
_NEW_TENANTS_PER_COOLDOWN = 8  # ...and at most this many new ones per key cool-down


@runtime_checkable
class TokenVerifier(Protocol):
    """Anything that turns a bearer token into a `VerifiedToken` or raises an `AuthError`."""

    async def verify(self, token: str) -> VerifiedToken: ...


class JWTVerifier:
    """Verifies JWT access tokens from the trusted issuers in ``settings``.

    Args:
        settings: the trusted issuers and policy.
        client: an ``httpx.AsyncClient`` for discovery and JWKS; one with the configured
            timeout is created (and closed by `aclose`) when omitted.
        clock: wall-clock seconds for ``exp``/``nbf``/``iat``; injectable for tests.
        monotonic: monotonic seconds for the key cache's TTL and cool-downs.
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.http_timeout_s), follow_redirects=False, trust_env=False
        )
        self._clock = clock
        self._monotonic = monotonic
        self._keys: OrderedDict[str, JWKSCache] = OrderedDict()
        self._cache: OrderedDict[bytes, tuple[VerifiedToken, JWKSCache, str]] = OrderedDict()
        self._tenant_births: deque[float] = deque()
        self.cache_hits = 0

    async def aclose(self) -> None:
        """Close the HTTP client if this verifier created it."""
        if self._owns_client:
            await self._client.aclose()

    def key_cache(self, config: IssuerConfig, issuer: str) -> JWKSCache:
        """The key cache for ``issuer`` (one per issuer; multi-tenant ones bounded in number)."""
        cache = self._keys.get(issuer)
        if cache is None:
            if issuer != config.issuer:
                self._admit_tenant()
            headers = {}
            if config.profile == "ias":  # as SAP's libraries do, but from configuration only
                headers = {
                    k: v for k, v in (("x-client_id", config.client_id), ("x-app_tid", config.app_tid)) if v
                }
            s = self._settings
            cache = JWKSCache(
                issuer,
                self._client,
                jwks_uri=config.jwks_uri if issuer == config.issuer else None,
                headers=headers,
                ttl=s.jwks_ttl_s,
                cooldown=s.jwks_refresh_cooldown_s,
                max_bytes=s.jwks_max_bytes,
                clock=self._monotonic,
            )
            self._keys[issuer] = cache
            configured = {i.issuer for i in s.issuers}
            tenants = [k for k in self._keys if k not in configured]
            if len(tenants) > _MAX_TENANT_ISSUERS:
                del self._keys[tenants[0]]
        else:
            self._keys.move_to_end(issuer)
        return cache

    def _admit_tenant(self) -> None:
        # The tenant issuer comes from a token not yet verified: forged tokens naming ever new
        # labels under a trusted domain must not turn into a stream of discovery requests.
        now = self._monotonic()
        window = self._settings.jwks_refresh_cooldown_s
        while self._tenant_births and now - self._tenant_births[0] >= window:
            self._tenant_births.popleft()
        if len(self._tenant_births) >= _NEW_TENANTS_PER_COOLDOWN:
            raise KeysUnavailable("too many new tenant issuers at once", retry_after=max(1, math.ceil(window)))
        self._tenant_births.append(now)

    async def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` and return its principal.

        Raises:
            InvalidToken: for every defect of the token.
            KeysUnavailable: the issuer's keys cannot be had (503, not the client's fault), or
                too many unknown tenants of a multi-tenant issuer arrived at once.
        """
        s = self._settings
        now = self._clock()
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            verified, keys, kid = hit
            if keys.has_kid(kid):
                try:
                    check_times(verified.claims, now=now, leeway=s.leeway_s)
                except InvalidToken:
                    del self._cache[digest]
                    raise
                self._cache.move_to_end(digest)
                self.cache_hits += 1
                return verified
            del self._cache[digest]  # its key left the issuer's key set: verify afresh

        jws = parse_jws(token, algorithms=s.algorithms, max_bytes=s.max_token_bytes)
        config, issuer = match_issuer(jws.claims, s.issuers)
        keys = self.key_cache(config, issuer)
        key = await keys.get(jws.kid)
        verify_signature(jws, key)
        verified = check_claims(jws.claims, config, issuer, now=now, leeway=s.leeway_s, implies=s.implies)
        if s.token_cache_size > 0:
            self._cache[digest] = (verified, keys, jws.kid)
            if len(self._cache) > s.token_cache_size:
                self._cache.popitem(last=False)
        return verified
