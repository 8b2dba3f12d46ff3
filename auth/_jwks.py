"""Async key cache of one issuer: single flight, bounded refreshes, total deadline, stale on error.

Rules (style.md §6, SECURITY.md):
- keys live ``ttl`` seconds; a stale set keeps serving for ``max_stale`` more seconds while
  the issuer cannot be reached or answers garbage, then its keys (and every verdict bound to
  them) stop counting;
- an unknown ``kid`` refreshes the set at most once per ``min_refresh`` (rotation passes
  within seconds, a flood of forged ``kid`` values costs one fetch per interval);
- a failed fetch is retried at most once per ``cooldown``;
- every fetch (discovery and key set) has one total ``deadline``, however the server drips;
- with nothing usable and the issuer unreachable, callers get `KeysUnavailable` (503);
- every key is known by its material (SHA-256 of its SubjectPublicKeyInfo), not only its
  name, so a key replaced behind the same ``kid`` is a different key;
- a failure says what kind it is (`FetchRefused`, `HostNotFound`, `ConnectionRefused`, other
  `FetchError`), so a token-named issuer that does not exist costs its caller little (`auth._newcomers`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import httpx
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._errors import BadSignature, KeysUnavailable, UntrustedIssuer
from ._jws import SUPPORTED_ALGORITHMS, PublicJWK, parse_jwks
from ._observe import NO_OBSERVER, Observer
from ._settings import check_issuer_url

__all__ = [
    "JWKSCache",
    "FetchError",
    "FetchRefused",
    "HostNotFound",
    "ConnectionRefused",
    "transport_failure",
    "fetch_json",
    "key_thumbprint",
]

log = logging.getLogger("auth.jwks")


class FetchError(Exception):
    """A key request failed for a reason of the network or the server (retry later)."""


class FetchRefused(FetchError):
    """The server answered a definite no (HTTP 4xx): IAS does so for an ``x-app_tid`` it does not know."""


class HostNotFound(FetchError):
    """The host name does not exist (the resolver's definite no, NXDOMAIN; not a temporary failure)."""


class ConnectionRefused(FetchError):
    """The host exists but nothing listens: every connection attempt was refused."""


# getaddrinfo's "no such name" answers; EAI_AGAIN (try again) and the rest are other failures.
_NO_SUCH_NAME = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


def transport_failure(exc: BaseException) -> type[FetchError]:
    """`HostNotFound`, `ConnectionRefused` or plain `FetchError` for a failed request, by its causes (pure).

    httpx wraps what the resolver or the socket said (``socket.gaierror``, ``ConnectionRefusedError``,
    several of them in an exception group when every address of a host refused); the chain is walked
    a bounded number of steps.
    """
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            break
        if isinstance(current, socket.gaierror):
            return HostNotFound if current.errno in _NO_SUCH_NAME else FetchError
        if isinstance(current, ConnectionRefusedError):
            return ConnectionRefused
        if isinstance(current, BaseExceptionGroup):
            refused = all(isinstance(e, ConnectionRefusedError) for e in current.exceptions)
            return ConnectionRefused if refused and current.exceptions else FetchError
        current = current.__cause__ or current.__context__
    return FetchError


def key_thumbprint(key: PublicJWK) -> bytes:
    """SHA-256 of the key's DER SubjectPublicKeyInfo: what a verdict is bound to (not the ``kid``)."""
    return hashlib.sha256(key.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()


async def fetch_json(client: httpx.AsyncClient, url: str, headers: Mapping[str, str], max_bytes: int) -> object:
    """GET ``url`` and parse its JSON body, refusing bodies over ``max_bytes``.

    The caller bounds the total time (``asyncio.timeout``); the client's timeouts bound each read.

    Raises:
        FetchRefused: the server answered 4xx.
        HostNotFound: the host name does not exist.
        ConnectionRefused: nothing listens at the host.
        FetchError: any other status, a transport error, a body too large or not JSON.
    """
    try:
        async with client.stream("GET", url, headers=dict(headers)) as response:
            if 400 <= response.status_code < 500:
                raise FetchRefused(f"GET {url} answered {response.status_code}")
            if response.status_code != 200:
                raise FetchError(f"GET {url} answered {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"GET {url} is larger than {max_bytes} bytes")
    except httpx.HTTPError as exc:
        raise transport_failure(exc)(f"GET {url}: {type(exc).__name__}") from exc
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as exc:
        raise FetchError(f"GET {url} is not JSON") from exc


def usable_keys(document: object, algorithms: Iterable[str]) -> dict[str, tuple[PublicJWK, bytes]]:
    """The keys of a JWKS document that can verify one of ``algorithms``, with their thumbprints.

    Raises:
        FetchError: not a JWKS, or no key in it fits (keys in hand are then kept).
    """
    try:
        parsed = parse_jwks(document)
    except ValueError as exc:
        raise FetchError(str(exc)) from exc
    algs = tuple(algorithms)
    keys = {kid: (k, key_thumbprint(k)) for kid, k in parsed.items() if any(k.fits(a) for a in algs)}
    if not keys:
        raise FetchError("key set has no usable signing key")
    return keys


class JWKSCache:
    """Signing keys of one issuer, known by ``kid`` and by material.

    Args:
        issuer: the trusted issuer URL; discovery is ``{issuer}/.well-known/openid-configuration``.
        client: the shared ``httpx.AsyncClient``.
        jwks_uri: skip discovery and fetch keys here.
        headers: request headers (IAS: our ``x-client_id`` and the binding's ``x-app_tid``).
        ttl: seconds a fetched set is fresh.
        min_refresh: at most one refresh per this many seconds for an unknown ``kid``.
        cooldown: at most one attempt per this many seconds after a failed one.
        max_stale: seconds past ``ttl`` a set keeps serving while refreshes fail.
        deadline: total seconds for one fetch, discovery included.
        algorithms: keys that fit none of these are ignored.
        opened_by_token: the issuer came from a token (a multi-tenant label): a 4xx answer then
            means "no such tenant" (401), not our outage (503).
        clock: monotonic seconds; injectable for tests.
        observer: told of each fetch and its result (`auth._observe`); none by default.
    """

    def __init__(
        self,
        issuer: str,
        client: httpx.AsyncClient,
        *,
        jwks_uri: str | None = None,
        headers: Mapping[str, str] | None = None,
        ttl: float = 600.0,
        min_refresh: float = 5.0,
        cooldown: float = 30.0,
        max_stale: float = 3600.0,
        deadline: float = 5.0,
        max_bytes: int = 256 * 1024,
        algorithms: Iterable[str] = SUPPORTED_ALGORITHMS,
        opened_by_token: bool = False,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self.issuer = issuer
        self._observer = observer or NO_OBSERVER
        self.headers: Mapping[str, str] = MappingProxyType(dict(headers or {}))
        self._client = client
        self._jwks_uri = jwks_uri
        self._ttl = ttl
        self._min_refresh = min(min_refresh, ttl)
        self._cooldown = cooldown
        self._max_stale = max_stale
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._algorithms = frozenset(algorithms)
        self._opened_by_token = opened_by_token
        self._clock = clock
        self._keys: dict[str, tuple[PublicJWK, bytes]] = {}
        self.thumbprints: frozenset[bytes] = frozenset()
        """Material of the keys in the current set (a cached verdict lives while its key is here)."""
        self.serve_until = -math.inf
        """Monotonic time after which this set no longer counts, unless refreshed (``ttl + max_stale``)."""
        self._fetched_at: float | None = None  # last successful fetch
        self._fresh_until = -math.inf  # before this, the set is served as it is: no refresh can be due
        self.reuse_until = -math.inf
        """`recheck_at`, kept current by every fetch (the only thing that changes it)."""
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._failed = False
        self.refused = False  # the last attempt got a definite no (4xx)
        self.last_error: BaseException | None = None  # why the last attempt failed (None: it did not)
        self._lock = asyncio.Lock()
        self.fetches = 0  # attempts made, for metrics and tests

    def has_kid(self, kid: str) -> bool:
        """Whether ``kid`` is in the current key set."""
        return kid in self._keys

    @property
    def has_keys(self) -> bool:
        """Whether a key set was ever fetched and still counts."""
        return self._clock() < self.serve_until

    def _since(self, when: float | None, now: float) -> float:
        return math.inf if when is None else now - when

    def _due(self, known: bool, now: float) -> bool:
        since_attempt = self._since(self._attempted_at, now)
        if self._failed and since_attempt < self._cooldown:
            return False  # a failed set is retried at most once per cool-down
        if self._since(self._fetched_at, now) >= self._ttl:
            return True
        return not known and since_attempt >= self._min_refresh

    def retry_after(self) -> int:
        """Whole seconds until this set will be asked for again (for ``Retry-After``)."""
        wait = self._cooldown - self._since(self._attempted_at, self._clock()) if self._failed else 1.0
        return max(1, math.ceil(wait))

    @property
    def jwks_uri(self) -> str | None:
        """The key set URL, once configured or discovered."""
        return self._jwks_uri

    @property
    def opened_by_token(self) -> bool:
        """Whether a token (not the configuration) named this issuer."""
        return self._opened_by_token

    def recheck_at(self) -> float:
        """Monotonic time until which a verdict bound to these keys may be reused without asking again.

        The end of freshness; while refreshes fail, the next moment one may be attempted (capped
        by the end of stale serving), so revocations are noticed as soon as the issuer answers.
        """
        return self.reuse_until

    def _compute_reuse_until(self) -> float:
        if self._fetched_at is None:
            return -math.inf
        fresh_until = self._fetched_at + self._ttl
        if self._failed and self._attempted_at is not None:
            return min(max(fresh_until, self._attempted_at + self._cooldown), self.serve_until)
        return fresh_until

    def lookup(self, kid: str) -> tuple[PublicJWK, bytes] | None:
        """The key named ``kid`` and its thumbprint, if held and still counting (no I/O)."""
        if self._clock() >= self.serve_until:
            return None
        return self._keys.get(kid)

    def in_hand(self, kid: str) -> tuple[PublicJWK, bytes] | None:
        """The key named ``kid`` and its thumbprint when held and no refresh is due: the common
        case, answered without a coroutine (else `get_with_thumbprint` decides)."""
        now = self._clock()
        entry = self._keys.get(kid)
        if entry is None or now < self._fresh_until:
            return entry
        if now >= self.serve_until or self._due(True, now):
            return None
        return entry

    async def get_with_thumbprint(self, kid: str) -> tuple[PublicJWK, bytes]:
        """The key named ``kid`` and its thumbprint, refreshing the set if due.

        A request holding a known ``kid`` never waits behind a refresh already under way: it is
        served from the keys in hand while someone else waits for the issuer.

        Raises:
            InvalidToken: the issuer has no such key (after at most one refresh per ``min_refresh``),
                or refused our key request.
            KeysUnavailable: no usable key set and the issuer cannot be reached now.
        """
        entry = self.lookup(kid)
        if self._due(entry is not None, self._clock()) and not (entry is not None and self._lock.locked()):
            async with self._lock:
                # Whoever held the lock may have fetched for us: single flight.
                if self._due(self.lookup(kid) is not None, self._clock()):
                    await self._refresh()
            entry = self.lookup(kid)
        if entry is not None:
            return entry
        if not self.has_keys:
            if self.refused and self._opened_by_token:
                raise UntrustedIssuer(f"{self.issuer} refused our key request")
            raise KeysUnavailable(f"no signing keys for {self.issuer}", retry_after=self.retry_after())
        raise BadSignature(f"unknown kid {kid!r} for issuer {self.issuer}")

    async def replaced(self, kid: str, thumbprint: bytes) -> bool:
        """After a signature failed with key ``kid``: refresh if due, and say whether its material changed.

        An issuer may publish new material behind a known ``kid``; like an unknown ``kid``, this
        costs at most one refresh per ``min_refresh``, however many tokens fail.
        """
        if self._due(False, self._clock()) and not self._lock.locked():
            async with self._lock:
                if self._due(False, self._clock()):
                    await self._refresh()
        entry = self.lookup(kid)
        return entry is not None and entry[1] != thumbprint

    async def load(self) -> None:
        """Fetch the key set unless it is in hand and fresh, or a failed attempt is not due again yet.

        Single flight: callers arriving during a fetch wait for it and do not fetch again.
        """
        if self._due(True, self._clock()):
            async with self._lock:
                if self._due(True, self._clock()):
                    await self._refresh()

    async def get(self, kid: str) -> PublicJWK:
        """The key named ``kid`` (see `get_with_thumbprint`).

        Raises:
            InvalidToken: no such key.
            KeysUnavailable: no usable key set and the issuer cannot be reached now.
        """
        return (await self.get_with_thumbprint(kid))[0]

    async def _refresh(self) -> None:
        self.fetches += 1
        self._attempted_at = self._clock()
        self.reuse_until = self._compute_reuse_until()
        try:
            with self._observer.fetching_keys(self.issuer, configured=not self._opened_by_token):
                async with asyncio.timeout(self._deadline):  # total: a dripping server cannot hold us
                    uri = self._jwks_uri or await self._discover()
                    document = await fetch_json(self._client, uri, self.headers, self._max_bytes)
                keys = usable_keys(document, self._algorithms)
        except (FetchError, TimeoutError) as exc:
            self._failed = True
            self.refused = isinstance(exc, FetchRefused)
            self.last_error = exc
            reason = str(exc) or f"no answer within {self._deadline:g}s"
            stale = "serving the keys in hand" if self.has_keys else "no keys in hand"
            # A label a token named is no outage of ours: one line per label, not a warning.
            level = logging.INFO if self._opened_by_token and not self.has_keys else logging.WARNING
            log.log(level, "JWKS fetch for %s failed (%s); %s", self.issuer, reason, stale)
            self.reuse_until = self._compute_reuse_until()
            return
        dropped = sorted(kid for kid, (_, thumb) in self._keys.items() if keys.get(kid, (None, b""))[1] != thumb)
        self._keys = keys
        self.thumbprints = frozenset(thumb for _, thumb in keys.values())
        self._fetched_at = self._attempted_at
        self.serve_until = self._attempted_at + self._ttl + self._max_stale
        self._fresh_until = min(self._attempted_at + self._ttl, self.serve_until)
        self._failed = self.refused = False
        self.last_error = None
        self.reuse_until = self._compute_reuse_until()
        log.info("JWKS for %s: %d keys%s", self.issuer, len(keys), f", retired {dropped}" if dropped else "")

    async def _discover(self) -> str:
        doc = await fetch_json(
            self._client, f"{self.issuer}/.well-known/openid-configuration", self.headers, self._max_bytes
        )
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
            raise FetchError("discovery document names another issuer")  # OIDC Discovery §4.3
        uri = doc.get("jwks_uri")
        try:
            check_issuer_url(uri if isinstance(uri, str) else "", "jwks_uri")
        except ValueError as exc:
            raise FetchError(f"bad jwks_uri in discovery: {exc}") from exc
        assert isinstance(uri, str)
        self._jwks_uri = uri  # stable for the life of the process
        return uri
