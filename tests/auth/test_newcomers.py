"""The newcomers' budget (auth/_newcomers.py): pure decisions as tables, the slots with an injected clock.

What a forged tenant label costs is decided here: `admission` (go, wait, or refuse with a Retry-After),
`next_source` (who gets a freed slot), `discovery_outcome` (cheap or charged), `source_key` (who pays).
The classification of a failed request is checked on real failures: a connection to a loopback port
that is bound but not listening, and httpx's own error for a name that does not resolve.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from auth import KeysUnavailable
from auth._jwks import ConnectionRefused, FetchError, FetchRefused, HostNotFound, fetch_json, transport_failure
from auth._newcomers import (
    NewcomerBudget,
    NewcomerLimits,
    admission,
    discovery_outcome,
    next_source,
    source_key,
)
from tests._idp import IdP, TenantRouting

from ._support import Clock

LIMITS = NewcomerLimits()  # the product's: window 30 s, 8 charges, 8 in flight (4 per source), 128 waiting (32)


def decide(**counts: Any) -> object:
    values = {"in_flight": 0, "source_in_flight": 0, "waiting": 0, "source_waiting": 0, "charges": (), "now": 100.0}
    return admission(**(values | counts), limits=LIMITS)


@pytest.mark.parametrize(("counts", "expected"), [
    ({}, "go"),
    ({"in_flight": 7, "source_in_flight": 3}, "go"),
    ({"in_flight": 8}, "wait"),  # the global cap
    ({"in_flight": 4, "source_in_flight": 4}, "wait"),  # the source's cap: the others keep room
    ({"source_waiting": 1}, "wait"),  # a slot free, but this source queues already: first come, first served
    ({"in_flight": 8, "waiting": 128}, 1),  # too many waiting: refused at once
    ({"in_flight": 8, "waiting": 10, "source_waiting": 32}, 1),
    ({"charges": [80.0] * 8}, 10),  # spent: Retry-After until the oldest charge lapses (80 + 30 - 100)
    ({"charges": [70.5 + n for n in range(8)]}, 1),  # ... never less than 1 s
    ({"charges": [70.0 + n for n in range(8)]}, "go"),  # exactly one window old: lapsed
    ({"charges": [60.0] + [95.0] * 7}, "go"),  # a charge older than the window no longer counts
    ({"charges": [99.0] * 7}, "go"),  # 7 of 8
    ({"charges": [99.0] * 8, "in_flight": 0}, 29),  # spent wins over free slots
], ids=lambda v: str(v)[:60])
def test_admission(counts: dict[str, Any], expected: object) -> None:
    assert decide(**counts) == expected


@pytest.mark.parametrize(("waiting", "in_flight", "expected"), [
    ([], {}, None),
    (["a", "b"], {}, "a"),  # rotation order
    (["a", "b"], {"a": 4}, "b"),  # a source at its cap is skipped, not waited for
    (["a", "b"], {"a": 4, "b": 4}, None),
    (["b", "a"], {"a": 3}, "b"),
])
def test_next_source(waiting: list[str], in_flight: dict[str, int], expected: str | None) -> None:
    assert next_source(waiting, in_flight, 4) == expected


@pytest.mark.parametrize(("error", "expected"), [
    (None, "found"),
    (FetchRefused("GET ... answered 404"), "absent"),  # the tenant does not exist
    (HostNotFound("GET ...: ConnectError"), "absent"),  # the name does not exist
    (ConnectionRefused("GET ...: ConnectError"), "unreachable"),
    (FetchError("GET ... answered 503"), "failed"),  # expensive: charged
    (FetchError("key set has no usable signing key"), "failed"),
    (TimeoutError(), "failed"),
])
def test_discovery_outcome(error: BaseException | None, expected: str) -> None:
    assert discovery_outcome(error) == expected


@pytest.mark.parametrize(("client", "expected"), [
    (None, ""),
    ((), ""),
    ("127.0.0.1", ""),  # not the ASGI shape
    (("203.0.113.7", 51000), "203.0.113.7"),
    (["203.0.113.7", 51000], "203.0.113.7"),
    (("2001:db8:1:2:3:4:5:6", 443), "2001:db8:1:2::/64"),  # one subscriber's /64 is one source
    (("2001:db8:1:2:ffff::1", 443), "2001:db8:1:2::/64"),
    (("::ffff:198.51.100.9", 443), "198.51.100.9"),
    (("proxy.internal", 0), "proxy.internal"),
    (("x" * 5000, 0), "x" * 64),  # never a key of unbounded size
])
def test_source_key(client: object, expected: str) -> None:
    assert source_key(client) == expected


# --- how a failed request is classified, on real failures ---------------------------------------

def _chain(*errors: BaseException) -> BaseException:
    """errors[0] raised from errors[1] raised from ... (the way httpx wraps what the socket said)."""
    for outer, inner in zip(errors, errors[1:], strict=False):
        outer.__cause__ = inner
    return errors[0]


@pytest.mark.parametrize(("error", "expected"), [
    (_chain(httpx.ConnectError("x"), socket.gaierror(socket.EAI_NONAME, "Name or service not known")), HostNotFound),
    (_chain(httpx.ConnectError("x"), socket.gaierror(socket.EAI_AGAIN, "Temporary failure")), FetchError),
    (_chain(httpx.ConnectError("x"), OSError("All connection attempts failed"), ConnectionRefusedError(111, "r")),
     ConnectionRefused),
    (_chain(httpx.ConnectError("x"), OSError("All"), ExceptionGroup("g", [ConnectionRefusedError()] * 2)),
     ConnectionRefused),  # every address of the host refused
    (_chain(httpx.ConnectError("x"), OSError("All"), ExceptionGroup("g", [ConnectionRefusedError(), TimeoutError()])),
     FetchError),
    (_chain(httpx.ConnectTimeout("x"), TimeoutError()), FetchError),
    (httpx.ReadError("x"), FetchError),
    (_chain(*[httpx.ConnectError(str(n)) for n in range(20)], ConnectionRefusedError()), FetchError),  # bounded walk
])
def test_transport_failure(error: BaseException, expected: type[FetchError]) -> None:
    assert transport_failure(error) is expected


async def test_fetch_json_says_a_refused_connection_and_a_name_that_does_not_resolve_apart() -> None:
    idp = IdP(issuer="http://127.0.0.1:9/tenant")  # never served: only its routing is used
    idp.unresolvable.add("gone")
    idp.refusing.add("down")
    async with httpx.AsyncClient(transport=TenantRouting(idp)) as client:
        with pytest.raises(HostNotFound):
            await fetch_json(client, idp.tenant_issuer("gone") + "/.well-known/openid-configuration", {}, 1024)
        with pytest.raises(ConnectionRefused):  # the kernel refuses: nothing listens on the bound port
            await fetch_json(client, idp.tenant_issuer("down") + "/.well-known/openid-configuration", {}, 1024)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        async with httpx.AsyncClient() as client:  # plain httpx, no routing in between
            with pytest.raises(ConnectionRefused):
                await fetch_json(client, f"http://127.0.0.1:{closed.getsockname()[1]}/", {}, 1024)


# --- the budget: charges, memory of failures, slots ------------------------------------------------

def budget(clock: Clock, **limits: Any) -> NewcomerBudget:
    return NewcomerBudget(NewcomerLimits(**limits), clock=clock)


async def test_a_source_that_spent_its_charges_is_refused_until_the_oldest_lapses_and_others_are_not() -> None:
    clock = Clock(1000.0)
    b = budget(clock)
    receipts = []
    for _ in range(8):
        async with b.slot("attacker"):
            receipts.append(b.charge("attacker"))
        clock.advance(1)
    with pytest.raises(KeysUnavailable) as refused:
        async with b.slot("attacker"):
            pass
    assert refused.value.status == 503 and refused.value.retry_after == 30 - 8
    async with b.slot("other"):  # another source: its own charges
        pass
    b.refund(receipts[3])  # the tenant it discovered produced a valid token
    async with b.slot("attacker"):
        pass
    b.charge("attacker")
    clock.advance(30 - 8)  # the oldest lapses
    async with b.slot("attacker"):
        pass
    assert b.stats()["in_flight"] == 0


def test_charges_and_failures_are_remembered_within_bounds() -> None:
    clock = Clock(0.0)
    b = budget(clock, sources=3, remembered=3)
    for n in range(10):
        b.charge(f"s{n}")
        b.remember(f"https://l{n}.example", "absent")
    assert b.stats()["charged_sources"] == 3 and b.stats()["remembered_failures"] == 3
    assert b.remembered("https://l0.example") is None  # dropped: the oldest go first
    assert b.remembered("https://l9.example") == ("absent", 30)
    clock.advance(29.5)
    assert b.remembered("https://l9.example") == ("absent", 1)
    clock.advance(0.5)
    assert b.remembered("https://l9.example") is None  # one window, then it may be asked again
    assert b.stats()["remembered_failures"] == 2


async def test_freed_slots_go_round_robin_by_source() -> None:
    b = budget(Clock(0.0), in_flight=1, in_flight_per_source=1)
    order: list[str] = []
    release = asyncio.Event()

    async def discover(source: str, name: str, hold: asyncio.Event | None = None) -> None:
        async with b.slot(source):
            order.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(discover("a", "a1", release))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(discover(s, n)) for s, n in (("a", "a2"), ("a", "a3"), ("a", "a4"), ("b", "b1"))]
    await asyncio.sleep(0)
    assert b.stats()["waiting"] == 4
    release.set()
    await asyncio.gather(first, *waiters)
    assert order == ["a1", "a2", "b1", "a3", "a4"]  # b is not served after all of a's queue
    assert b.stats() | {"peak_in_flight": 0} == {"in_flight": 0, "peak_in_flight": 0, "waiting": 0,
                                                "charged_sources": 0, "remembered_failures": 0}


async def test_a_waiter_gives_up_after_max_wait_and_leaves_no_trace() -> None:
    b = budget(Clock(0.0), in_flight=1, max_wait=0.05)
    release = asyncio.Event()

    async def hold() -> None:
        async with b.slot("a"):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    with pytest.raises(KeysUnavailable) as refused:
        async with b.slot("b"):
            pass
    assert refused.value.retry_after == 1
    cancelled = asyncio.create_task(hold())  # a waiter whose request goes away
    await asyncio.sleep(0)
    assert b.stats()["waiting"] == 1
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert b.stats()["waiting"] == 0
    release.set()
    await holder
    async with b.slot("b"):  # the slot is free again, nobody left in line
        assert b.stats()["in_flight"] == 1
    assert b.stats()["in_flight"] == 0


async def test_too_many_waiting_are_refused_at_once_and_a_source_spent_while_waiting_is_refused_after() -> None:
    clock = Clock(0.0)
    b = budget(clock, in_flight=1, waiting=1, charges_per_source=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with b.slot("a"):
            b.charge("b")  # meanwhile, b's earlier discovery was charged
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)

    async def enter(source: str) -> None:
        async with b.slot(source):
            pass

    waiting = asyncio.create_task(enter("b"))
    await asyncio.sleep(0)
    with pytest.raises(KeysUnavailable) as full:  # the one waiting place is taken
        await enter("c")
    assert full.value.retry_after == 1
    release.set()
    await holder
    with pytest.raises(KeysUnavailable) as spent:
        await waiting
    assert spent.value.retry_after == 30
    assert b.stats()["in_flight"] == b.stats()["waiting"] == 0
