"""The newcomers' budget: discovering multi-tenant issuers that tokens name before any of them verified.

In multi-tenant mode a token's ``iss`` label (``https://<label>.<trusted domain>``) decides which
tenant's keys are needed, before anything about the token can be trusted. Discovering a tenant
never seen costs outbound requests, so it comes out of this budget (SECURITY.md), built so that
forged labels cannot keep a real tenant's first request out:

- **charged by outcome.** A discovery that fails cheaply (the name does not resolve, the
  connection is refused, the tenant answers 4xx: `discovery_outcome`) costs nothing but its
  moment in flight, and is remembered per exact issuer for a cool-down (`Remembered`): a label
  repeated costs nothing at all. A discovery that finds keys is charged to its source and paid
  back as soon as one of that tenant's tokens verifies; one that fails expensively (timeout,
  5xx, garbage) stays charged. Only a source's unpaid charges can refuse its next new label.
- **per source, with a global cap.** Each source (the client address of the ASGI scope, IPv6 by
  /64: `source_key`) has its own charges and at most ``in_flight_per_source`` discoveries in
  flight; all sources together at most ``in_flight``. A request over its source's or the global
  cap waits (at most ``max_wait``, few at a time) and is served round-robin by source, so one
  source cannot hold the others back.

Decisions are pure functions of the counts and an injected clock (`admission`, `next_source`,
`discovery_outcome`, `Remembered.verdict`); `NewcomerBudget` holds the counts and does the waiting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import KeysUnavailable
from ._jwks import ConnectionRefused, FetchRefused, HostNotFound

__all__ = [
    "NewcomerLimits",
    "NewcomerBudget",
    "Outcome",
    "Receipt",
    "admission",
    "spent",
    "next_source",
    "discovery_outcome",
    "source_key",
]

Outcome = Literal["found", "absent", "unreachable", "failed"]
"""What discovering a token-named issuer gave: keys; "no such tenant" (name unknown, 4xx);
nothing listening (connection refused); or an expensive failure (timeout, 5xx, garbage)."""

CHEAP: frozenset[Outcome] = frozenset({"absent", "unreachable"})


@dataclass(frozen=True, slots=True)
class NewcomerLimits:
    """The bounds of the newcomers' budget (defaults are the product's)."""

    window: float = 30.0  # seconds a charge and a remembered failure last (the key cool-down)
    charges_per_source: int = 8  # unpaid charges (keys found for no valid token, costly failures) per window
    in_flight: int = 8  # discoveries under way, all sources together
    in_flight_per_source: int = 4  # ... and from one source: one source leaves the others room
    waiting: int = 128  # requests waiting for a discovery slot, all sources together
    waiting_per_source: int = 32
    max_wait: float = 5.0  # seconds one request waits for a slot (the fetch deadline)
    sources: int = 4096  # sources whose charges are remembered, least recently charged dropped
    remembered: int = 4096  # issuers whose cheap or failed discovery is remembered, LRU


Admission = Literal["go", "wait"] | int
"""Start now, wait for a slot, or (an int) refuse: retry after that many seconds."""


def spent(charges: Iterable[float], *, now: float, limits: NewcomerLimits) -> int | None:
    """Seconds until a source whose charges are spent may discover again; None if it may now (pure)."""
    live = [at for at in charges if now - at < limits.window]
    if len(live) < limits.charges_per_source:
        return None
    return max(1, math.ceil(limits.window - (now - min(live))))


def admission(
    *,
    in_flight: int,
    source_in_flight: int,
    waiting: int,
    source_waiting: int,
    charges: Iterable[float],
    now: float,
    limits: NewcomerLimits,
) -> Admission:
    """Whether a source may start discovering a new issuer now (pure).

    Args:
        in_flight: discoveries under way, all sources; ``source_in_flight``: this source's.
        waiting: requests waiting for a slot, all sources; ``source_waiting``: this source's.
        charges: times of this source's unpaid charges (older than the window no longer count).
        now: the injected clock.
        limits: the bounds.
    """
    wait = spent(charges, now=now, limits=limits)
    if wait is not None:
        return wait
    if in_flight < limits.in_flight and source_in_flight < limits.in_flight_per_source and not source_waiting:
        return "go"
    if waiting < limits.waiting and source_waiting < limits.waiting_per_source:
        return "wait"
    return 1


def next_source(waiting: Iterable[str], in_flight: Mapping[str, int], per_source: int) -> str | None:
    """The first source, in rotation order, that has a request waiting and room for one more (pure)."""
    return next((source for source in waiting if in_flight.get(source, 0) < per_source), None)


def discovery_outcome(error: BaseException | None) -> Outcome:
    """Classify how a token-named issuer's discovery and key request ended (``None``: keys found) (pure)."""
    if error is None:
        return "found"
    if isinstance(error, FetchRefused | HostNotFound):
        return "absent"
    if isinstance(error, ConnectionRefused):
        return "unreachable"
    return "failed"


def source_key(client: Any) -> str:
    """Who a request comes from, as the ASGI scope's ``client`` names it (pure).

    The host of ``(host, port)``; an IPv6 address by its /64 (one subscriber line holds all of
    it), an IPv4-mapped one as IPv4; ``""`` when the server does not say. Behind a proxy this is
    what the ASGI server reports (uvicorn: ``--forwarded-allow-ips`` naming the proxy).
    """
    if not isinstance(client, tuple | list) or not client or not isinstance(client[0], str):
        return ""
    host = client[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # a name or a socket path: cut, never a key of unbounded size
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return f"{ipaddress.IPv6Network((address, 64), strict=False).network_address}/64"
    return str(address)


@dataclass(frozen=True, slots=True)
class Receipt:
    """A charge to a source, paid back when the discovered tenant's token verifies."""

    source: str
    at: float


class NewcomerBudget:
    """Slots, charges and the memory of failed discoveries for token-named issuers (see the module docstring).

    One per `JWTVerifier`, used from its event loop.

    Args:
        limits: the bounds.
        clock: monotonic seconds, injectable for tests (charges and remembered failures).
    """

    def __init__(self, limits: NewcomerLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._in_flight: dict[str, int] = {}  # sources with a discovery under way
        self._in_flight_total = 0
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()  # rotation order
        self._waiting_total = 0
        self._charges: OrderedDict[str, deque[float]] = OrderedDict()
        self._failed: OrderedDict[str, tuple[Outcome, float]] = OrderedDict()  # issuer -> (outcome, when)
        self.peak_in_flight = 0

    def stats(self) -> dict[str, int]:
        """Sizes and counts, for tests and figures."""
        return {
            "in_flight": self._in_flight_total,
            "peak_in_flight": self.peak_in_flight,
            "waiting": self._waiting_total,
            "charged_sources": len(self._charges),
            "remembered_failures": len(self._failed),
        }

    # --- what failed, per exact issuer ---------------------------------------------------------

    def remembered(self, issuer: str) -> tuple[Outcome, int] | None:
        """The outcome of ``issuer``'s last failed discovery and the whole seconds it still counts, if it does."""
        entry = self._failed.get(issuer)
        if entry is None:
            return None
        outcome, at = entry
        left = self.limits.window - (self._clock() - at)
        if left <= 0:
            del self._failed[issuer]
            return None
        return outcome, max(1, math.ceil(left))

    def remember(self, issuer: str, outcome: Outcome) -> None:
        """Remember a failed discovery of ``issuer`` for one window (bounded, oldest dropped)."""
        self._failed[issuer] = (outcome, self._clock())
        self._failed.move_to_end(issuer)
        if len(self._failed) > self.limits.remembered:
            self._failed.popitem(last=False)

    # --- charges per source ----------------------------------------------------------------------

    def _live_charges(self, source: str, now: float) -> deque[float]:
        charges = self._charges.get(source)
        if charges is None:
            return deque()
        while charges and now - charges[0] >= self.limits.window:
            charges.popleft()
        if not charges:
            del self._charges[source]
        return charges

    def charge(self, source: str) -> Receipt:
        """Charge ``source`` for one discovery (keys found, or an expensive failure)."""
        now = self._clock()
        charges = self._live_charges(source, now)
        if source not in self._charges:
            self._charges[source] = charges
            if len(self._charges) > self.limits.sources:
                self._charges.popitem(last=False)
        self._charges.move_to_end(source)
        charges.append(now)
        return Receipt(source, now)

    def refund(self, receipt: Receipt) -> None:
        """Pay a charge back: the tenant it discovered produced a valid token."""
        charges = self._charges.get(receipt.source)
        if charges is not None and receipt.at in charges:
            charges.remove(receipt.at)

    # --- slots -------------------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, source: str) -> AsyncIterator[None]:
        """Hold one discovery slot for ``source`` while the block runs.

        Raises:
            KeysUnavailable: the source's charges are spent (``Retry-After`` until the oldest
                lapses), too many requests wait already, or no slot came within ``max_wait``.
        """
        now = self._clock()
        decision = admission(
            in_flight=self._in_flight_total,
            source_in_flight=self._in_flight.get(source, 0),
            waiting=self._waiting_total,
            source_waiting=len(self._waiting.get(source, ())),
            charges=self._live_charges(source, now),
            now=now,
            limits=self.limits,
        )
        if decision == "wait":
            await self._wait(source)
            now = self._clock()
            wait = spent(self._live_charges(source, now), now=now, limits=self.limits)
            if wait is not None:  # its earlier discoveries, finished meanwhile, spent the source's charges
                self._release(source)
                raise KeysUnavailable("too many new issuers from this source at once", retry_after=wait)
        elif decision == "go":
            self._take(source)
        else:
            raise KeysUnavailable("too many new issuers from this source at once", retry_after=decision)
        try:
            yield
        finally:
            self._release(source)

    def _take(self, source: str) -> None:
        self._in_flight[source] = self._in_flight.get(source, 0) + 1
        self._in_flight_total += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight_total)

    def _release(self, source: str) -> None:
        left = self._in_flight[source] - 1
        if left:
            self._in_flight[source] = left
        else:
            del self._in_flight[source]
        self._in_flight_total -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiting requests, one source after another."""
        limits = self.limits
        while self._in_flight_total < limits.in_flight:
            source = next_source(self._waiting, self._in_flight, limits.in_flight_per_source)
            if source is None:
                return
            queue = self._waiting[source]
            future = queue.popleft()
            self._waiting_total -= 1
            if queue:
                self._waiting.move_to_end(source)  # round-robin: this source goes to the back
            else:
                del self._waiting[source]
            if not future.done():  # a waiter that gave up is skipped
                self._take(source)  # taken on the waiter's behalf: nobody can overtake it
                future.set_result(None)

    async def _wait(self, source: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(source, deque()).append(future)
        self._waiting_total += 1
        try:
            async with asyncio.timeout(self.limits.max_wait):
                await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                self._release(source)  # the slot came just as we gave up: pass it on
            else:
                future.cancel()
                self._forget(source, future)
            if isinstance(exc, TimeoutError):
                raise KeysUnavailable("no discovery slot for a new issuer in time", retry_after=1) from None
            raise

    def _forget(self, source: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(source)
        if queue is not None and future in queue:
            queue.remove(future)
            self._waiting_total -= 1
            if not queue:
                del self._waiting[source]
