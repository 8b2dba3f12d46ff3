"""The token verifier: parse, find the issuer, get its key, verify, check claims, ask IAS, cache.

One verification path for every profile. What it remembers, and why an unauthenticated caller
cannot turn it against a valid one, is written down in SECURITY.md:

- key material comes only from each issuer's own key request (configuration headers), never
  from a key set a token asked for; a verdict is bound to the material (a SHA-256 thumbprint)
  and dies as soon as a refresh of the issuer's keys no longer holds it;
- IAS's answer for a (tenant, consumer) combination, accept or refuse, is asked only for a
  token whose signature and claims already hold, and is remembered for a bounded time, so a
  verdict never depends on what was verified before;
- issuers named by tokens (multi-tenant labels) that never produced a valid token live in
  their own small pool, and discovering one comes out of the newcomers' budget (`auth._newcomers`):
  charged to the requesting source by outcome, a label that does not exist remembered and cheap,
  so a flood of forged labels can neither evict or starve a tenant already seen nor keep a
  first-time tenant out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import httpx

from ._claims import check_claims_window, check_times, match_issuer
from ._context import current_client
from ._errors import AuthError, InvalidToken, KeysUnavailable, UntrustedIssuer
from ._http import key_fetch_client
from ._jwks import FetchError, FetchRefused, JWKSCache, fetch_json, usable_keys
from ._jws import HeaderMemo, parse_jws, verify_signature
from ._newcomers import CHEAP, NewcomerBudget, NewcomerLimits, Outcome, Receipt, discovery_outcome, source_key
from ._observe import NO_OBSERVER, Observer
from ._sdk import verify_token as _sdk_verify_token
from ._settings import AuthSettings, IssuerConfig
from ._token import VerifiedToken

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken

__all__ = ["TokenVerifier", "JWTVerifier", "ias_key_headers", "consumer_decision"]

log = logging.getLogger("auth.verifier")

_MAX_TENANTS = 1024  # multi-tenant issuers that produced a valid token, least recently used dropped
_MAX_NEWCOMERS = 64  # issuers named only by tokens not (yet) verified whose keys were found: their own pool
_MAX_CONSUMERS = 4096  # remembered IAS answers per (issuer, tenant, consumer)
_HEADER_VALUE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # client ids and tenant ids; nothing that could split a header

Headers = tuple[tuple[str, str], ...]
Decision = Literal["accept", "refuse", "unavailable", "ask"]


def ias_key_headers(config: IssuerConfig, claims: Mapping[str, Any]) -> Headers:
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


@dataclass(slots=True)
class _Consumer:
    """What IAS last said about one (issuer, tenant, consumer) combination."""

    headers: Headers
    outcome: Literal["none", "ok", "refused", "failed"] = "none"
    thumbprints: frozenset[bytes] = frozenset()  # material IAS served this combination
    answered_at: float = -math.inf  # last "ok"
    attempted_at: float = -math.inf
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def consumer_decision(
    outcome: str,
    served: bool,
    *,
    since_answer: float,
    since_attempt: float,
    ttl: float,
    min_refresh: float,
    cooldown: float,
    max_stale: float,
) -> Decision:
    """Whether IAS's remembered answer accepts a token, refuses it, or must be asked again (pure).

    ``served``: the token's key material was in IAS's last answer for the combination.
    A refusal is remembered for ``cooldown``; an acceptance for ``ttl`` (``max_stale`` more
    while IAS cannot be reached); a failed question is asked again at most once per ``cooldown``;
    an answer without the token's key at most once per ``min_refresh``.
    """
    if outcome == "refused":
        return "refuse" if since_attempt < cooldown else "ask"
    if served and since_answer < ttl:
        return "accept"
    if outcome == "failed" and since_attempt < cooldown:
        return "accept" if served and since_answer < ttl + max_stale else "unavailable"
    if outcome == "ok" and not served and since_attempt < min_refresh:
        return "refuse"
    return "ask"


@runtime_checkable
class TokenVerifier(Protocol):
    """Anything that turns a bearer token into a `VerifiedToken` or raises an `AuthError`."""

    async def verify(self, token: str) -> VerifiedToken: ...


# A cached verdict: the principal, the key set and key material it was verified with, the
# wall-clock window its times allow, and the monotonic time until which keys and IAS's answer
# may be taken as they were.
_Hit = tuple[VerifiedToken, JWKSCache, bytes, float, float, float]


class JWTVerifier:
    """Verifies JWT access tokens from the trusted issuers in ``settings``.

    Args:
        settings: the trusted issuers and policy.
        client: an ``httpx.AsyncClient`` for discovery and JWKS; one with the configured
            timeout is created (and closed by `aclose`) when omitted. Every fetch is bounded
            by ``settings.http_timeout_s`` in total, whichever client is used.
        clock: wall-clock seconds for ``exp``/``nbf``/``iat``; injectable for tests.
        monotonic: monotonic seconds for key freshness, refresh intervals and budgets.
        observer: told of key fetches and token-cache hits and misses (`auth._observe`); none by default.
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self._settings = settings
        self._observer = observer or NO_OBSERVER
        self._owns_client = client is None
        self._client = client or key_fetch_client(settings)  # configured CAs; logs why TLS failed
        self._clock = clock
        self._monotonic = monotonic
        self._issuers: dict[str, JWKSCache] = {}  # configured issuers: never evicted
        for config in settings.issuers:
            self._issuers.setdefault(config.issuer, self._new_key_set(config, config.issuer, opened_by_token=False))
        self._tenants: OrderedDict[str, JWKSCache] = OrderedDict()  # token-named, proven by a valid token
        self._newcomers: OrderedDict[str, JWKSCache] = OrderedDict()  # token-named, keys found, not proven
        # Discovering token-named issuers: slots and charges per source, failures remembered.
        self._budget = NewcomerBudget(
            NewcomerLimits(window=settings.jwks_refresh_cooldown_s, max_wait=settings.http_timeout_s),
            clock=monotonic,
        )
        self._discovering: dict[str, tuple[JWKSCache, asyncio.Event]] = {}  # at most one fetch per issuer
        self._receipts: dict[str, Receipt] = {}  # charges for newcomers, paid back by their first valid token
        self.discoveries = 0
        self._consumers: OrderedDict[tuple[str, Headers], _Consumer] = OrderedDict()
        # Keyed by the token itself: exact, and a lookup hashes the string once (no digest to compute).
        # Only tokens that verified enter, at most token_cache_size of them, each at most max_token_bytes.
        self._cache: OrderedDict[str, _Hit] = OrderedDict()
        self._headers: HeaderMemo = {}  # decoded JOSE headers (parse_jws), bounded there
        self.cache_hits = 0
        self.consumer_fetches = 0

    async def aclose(self) -> None:
        """Close the HTTP client if this verifier created it."""
        if self._owns_client:
            await self._client.aclose()

    def cache_stats(self) -> dict[str, int]:
        """Sizes of what the verifier remembers, and outbound requests made (for tests and figures)."""
        sets = [*self._issuers.values(), *self._tenants.values(), *self._newcomers.values()]
        return {
            "key_sets": len(sets),
            "tenants": len(self._tenants),
            "newcomers": len(self._newcomers),
            "consumers": len(self._consumers),
            "tokens": len(self._cache),
            "key_fetches": sum(k.fetches for k in sets),
            "consumer_fetches": self.consumer_fetches,
            "discoveries": self.discoveries,
            **self._budget.stats(),
        }

    def _new_key_set(self, config: IssuerConfig, issuer: str, *, opened_by_token: bool) -> JWKSCache:
        s = self._settings
        headers: dict[str, str] = {}
        if config.profile == "ias" and config.client_id:
            headers["x-client_id"] = config.client_id
            if config.app_tid and not opened_by_token:
                headers["x-app_tid"] = config.app_tid  # the binding's tenant, for the binding's issuer only
        return JWKSCache(
            issuer,
            self._client,
            jwks_uri=config.jwks_uri if issuer == config.issuer else None,
            headers=headers,
            ttl=s.jwks_ttl_s,
            min_refresh=s.jwks_min_refresh_s,
            cooldown=s.jwks_refresh_cooldown_s,
            max_stale=s.jwks_max_stale_s,
            deadline=s.http_timeout_s,
            max_bytes=s.jwks_max_bytes,
            algorithms=s.algorithms,
            opened_by_token=opened_by_token,
            clock=self._monotonic,
            observer=self._observer,
        )

    def _known(self, issuer: str) -> JWKSCache | None:
        """The key set of a token-named issuer seen before (recency refreshed on every use), if any."""
        for pool in (self._tenants, self._newcomers):
            keys = pool.get(issuer)
            if keys is not None:
                pool.move_to_end(issuer)
                return keys
        return None

    async def _discover(self, config: IssuerConfig, issuer: str) -> JWKSCache:
        """The key set of a token-named issuer never seen, discovered out of the newcomers' budget.

        One fetch per issuer, however many requests name it; the requesting source
        (`auth._context.current_client`) takes a slot and pays by outcome (`auth._newcomers`).

        Raises:
            InvalidToken: no such tenant (the name does not resolve, or the issuer answered 4xx),
                found now or remembered from the last cool-down.
            KeysUnavailable: the discovery failed otherwise (now or within the last cool-down), or
                the source's charges are spent, or no discovery slot came in time.
        """
        pending = self._discovering.get(issuer)
        if pending is None:
            self._check_remembered(issuer)
            source = source_key(current_client())
            async with self._budget.slot(source):
                known = self._known(issuer)  # discovered while we waited for the slot?
                if known is not None:
                    return known
                pending = self._discovering.get(issuer)
                if pending is None:
                    self._check_remembered(issuer)
                    return await self._first_discovery(config, issuer, source)
        keys, done = pending
        await done.wait()  # someone else's discovery of the same issuer: share its outcome
        if keys.has_keys:
            return keys
        raise self._refusal(issuer, discovery_outcome(keys.last_error), keys.retry_after())

    async def _first_discovery(self, config: IssuerConfig, issuer: str, source: str) -> JWKSCache:
        keys = self._new_key_set(config, issuer, opened_by_token=True)
        done = asyncio.Event()
        self._discovering[issuer] = (keys, done)
        self.discoveries += 1
        try:
            await keys.load()
        finally:
            del self._discovering[issuer]
            done.set()
        if keys.has_keys:  # a real tenant: charged until one of its tokens verifies (`_vouch`)
            self._newcomers[issuer] = keys
            if len(self._newcomers) > _MAX_NEWCOMERS:
                dropped, _ = self._newcomers.popitem(last=False)  # only ever evicts another unproven issuer
                self._receipts.pop(dropped, None)  # its charge stands
            self._receipts[issuer] = self._budget.charge(source)
            return keys
        outcome = discovery_outcome(keys.last_error)
        self._budget.remember(issuer, outcome)
        if outcome not in CHEAP:
            self._budget.charge(source)  # slow or garbage: the source pays
        raise self._refusal(issuer, outcome, keys.retry_after())

    def _check_remembered(self, issuer: str) -> None:
        remembered = self._budget.remembered(issuer)
        if remembered is not None:
            raise self._refusal(issuer, *remembered)

    @staticmethod
    def _refusal(issuer: str, outcome: Outcome, retry_after: int) -> AuthError:
        if outcome == "absent":
            return UntrustedIssuer(f"no such tenant: {issuer}")
        if outcome == "unreachable":
            return KeysUnavailable(f"{issuer} refused the connection", retry_after=retry_after)
        return KeysUnavailable(f"no signing keys for {issuer}", retry_after=retry_after)

    def _vouch(self, keys: JWKSCache) -> None:
        """A valid token came from ``keys``: a newcomer joins the tenants (whose pool forgers cannot touch)."""
        if self._newcomers.pop(keys.issuer, None) is not None:
            receipt = self._receipts.pop(keys.issuer, None)
            if receipt is not None:
                self._budget.refund(receipt)  # a real tenant's first token: its discovery costs nothing
            self._tenants[keys.issuer] = keys
            if len(self._tenants) > _MAX_TENANTS:
                self._tenants.popitem(last=False)

    async def _check_consumer(self, config: IssuerConfig, keys: JWKSCache, claims: Mapping[str, Any],
                              thumbprint: bytes) -> float:
        """Ask IAS (once per bounded time) whether it serves this token's key to its tenant and consumer.

        Returns the monotonic time until which the answer may be reused.

        Raises:
            InvalidToken: IAS refuses the combination or does not serve this key to it.
            KeysUnavailable: IAS cannot be asked now and has never answered for the combination.
        """
        headers = ias_key_headers(config, claims)
        if dict(headers) == keys.headers:
            return math.inf  # the issuer's own key request already is this combination's answer
        slot = (keys.issuer, headers)
        consumer = self._consumers.get(slot)
        if consumer is None:
            consumer = self._consumers[slot] = _Consumer(headers)
            if len(self._consumers) > _MAX_CONSUMERS:
                self._consumers.popitem(last=False)
        else:
            self._consumers.move_to_end(slot)
        decision = self._consumer_decision(consumer, thumbprint)
        s = self._settings
        if decision == "ask" and consumer.lock.locked() and self._in_hand(consumer, thumbprint):
            return -math.inf  # someone is asking already: served from the answer in hand, not held
        if decision == "ask":
            async with consumer.lock:
                decision = self._consumer_decision(consumer, thumbprint)
                if decision == "ask":
                    await self._ask(keys, consumer)
                    decision = self._consumer_decision(consumer, thumbprint)
        if decision == "accept":
            if consumer.outcome == "failed":  # stale: look again as soon as IAS may be asked again
                return min(consumer.attempted_at + s.jwks_refresh_cooldown_s,
                           consumer.answered_at + s.jwks_ttl_s + s.jwks_max_stale_s)
            return consumer.answered_at + s.jwks_ttl_s
        if decision == "refuse":
            raise UntrustedIssuer(f"{keys.issuer} does not serve this key to the token's tenant and consumer")
        wait = max(1, math.ceil(consumer.attempted_at + s.jwks_refresh_cooldown_s - self._monotonic()))
        raise KeysUnavailable(f"{keys.issuer} cannot be asked about the token's tenant", retry_after=wait)

    def _in_hand(self, consumer: _Consumer, thumbprint: bytes) -> bool:
        s = self._settings
        age = self._monotonic() - consumer.answered_at
        fresh_enough = age < s.jwks_ttl_s + s.jwks_max_stale_s
        return consumer.outcome == "ok" and thumbprint in consumer.thumbprints and fresh_enough

    def _consumer_decision(self, consumer: _Consumer, thumbprint: bytes) -> Decision:
        s = self._settings
        now = self._monotonic()
        return consumer_decision(
            consumer.outcome,
            thumbprint in consumer.thumbprints,
            since_answer=now - consumer.answered_at,
            since_attempt=now - consumer.attempted_at,
            ttl=s.jwks_ttl_s,
            min_refresh=s.jwks_min_refresh_s,
            cooldown=s.jwks_refresh_cooldown_s,
            max_stale=s.jwks_max_stale_s,
        )

    async def _ask(self, keys: JWKSCache, consumer: _Consumer) -> None:
        s = self._settings
        self.consumer_fetches += 1
        consumer.attempted_at = self._monotonic()
        uri = keys.jwks_uri
        assert uri is not None  # we hold a key of this issuer, so its key set URL is known
        try:
            with self._observer.fetching_keys(keys.issuer, configured=not keys.opened_by_token):
                async with asyncio.timeout(s.http_timeout_s):
                    document = await fetch_json(self._client, uri, dict(consumer.headers), s.jwks_max_bytes)
                served = usable_keys(document, s.algorithms)
        except FetchRefused as exc:
            consumer.outcome = "refused"
            log.info("key request for a tenant/consumer of %s refused (%s)", keys.issuer, exc)
            return
        except (FetchError, TimeoutError) as exc:
            consumer.outcome = "failed"
            log.warning("key request for a tenant/consumer of %s failed (%s)", keys.issuer, exc or "deadline")
            return
        consumer.outcome = "ok"
        consumer.thumbprints = frozenset(thumb for _, thumb in served.values())
        consumer.answered_at = consumer.attempted_at

    async def verify_token(self, token: str) -> AccessToken | None:
        """The mcp SDK's ``TokenVerifier`` protocol, so ``MCPServer(token_verifier=JWTVerifier(...))`` works.

        Returns None for every refusal (the SDK then answers 401, even for our 503); see `auth._sdk`.
        The answer carries the `VerifiedToken`, so ``current_token()`` and ``@requires`` work in
        the SDK's tools without verifying again.
        """
        s = self._settings
        return await _sdk_verify_token(
            self, token, resource=s.resource_url, cert_binding=s.cert_binding, aliases=s.permission_aliases
        )

    async def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` and return its principal.

        Raises:
            InvalidToken: for every defect of the token, an unknown or retired key, or IAS
                refusing the token's tenant and consumer.
            KeysUnavailable: the issuer's keys cannot be had (503, not the client's fault), or
                too many new token-named issuers were asked for at once.
        """
        cache = self._cache
        hit = cache.get(token)
        if hit is not None:
            now = self._clock()
            verified, keys, thumbprint, not_before, not_after, until = hit
            # A hit costs the lookup and these checks: times, key material still served, answers still fresh.
            if not_before <= now < not_after and thumbprint in keys.thumbprints and self._monotonic() < until:
                cache.move_to_end(token)
                self.cache_hits += 1
                self._observer.token_cache(hit=True)
                return verified
            del cache[token]
            if not not_before <= now < not_after:
                check_times(verified.claims, now=now, leeway=self._settings.leeway_s)  # raises the reason
            # otherwise: key retired, or keys/IAS answer due for a look: verify afresh

        self._observer.token_cache(hit=False)
        s = self._settings
        jws = parse_jws(token, algorithms=s.algorithms, max_bytes=s.max_token_bytes, header_memo=self._headers)
        claims = jws.claims
        config, issuer = match_issuer(claims, s.issuers)
        keys = self._issuers.get(issuer) or self._known(issuer) or await self._discover(config, issuer)
        kid = jws.kid
        key, thumbprint = keys.in_hand(kid) or await keys.get_with_thumbprint(kid)
        try:
            verify_signature(jws, key)
        except InvalidToken:
            if not await keys.replaced(kid, thumbprint):  # new material behind the same kid?
                raise
            key, thumbprint = await keys.get_with_thumbprint(kid)
            verify_signature(jws, key)
        verified, not_before, not_after = check_claims_window(
            claims, config, issuer, now=self._clock(), leeway=s.leeway_s, implies=s.implies
        )
        if self._newcomers:  # only a token-named issuer not yet proven can join the tenants
            self._vouch(keys)
        until = keys.reuse_until
        if config.profile == "ias" and config.client_id:
            until = min(until, await self._check_consumer(config, keys, claims, thumbprint))
        size = s.token_cache_size
        if size > 0:
            cache[token] = (verified, keys, thumbprint, not_before, not_after, until)
            if len(cache) > size:
                cache.popitem(last=False)
        return verified
