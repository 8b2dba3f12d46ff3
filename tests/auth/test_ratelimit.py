"""Per-client token buckets: the arithmetic (tables), the bounded table, shared leases, the 429 answer."""

from __future__ import annotations

import json
import math

import anyio
import pytest

from auth import ConfigError, VerifiedToken
from auth._ratelimit import (
    LEASE_TTL_S,
    Lease,
    Rate,
    RateLimiter,
    bucket_id,
    lease_size,
    parse_rate,
    retry_after_seconds,
    take,
)
from auth.mcp._ratelimit import RATE_LIMITED, is_write, rate_limited_body


def _token(client: str = "c1", issuer: str = "https://ias.example", tenant: str | None = "t1") -> VerifiedToken:
    return VerifiedToken(subject=client, client_id=client, issuer=issuer, audience=("a",),
                         permissions=frozenset(), expires_at=2**40, tenant=tenant)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "per_second", "burst"), [
    ("20/s:40", 20.0, 40),
    ("20/s", 20.0, 20),
    ("600/m", 10.0, 600),
    ("600/m:60", 10.0, 60),
    ("100/h:10", 100 / 3600, 10),
    ("0.5/s", 0.5, 1),
    (" 5/S:5 ", 5.0, 5),
])
def test_parse_rate_reads_count_unit_and_burst(text: str, per_second: float, burst: int) -> None:
    rate = parse_rate(text, "MCP_RATE_LIMIT_READ")
    assert rate is not None
    assert math.isclose(rate.per_second, per_second) and rate.burst == burst


@pytest.mark.parametrize("text", ["", "off", "OFF", "none"])
def test_parse_rate_off(text: str) -> None:
    assert parse_rate(text, "X") is None


@pytest.mark.parametrize("text", ["20", "20/d", "/s", "20/s:", "20/s:0", "0/s", "-1/s", "20/s:4.5", "20 /s",
                                  "2e3/s", "٣/s", "20/s:2000000", "9999999/s", "nan/s", "x" * 5000])
def test_parse_rate_refuses_naming_the_setting(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rate(text, "MCP_RATE_LIMIT_WRITE")
    assert caught.value.setting == "MCP_RATE_LIMIT_WRITE"
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(("per_second", "burst"), [(0, 1), (-1, 1), (math.inf, 1), (math.nan, 1), (1, 0),
                                                   (1, True), (1, 1.5)])
def test_rate_refuses_nonsense(per_second: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Rate(per_second, burst)


# -- arithmetic ----------------------------------------------------------------------------------

R = Rate(2.0, 4)


@pytest.mark.parametrize(("tokens", "at", "now", "left", "wait"), [
    (4.0, 0.0, 0.0, 3.0, 0.0),      # full: one taken
    (1.0, 0.0, 0.0, 0.0, 0.0),      # the last token
    (0.0, 0.0, 0.0, 0.0, 0.5),      # empty: half a second for one token at 2/s
    (0.5, 0.0, 0.0, 0.5, 0.25),     # half a token there
    (0.0, 0.0, 0.5, 0.0, 0.0),      # refilled one token in 0.5 s, taken
    (0.0, 0.0, 100.0, 3.0, 0.0),    # refill stops at the burst
    (3.0, 10.0, 5.0, 2.0, 0.0),     # a clock that went back adds nothing
])
def test_take(tokens: float, at: float, now: float, left: float, wait: float) -> None:
    assert take(tokens, at, now, R) == pytest.approx((left, wait))


@pytest.mark.parametrize(("rate", "size"), [
    (Rate(1, 5), 1), (Rate(10, 20), 2), (Rate(10, 1000), 2), (Rate(100, 200), 20), (Rate(100, 50), 5),
    (Rate(1000, 10**6), 200), (Rate(0.01, 1), 1),
])
def test_lease_size(rate: Rate, size: int) -> None:
    assert lease_size(rate) == size


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.2, 2), (2.0, 2), (59.01, 60)])
def test_retry_after_rounds_up_to_whole_seconds(wait: float, header: int) -> None:
    assert retry_after_seconds(wait) == header


def test_bucket_id_separates_kind_issuer_tenant_client_and_has_a_fixed_length() -> None:
    ids = {bucket_id(kind, t) for kind in ("read", "write") for t in (
        _token("a"), _token("b"), _token("a", tenant="t2"), _token("a", tenant=None),
        _token("a", issuer="https://other.example"), _token("a" * 5000))}
    assert len(ids) == 12 and {len(i) for i in ids} == {64}


# -- the limiter, per process --------------------------------------------------------------------


async def test_a_flooding_client_is_refused_while_another_is_admitted() -> None:
    clock = Clock()
    limiter = RateLimiter(read=Rate(2, 4), clock=clock)
    flooder, other = _token("flooder"), _token("other")
    verdicts = [await limiter.acquire(flooder, "read") for _ in range(10)]
    assert [v is None for v in verdicts] == [True] * 4 + [False] * 6
    assert [v.first for v in verdicts[4:] if v] == [True, False, False, False, False, False]
    assert verdicts[4] is not None and verdicts[4].retry_after == pytest.approx(0.5)
    assert all([await limiter.acquire(other, "read") is None for _ in range(4)])
    clock.now += 0.5  # one token back
    assert await limiter.acquire(flooder, "read") is None
    refused = await limiter.acquire(flooder, "read")
    assert refused is not None and refused.first


async def test_reads_and_writes_are_limited_separately() -> None:
    limiter = RateLimiter(read=Rate(1, 2), write=Rate(1, 1), clock=Clock())
    token = _token()
    assert await limiter.acquire(token, "write") is None
    assert await limiter.acquire(token, "write") is not None
    assert await limiter.acquire(token, "read") is None  # writes used up, reads still there
    assert await limiter.acquire(token, "read") is None
    assert await limiter.acquire(token, "read") is not None


async def test_an_unlimited_kind_is_always_admitted_and_keeps_no_bucket() -> None:
    limiter = RateLimiter(write=Rate(1, 1), clock=Clock())
    assert all([await limiter.acquire(_token(), "read") is None for _ in range(100)])
    assert limiter.size("read") == 0 and limiter.enabled
    assert not RateLimiter().enabled


async def test_the_bucket_table_is_bounded_least_recently_used_first() -> None:
    clock = Clock()
    limiter = RateLimiter(read=Rate(1, 1), max_clients=3, clock=clock)
    for name in ("a", "b", "c"):
        assert await limiter.acquire(_token(name), "read") is None
    assert await limiter.acquire(_token("a"), "read") is not None  # a is used again: most recent
    assert await limiter.acquire(_token("d"), "read") is None  # b, the least recent, makes room
    assert limiter.size("read") == 3
    assert await limiter.acquire(_token("a"), "read") is not None  # a kept its empty bucket
    assert await limiter.acquire(_token("b"), "read") is None  # b starts full again
    for n in range(1000):
        await limiter.acquire(_token(f"x{n}"), "read")
    assert limiter.size("read") == 3


async def test_refusals_are_told_to_the_observer() -> None:
    from auth._observe import NoObserver
    from auth.mcp import RateLimitGate

    class Counting(NoObserver):
        def __init__(self) -> None:
            self.kinds: list[str] = []

        def rate_limited(self, kind: str) -> None:
            self.kinds.append(kind)

    async def inner(scope: object, receive: object, send: object) -> None:
        return None

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    observer = Counting()
    limiter = RateLimiter(read=Rate(1, 1), write=Rate(1, 1), clock=Clock())
    gate = RateLimitGate(inner, limiter=limiter, read_only={"look"}.__contains__, observer=observer)
    for tool in ("look", "change", "change", "look", "look"):
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
        await gate({"type": "http", "method": "POST", "auth.token": _token(), "mcp.message": message},
                   None, send)  # type: ignore[arg-type]
    assert observer.kinds == ["write", "read", "read"]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [429, 429, 429]


# -- shared buckets (leases) ---------------------------------------------------------------------


class MemoryLeases:
    """The shared bucket row, as the PostgreSQL statement computes it, in memory (one for all limiters)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[str, tuple[float, float]] = {}
        self.calls = 0
        self.fail = False

    async def lease(self, bucket: str, rate: Rate, want: int) -> Lease:
        self.calls += 1
        if self.fail:
            raise OSError("down")
        now = self.clock()
        tokens, at = self.rows.get(bucket, (float(rate.burst), now))
        available = min(rate.burst, tokens + max(0.0, now - at) * rate.per_second)
        granted = min(want, math.floor(available)) if available >= 1 else 0
        self.rows[bucket] = (available - granted, now)
        return Lease(granted, 0.0 if granted else (want - available) / rate.per_second)


@pytest.mark.parametrize("rate", [Rate(10, 20), Rate(100, 200), Rate(5, 5), Rate(50, 20)])
async def test_three_instances_sharing_leases_admit_at_most_one_bucket_plus_the_lease_bound(rate: Rate) -> None:
    clock = Clock()
    source = MemoryLeases(clock)
    instances = [RateLimiter(read=rate, leases=source, clock=clock) for _ in range(3)]
    token = _token("flooder")
    admitted, requests, seconds, step = 0, 0, 5.0, 0.001
    while clock.now < 1000.0 + seconds:
        for limiter in instances:  # round robin, 3 requests per ms: far over any of these rates
            requests += 1
            admitted += await limiter.acquire(token, "read") is None
        clock.now += step
    one_bucket = rate.burst + rate.per_second * seconds
    bound = one_bucket + len(instances) * (lease_size(rate) - 1)
    assert one_bucket * 0.8 <= admitted <= bound, (admitted, one_bucket, bound)
    # The source's work follows the limit, not the flood: at most one statement per admitted request
    # (instances competing for the last tokens get partial leases), and while refused, one per
    # (lease - 1) tokens refilled per instance.
    refused_bound = len(instances) * seconds * rate.per_second / max(1, lease_size(rate) - 1)
    assert source.calls <= admitted + refused_bound + len(instances)
    assert source.calls * 10 < requests


async def test_per_instance_limits_admit_one_bucket_per_instance() -> None:
    clock = Clock()
    instances = [RateLimiter(read=Rate(10, 20), clock=clock) for _ in range(3)]
    admitted = 0
    for _ in range(1000):
        for limiter in instances:
            admitted += await limiter.acquire(_token(), "read") is None
    assert admitted == 60  # 3 x burst, no time passed


async def test_a_lease_not_spent_in_time_is_dropped() -> None:
    clock = Clock()
    source = MemoryLeases(clock)
    limiter = RateLimiter(read=Rate(100, 200), leases=source, clock=clock)
    assert await limiter.acquire(_token(), "read") is None  # takes a lease of 20, spends 1
    assert source.calls == 1
    clock.now += LEASE_TTL_S + 0.01
    assert await limiter.acquire(_token(), "read") is None
    assert source.calls == 2  # the old lease's 19 tokens were not used


async def test_concurrent_requests_share_one_lease_request() -> None:
    clock = Clock()

    class Slow(MemoryLeases):
        async def lease(self, bucket: str, rate: Rate, want: int) -> Lease:
            await anyio.sleep(0.05)
            return await super().lease(bucket, rate, want)

    source = Slow(clock)
    limiter = RateLimiter(read=Rate(100, 200), leases=source, clock=clock)
    results: list[object] = []

    async def one() -> None:
        results.append(await limiter.acquire(_token(), "read"))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert results == [None] * 20 and source.calls == 1


async def test_a_failing_source_falls_back_to_per_process_buckets_then_asks_again() -> None:
    clock = Clock()
    source = MemoryLeases(clock)
    source.fail = True
    limiter = RateLimiter(read=Rate(1, 3), leases=source, clock=clock, fallback_s=5.0)
    verdicts = [await limiter.acquire(_token(), "read") is None for _ in range(5)]
    assert verdicts == [True, True, True, False, False]  # the process's own bucket of 3
    assert source.calls == 1  # asked once, then not again during the fallback
    source.fail = False
    clock.now += 5.01
    assert await limiter.acquire(_token(), "read") is None
    assert source.calls == 2


async def test_a_source_that_does_not_answer_in_time_counts_as_failed() -> None:
    class Hanging:
        calls = 0

        async def lease(self, bucket: str, rate: Rate, want: int) -> Lease:
            self.calls += 1
            await anyio.sleep(30)
            raise AssertionError("not reached")

    source = Hanging()
    limiter = RateLimiter(read=Rate(1, 2), leases=source, lease_timeout=0.05)
    with anyio.fail_after(5):
        assert await limiter.acquire(_token(), "read") is None
        assert await limiter.acquire(_token(), "read") is None
        assert await limiter.acquire(_token(), "read") is not None
    assert source.calls == 1


# -- classification and the answer ---------------------------------------------------------------

READ_ONLY = {"whoami", "list_notes"}


@pytest.mark.parametrize(("message", "write"), [
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami"}}, False),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "create_note"}}, True),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "no_such_tool"}}, True),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 7}}, True),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": []}, True),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}, True),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, False),
    ({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "x://y"}}, False),
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}, False),
    ({"jsonrpc": "2.0", "method": "notifications/initialized"}, False),
    ([{"method": "tools/call", "params": {"name": "whoami"}}, {"method": "tools/call", "params": {"name": "x"}}],
     True),
    ([{"method": "tools/call", "params": {"name": "whoami"}}, {"method": "ping"}], False),
    (None, False),
    ("garbage", False),
    ([[{"method": "tools/call", "params": {"name": "x"}}]], False),  # a nested list is no message
])
def test_is_write(message: object, write: bool) -> None:
    assert is_write(message, READ_ONLY.__contains__) is write


@pytest.mark.parametrize(("message", "expected_id"), [
    ({"jsonrpc": "2.0", "id": 7, "method": "tools/call"}, 7),
    ({"jsonrpc": "2.0", "id": "abc", "method": "tools/call"}, "abc"),
    ({"jsonrpc": "2.0", "method": "notifications/initialized"}, None),
    ({"jsonrpc": "2.0", "id": True, "method": "ping"}, None),
    ({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}, None),
    ([{"id": 1}], None),
    (None, None),
])
def test_rate_limited_body_answers_the_request_id(message: object, expected_id: object) -> None:
    body = json.loads(rate_limited_body(message, "write", 3))
    assert body["id"] == expected_id and body["jsonrpc"] == "2.0"
    assert body["error"]["code"] == RATE_LIMITED
    assert body["error"]["data"] == {"error": "rate_limited", "limit": "write", "retry_after": 3, "status": 429}
    assert "rate_limited (HTTP 429)" in body["error"]["message"] and "retry after 3 s" in body["error"]["message"]


def test_is_write_is_not_recursive_on_deep_nesting() -> None:
    deep: object = [{"method": "tools/call", "params": {"name": "x"}}]
    for _ in range(100_000):
        deep = [deep]
    assert is_write(deep, READ_ONLY.__contains__) is False
