"""The rate-limit buckets the worker processes of one instance share (`server._shm_buckets.WorkerBuckets`)."""

from __future__ import annotations

import asyncio
import math
import os

import pytest

from auth._ratelimit import Lease, Rate, RateLimiter, bucket_id
from server._shm_buckets import WorkerBuckets
from tests.auth.test_ratelimit import Clock, MemoryLeases, _token

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("steps", "rate"), [
    ([(0.0, 3), (0.0, 3), (0.0, 3), (0.0, 3), (1.0, 3), (10.0, 3), (10.0, 30)], Rate(2, 10)),
    ([(0.0, 1)] * 12 + [(0.3, 1), (0.6, 1)], Rate(5, 10)),
    ([(0.0, 20), (0.05, 20), (0.5, 20)], Rate(100, 200)),
])
async def test_leases_are_computed_as_the_reference_model(steps: list[tuple[float, int]], rate: Rate) -> None:
    clock = Clock()
    shm, model = WorkerBuckets(64, clock=clock), MemoryLeases(clock)
    bucket = bucket_id("read", _token())
    for advance, want in steps:
        clock.now += advance
        got, expected = await shm.lease(bucket, rate, want), await model.lease(bucket, rate, want)
        assert got.granted == expected.granted
        assert math.isclose(got.wait_s, expected.wait_s, abs_tol=1e-9)


async def test_the_table_is_bounded_and_keys_do_not_mix() -> None:
    clock = Clock()
    shm = WorkerBuckets(10, clock=clock)
    assert shm.slots == 64
    rate = Rate(0.001, 2)
    for n in range(5000):  # far more clients than slots: the longest idle are reused
        clock.now += 0.001
        assert (await shm.lease(bucket_id("write", _token(f"c{n}")), rate, 1)).granted == 1
    first = bucket_id("write", _token("fresh"))
    assert [(await shm.lease(first, rate, 1)).granted for _ in range(3)] == [1, 1, 0]
    other = bucket_id("write", _token("fresh-too"))
    assert (await shm.lease(other, rate, 1)).granted == 1


def test_worker_processes_share_one_budget() -> None:
    shm = WorkerBuckets(1024)  # made before the fork, as the server makes it
    rate = Rate(0.001, 50)
    bucket = bucket_id("write", _token("spread"))
    readers = []
    pids = []
    for _ in range(4):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # a worker: 40 requests, one token at a time
            os.close(read_end)
            admitted = sum(asyncio.run(_take(shm, bucket, rate)))
            os.write(write_end, str(admitted).encode())
            os._exit(0)
        os.close(write_end)
        readers.append(read_end)
        pids.append(pid)
    total = 0
    for pid, read_end in zip(pids, readers, strict=True):
        assert os.waitpid(pid, 0)[1] == 0
        total += int(os.read(read_end, 32))
        os.close(read_end)
    assert total == 50  # 4 x 40 asked, one bucket of 50 for all


async def _take(shm: WorkerBuckets, bucket: str, rate: Rate) -> list[int]:
    return [(await shm.lease(bucket, rate, 1)).granted for _ in range(40)]


async def test_a_limiter_over_worker_buckets_admits_one_budget_for_three_processes() -> None:
    clock = Clock()
    shm = WorkerBuckets(1024, clock=clock)
    limiters = [RateLimiter(read=Rate(10, 20), leases=shm, clock=clock) for _ in range(3)]
    admitted = 0
    for _ in range(300):
        for limiter in limiters:
            admitted += await limiter.acquire(_token("x"), "read") is None
    assert admitted == 20  # lease size 2: the last odd token of each process's lease may go unused
    assert isinstance(await shm.lease(bucket_id("read", _token("y")), Rate(10, 20), 2), Lease)
