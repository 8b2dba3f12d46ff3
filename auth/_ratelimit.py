"""Per-client rate limits: token buckets keyed by the verified token's (issuer, tenant, client).

Only verified callers get a bucket (the limiter is asked after the token is verified), one for
reads and one for writes; the table holds at most ``max_clients`` callers of each kind, least
recently used dropped first (a dropped bucket comes back full, which is what an idle caller's
bucket would be anyway). The arithmetic is pure (`take`) and the clock injected.

Shared limits: with a `LeaseSource` (one row per bucket in a database every instance uses), an
instance takes a *lease* of `lease_size` tokens from the shared bucket in one statement and
spends it locally, so the database sees one statement per lease, not per request. Accuracy:

- the shared bucket never hands out more than ``burst + rate * t`` tokens in ``t`` seconds;
- an instance holds at most one lease per bucket, spent or dropped within `LEASE_TTL_S`, so the
  caller's requests admitted over all instances in any window exceed what one bucket admits by
  at most ``instances * (lease_size - 1)`` (tokens taken before the window and spent in it);
- tokens leased and not spent within the TTL are lost: a caller spread over several instances
  may be refused while up to ``instances * (lease_size - 1)`` tokens sit in other instances' leases;
- after a refusal an instance asks again only when a whole lease has refilled, so a caller
  over its limit costs the database at most ``rate / lease_size`` statements per second per instance;
- when the source fails or does not answer within ``lease_timeout``, the instance falls back to
  its own buckets (per-instance limits) for ``fallback_s`` seconds, then asks again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import anyio

from ._errors import ConfigError
from ._token import VerifiedToken

__all__ = [
    "Kind",
    "Rate",
    "parse_rate",
    "take",
    "lease_size",
    "Lease",
    "LeaseSource",
    "Refusal",
    "RateLimiter",
    "bucket_id",
    "retry_after_seconds",
    "LEASE_SPAN_S",
    "LEASE_TTL_S",
]

log = logging.getLogger("auth.ratelimit")

Kind = Literal["read", "write"]
"""What a request is charged to: ``"write"`` for a call of a tool not marked read-only, else ``"read"``."""

LEASE_SPAN_S = 0.2
"""A lease holds about this many seconds of a bucket's rate (at most a tenth of its burst, at least one)."""
LEASE_TTL_S = 1.0
"""Leased tokens not spent within this many seconds are dropped."""

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"(?P<count>[0-9]{1,7}(?:\.[0-9]{1,6})?)/(?P<unit>[smh])(?::(?P<burst>[0-9]{1,7}))?")
_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's shape: ``per_second`` tokens added per second, at most ``burst`` held.

    Raises:
        ValueError: a rate that is not a positive finite number, or a burst outside 1..1 000 000.
    """

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_second) and 0 < self.per_second <= _MAX):
            raise ValueError(f"rate must be a positive number of tokens per second, got {self.per_second!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or not 1 <= self.burst <= _MAX:
            raise ValueError(f"burst must be a whole number from 1 to {_MAX}, got {self.burst!r}")

    def __str__(self) -> str:
        return f"{self.per_second:g}/s:{self.burst}"


def parse_rate(text: str, setting: str) -> Rate | None:
    """Parse ``<count>/<s|m|h>[:<burst>]`` (``20/s:40``, ``600/m``, ``100/h:10``); ``off`` or empty is None.

    The burst defaults to the count (at least 1): ``600/m`` holds 600 and adds 10 per second.

    Raises:
        ConfigError: naming ``setting``.
    """
    raw = text.strip().lower()
    if raw in ("", "off", "none"):
        return None
    match = _RATE.fullmatch(raw)
    if match is None:
        raise ConfigError(setting, f"must be <count>/<s|m|h>[:<burst>] (e.g. 20/s:40) or off, got {raw[:40]!r}")
    count = float(match["count"])
    burst = int(match["burst"]) if match["burst"] else max(1, math.ceil(count))
    try:
        return Rate(count / _UNITS[match["unit"]], burst)
    except ValueError as exc:
        raise ConfigError(setting, str(exc)) from None


def take(tokens: float, at: float, now: float, rate: Rate) -> tuple[float, float]:
    """One request against a bucket holding ``tokens`` at time ``at`` (pure).

    Returns:
        ``(tokens left, wait)``: ``wait`` is 0 when the request is admitted (one token taken),
        else the seconds until one token will be there.
    """
    tokens = min(float(rate.burst), tokens + max(0.0, now - at) * rate.per_second)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate.per_second


def lease_size(rate: Rate) -> int:
    """How many tokens an instance takes from a shared bucket at a time (pure): about
    `LEASE_SPAN_S` of the rate, at most a tenth of the burst, at least one."""
    return max(1, min(math.ceil(rate.per_second * LEASE_SPAN_S), rate.burst // 10))


def retry_after_seconds(wait: float) -> int:
    """The ``Retry-After`` value for a wait: whole seconds, rounded up, at least 1 (pure)."""
    return max(1, math.ceil(wait - 1e-9))


def bucket_id(kind: Kind, token: VerifiedToken) -> str:
    """A shared bucket's key: a digest of the kind and the token's issuer, tenant and client id
    (fixed length whatever the token says; no client id stored in the clear)."""
    text = "\x00".join((kind, token.issuer, token.tenant or "", token.client_id))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Lease:
    """A shared bucket's answer: ``granted`` tokens (0 or more); when none, ``wait_s`` until a lease refills."""

    granted: int
    wait_s: float = 0.0


class LeaseSource(Protocol):
    """Where shared buckets live (one per `bucket_id`, every instance using the same source)."""

    async def lease(self, bucket: str, rate: Rate, want: int) -> Lease:
        """Take up to ``want`` whole tokens from ``bucket`` (created full when new) in one step.

        Raises:
            Exception: any failure; the limiter then counts on its own buckets for a while.
        """
        ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over its limit: ``retry_after`` seconds until one would be admitted; ``first``
    when the caller's previous request of this kind was admitted (log once per run of refusals)."""

    retry_after: float
    kind: Kind
    first: bool


class _State:
    """One caller's bucket of one kind: the local bucket, and the lease taken from a shared one."""

    __slots__ = ("tokens", "at", "leased", "lease_until", "blocked_until", "fetch", "refusing")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.at = now
        self.leased = 0
        self.lease_until = 0.0
        self.blocked_until = 0.0
        self.fetch: anyio.Event | None = None
        self.refusing = False


class RateLimiter:
    """Token buckets per verified caller, for reads and writes separately.

    Args:
        read: the bucket every read request is charged to; None: reads are not limited.
        write: the bucket every write request is charged to; None: writes are not limited.
        max_clients: buckets kept per kind (least recently used dropped beyond it).
        leases: a shared bucket store; None keeps the limits per process.
        lease_timeout: seconds a lease may take before the process falls back to its own buckets.
        fallback_s: how long it then counts on its own buckets before asking the source again.
        clock: monotonic seconds.

    Raises:
        ValueError: ``max_clients`` below 1.
    """

    def __init__(
        self,
        *,
        read: Rate | None = None,
        write: Rate | None = None,
        max_clients: int = 10_000,
        leases: LeaseSource | None = None,
        lease_timeout: float = 1.0,
        fallback_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.read = read
        self.write = write
        self._max = max_clients
        self._leases = leases
        self._lease_timeout = lease_timeout
        self._fallback_s = fallback_s
        self._fallback_until = -math.inf
        self._clock = clock
        self._reads: OrderedDict[tuple[str, str | None, str], _State] = OrderedDict()
        self._writes: OrderedDict[tuple[str, str | None, str], _State] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether any kind is limited."""
        return self.read is not None or self.write is not None

    @property
    def shared(self) -> bool:
        """Whether the buckets live in a `LeaseSource`."""
        return self._leases is not None

    def size(self, kind: Kind) -> int:
        """Buckets held for ``kind`` (for tests and metrics)."""
        return len(self._writes if kind == "write" else self._reads)

    async def acquire(self, token: VerifiedToken, kind: Kind) -> Refusal | None:
        """Charge one request of ``kind`` by ``token``'s caller; None when admitted."""
        if kind == "write":
            rate, states = self.write, self._writes
        else:
            rate, states = self.read, self._reads
        if rate is None:
            return None
        key = (token.issuer, token.tenant, token.client_id)
        now = self._clock()
        state = states.get(key)
        if state is None:
            if len(states) >= self._max:
                states.popitem(last=False)
            state = states[key] = _State(rate.burst, now)
        else:
            states.move_to_end(key)
        if self._leases is None or now < self._fallback_until:
            return self._local(state, kind, rate, now)
        return await self._shared(state, kind, rate, now, token)

    def _local(self, state: _State, kind: Kind, rate: Rate, now: float) -> Refusal | None:
        # `take`, inlined: this runs on every request of a limited kind.
        tokens = state.tokens
        if now > state.at:
            tokens += (now - state.at) * rate.per_second
            if tokens > rate.burst:
                tokens = rate.burst
        state.at = now
        if tokens >= 1.0:
            state.tokens = tokens - 1.0
            state.refusing = False
            return None
        state.tokens = tokens
        return self._refuse(state, kind, (1.0 - tokens) / rate.per_second)

    def _refuse(self, state: _State, kind: Kind, wait: float) -> Refusal:
        first = not state.refusing
        state.refusing = True
        return Refusal(wait, kind, first)

    async def _shared(self, state: _State, kind: Kind, rate: Rate, now: float, token: VerifiedToken) -> Refusal | None:
        while True:
            if now < self._fallback_until:  # the source failed (here or for another caller)
                return self._local(state, kind, rate, now)
            if state.leased > 0:
                if now < state.lease_until:
                    state.leased -= 1
                    state.refusing = False
                    return None
                state.leased = 0  # an old lease: its tokens are dropped (the accuracy bound relies on it)
            if now < state.blocked_until:
                return self._refuse(state, kind, state.blocked_until - now)
            if state.fetch is not None:  # one lease request per bucket at a time
                await state.fetch.wait()
            else:
                await self._fetch(state, kind, rate, token)
            now = self._clock()

    async def _fetch(self, state: _State, kind: Kind, rate: Rate, token: VerifiedToken) -> None:
        assert self._leases is not None
        done = state.fetch = anyio.Event()
        want = lease_size(rate)
        try:
            with anyio.fail_after(self._lease_timeout):
                lease = await self._leases.lease(bucket_id(kind, token), rate, want)
        except Exception as exc:  # noqa: BLE001 - any failure of the source: count on our own buckets
            if self._clock() >= self._fallback_until:
                log.warning("shared rate limits unavailable (%s); limiting per process for %g s",
                            type(exc).__name__, self._fallback_s)
            self._fallback_until = self._clock() + self._fallback_s
            return
        finally:
            state.fetch = None
            done.set()
        now = self._clock()
        if lease.granted > 0:
            state.leased = min(lease.granted, want)
            state.lease_until = now + LEASE_TTL_S
        else:
            state.blocked_until = now + max(lease.wait_s, 1e-3)
