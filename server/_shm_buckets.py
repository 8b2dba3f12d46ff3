"""Rate-limit buckets shared by the worker processes of one instance, in memory they all map.

With ``MCP_WORKERS`` above 1 and no PostgreSQL to share through, the server makes one
`WorkerBuckets` before it forks: an anonymous shared memory mapping (inherited by every worker)
holding a fixed table of buckets, and a lock file. Each worker's `auth.mcp.RateLimiter` leases its
tokens from it exactly as it would from PostgreSQL (``auth/_ratelimit.py``: the same accuracy
bound, with the workers as the processes), so a client's limit holds for the instance however
the kernel spreads its connections over the workers.

- **Bounded**: ``slots`` buckets (a power of two, 24 bytes each), open addressing over 8 slots;
  when all 8 are taken the one idle longest is reused (it comes back full, as a bucket idle long
  enough would be).
- **Locked with ``fcntl.lockf``** on an unlinked temporary file: a POSIX record lock belongs to
  the process, so a worker killed inside the critical section releases it by dying (a semaphore
  would stay taken). The critical section is a few struct reads and writes, no await.
- The clock is ``time.monotonic``, the same system-wide clock in every worker.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable

from auth.mcp import Lease, Rate

__all__ = ["WorkerBuckets"]

_SLOT = struct.Struct("<Qdd")  # key (a digest, never 0), tokens, last change
_PROBE = 8


class WorkerBuckets:
    """An `auth.mcp.LeaseSource` for the worker processes of one instance (create it before forking).

    Args:
        slots: buckets held (rounded up to a power of two, at least 64).
        clock: monotonic seconds, the same in every process.
    """

    def __init__(self, slots: int = 32_768, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._slots = 1 << max(6, math.ceil(math.log2(max(1, slots))))
        self._map = mmap.mmap(-1, self._slots * _SLOT.size)  # anonymous and shared: survives fork
        self._lock_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self._clock = clock

    @property
    def slots(self) -> int:
        return self._slots

    async def lease(self, bucket: str, rate: Rate, want: int) -> Lease:
        """Take up to ``want`` tokens from ``bucket`` (created full when new), as the PostgreSQL statement does."""
        key = int(bucket[:16], 16) | 1
        fd = self._lock_file.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            now = self._clock()
            offset, tokens, at = self._find(key, float(rate.burst), now)
            available = tokens + max(0.0, now - at) * rate.per_second
            if available > rate.burst:
                available = float(rate.burst)
            granted = min(want, math.floor(available)) if available >= 1.0 else 0
            _SLOT.pack_into(self._map, offset, key, available - granted, now)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        if granted:
            return Lease(granted)
        return Lease(0, (want - available) / rate.per_second)

    def _find(self, key: int, burst: float, now: float) -> tuple[int, float, float]:
        """``(offset, tokens, last change)`` of the slot for ``key``: its own, an empty one, or the longest idle."""
        start = key & (self._slots - 1)
        oldest, oldest_at = -1, math.inf
        for step in range(_PROBE):
            offset = ((start + step) & (self._slots - 1)) * _SLOT.size
            found, tokens, at = _SLOT.unpack_from(self._map, offset)
            if found == key:
                return offset, tokens, at
            if found == 0:
                return offset, burst, now
            if at < oldest_at:
                oldest, oldest_at = offset, at
        return oldest, burst, now

    def close(self) -> None:
        self._map.close()
        self._lock_file.close()

    def __repr__(self) -> str:
        return f"WorkerBuckets(slots={self._slots}, pid={os.getpid()})"
