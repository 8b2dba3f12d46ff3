"""The token verifier: parse, find the issuer, fetch its key, verify, check claims, cache.

One verification path for every profile. The verified-token cache means a client that
reuses its token (client-credentials tokens live for an hour) pays for RSA once, while
time checks run again on every hit and an entry dies with its signing key.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import httpx

from ._claims import check_claims, check_times, match_issuer
from ._errors import InvalidToken, KeysUnavailable
from ._jwks import JWKSCache
from ._jws import HeaderMemo, parse_jws, verify_signature
from ._settings import AuthSettings, IssuerConfig
from ._token import VerifiedToken

__all__ = ["TokenVerifier", "JWTVerifier"]

log = logging.getLogger("auth.verifier")

_MAX_KEY_SETS = 64  # key caches kept (per issuer and IAS header combination), least recent dropped
_NEW_KEY_SETS_PER_COOLDOWN = 8  # ...and at most this many new ones per key cool-down
_HEADER_VALUE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # client ids and tenant ids; nothing that could split a header


def ias_key_headers(config: IssuerConfig, claims: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The ``x-client_id``, ``x-app_tid``, ``x-azp`` headers of an IAS key request (pure).

    ``x-client_id`` is ours (configuration); tenant and consumer come from the token when
    well-formed, the tenant falling back to the binding's ``app_tid``.
    """
    tid = claims.get("app_tid", claims.get("zone_uuid"))
    azp = claims.get("azp")
    values = (
        ("x-client_id", config.client_id),
        ("x-app_tid", tid if isinstance(tid, str) and _HEADER_VALUE.fullmatch(tid) else config.app_tid),
        ("x-azp", azp if isinstance(azp, str) and _HEADER_VALUE.fullmatch(azp) else None),
    )
    return tuple((name, value) for name, value in values if value)


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
        self._keys: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], JWKSCache] = OrderedDict()
        self._cache: OrderedDict[bytes, tuple[VerifiedToken, JWKSCache, str]] = OrderedDict()
        self._births: deque[float] = deque()
        self._headers: HeaderMemo = {}  # decoded JOSE headers (parse_jws), bounded there
        self.cache_hits = 0

    async def aclose(self) -> None:
        """Close the HTTP client if this verifier created it."""
        if self._owns_client:
            await self._client.aclose()

    def key_cache(self, config: IssuerConfig, issuer: str, claims: Mapping[str, Any] | None = None) -> JWKSCache:
        """The key cache for ``issuer`` and, for IAS, the request headers derived from the token.

        IAS answers key requests per ``x-app_tid``/``x-client_id``/``x-azp`` (ias.md), so SAP's
        libraries keep one key set per combination. So do we, but the issuer is already matched
        against the trusted list, header values must be well-formed, a combination is only
        fetched for a ``kid`` no key set of the issuer holds, the number of key sets is bounded,
        and new ones are admitted at a bounded rate (forged values cost no unbounded traffic).
        """
        headers = ias_key_headers(config, claims or {}) if config.profile == "ias" else ()
        key = (issuer, headers)
        cache = self._keys.get(key)
        if cache is not None:
            self._keys.move_to_end(key)
            return cache
        if self._keys:
            self._admit_key_set()
        s = self._settings
        cache = JWKSCache(
            issuer,
            self._client,
            jwks_uri=config.jwks_uri if issuer == config.issuer else None,
            headers=dict(headers),
            ttl=s.jwks_ttl_s,
            cooldown=s.jwks_refresh_cooldown_s,
            max_bytes=s.jwks_max_bytes,
            clock=self._monotonic,
        )
        self._keys[key] = cache
        if len(self._keys) > _MAX_KEY_SETS:
            self._keys.popitem(last=False)
        return cache

    def _holder_of(self, issuer: str, kid: str) -> JWKSCache | None:
        """A key set of ``issuer`` that already holds ``kid``.

        An issuer signs with the same keys whatever the consumer, so a token from a new consumer
        with a known ``kid`` needs no fetch of its own; only an unknown ``kid`` opens a new key set.
        """
        for (holder_issuer, _), cache in reversed(self._keys.items()):
            if holder_issuer == issuer and cache.has_kid(kid):
                return cache
        return None

    def _admit_key_set(self) -> None:
        # Issuer (multi-tenant) and header values come from a token not yet verified: forged
        # tokens with ever new values must not turn into a stream of outbound key requests.
        now = self._monotonic()
        window = self._settings.jwks_refresh_cooldown_s
        while self._births and now - self._births[0] >= window:
            self._births.popleft()
        if len(self._births) >= _NEW_KEY_SETS_PER_COOLDOWN:
            raise KeysUnavailable("too many new key sets at once", retry_after=max(1, math.ceil(window)))
        self._births.append(now)

    async def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` and return its principal.

        Raises:
            InvalidToken: for every defect of the token.
            KeysUnavailable: the issuer's keys cannot be had (503, not the client's fault), or
                too many new key sets (tenants, IAS header combinations) were asked for at once.
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

        jws = parse_jws(token, algorithms=s.algorithms, max_bytes=s.max_token_bytes, header_memo=self._headers)
        config, issuer = match_issuer(jws.claims, s.issuers)
        keys = self._holder_of(issuer, jws.kid) or self.key_cache(config, issuer, jws.claims)
        key = await keys.get(jws.kid)
        verify_signature(jws, key)
        verified = check_claims(jws.claims, config, issuer, now=now, leeway=s.leeway_s, implies=s.implies)
        if s.token_cache_size > 0:
            self._cache[digest] = (verified, keys, jws.kid)
            if len(self._cache) > s.token_cache_size:
                self._cache.popitem(last=False)
        return verified
