"""Shared rate-limit buckets in PostgreSQL: one row per bucket, one statement per lease.

`PostgresLeases` is the `auth.mcp.RateLimiter`'s lease source when PostgreSQL is the notes
store: every instance takes its leases from the same rows, so a client's limit holds across
instances (the accuracy is described in ``auth/_ratelimit.py`` and ``docs/production.md``).

- **One statement per lease**: an ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` refills the
  row by the time since its last change (the database's clock, so instances' clocks do not
  matter), grants up to the wanted number of whole tokens and stores what is left, atomically
  (the row lock serialises instances asking at once). A new bucket starts full.
- **Bounded table**: rows are keyed by a digest of (kind, issuer, tenant, client), so only callers
  with a verified token create one; a row idle long enough to be full again says nothing a
  missing row would not, and such rows are deleted at most once a minute per instance.
- **Unlogged**: the buckets need no crash safety (an empty table after a crash means full buckets).
- It uses the notes store's pool and its bounds (`PostgresStore` timeout); a failure raises
  `StoreUnavailable`, and the limiter counts on its own per-process buckets for a while.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from auth.mcp import Lease, Rate

from ._postgres import PostgresStore

__all__ = ["PostgresLeases", "TABLE"]

TABLE = "mcp_rate_buckets"
_LOCK_KEY = 0x6D63707274  # "mcprt": taken while creating the table, so instances starting together wait
_CREATE = (
    f"CREATE UNLOGGED TABLE IF NOT EXISTS {TABLE} ("
    " bucket text PRIMARY KEY,"
    " tokens double precision NOT NULL,"
    " granted integer NOT NULL,"
    " at timestamptz NOT NULL)"
)
_AVAILABLE = (
    "least(%(burst)s::float8, b.tokens + %(rate)s::float8"
    " * greatest(0, extract(epoch FROM now() - b.at))::float8)"
)
_GRANT = f"CASE WHEN {_AVAILABLE} >= 1 THEN least(%(want)s::float8, floor({_AVAILABLE})) ELSE 0 END"
_LEASE = (
    f"INSERT INTO {TABLE} AS b (bucket, tokens, granted, at)"  # noqa: S608 - constant text; values are bound
    " VALUES (%(bucket)s, %(burst)s::float8 - %(want)s, %(want)s, now())"
    " ON CONFLICT (bucket) DO UPDATE SET"
    f" granted = ({_GRANT})::integer,"
    f" tokens = {_AVAILABLE} - {_GRANT},"
    " at = now()"
    " RETURNING granted, tokens"
)
_SWEEP = f"DELETE FROM {TABLE} WHERE at < now() - make_interval(secs => %(idle)s)"  # noqa: S608
_SWEEP_EVERY_S = 60.0


class PostgresLeases:
    """`auth.mcp.LeaseSource` on the notes store's PostgreSQL database.

    Args:
        store: the open notes store (its pool, timeout and error handling are used).
        clock: monotonic seconds, for the sweep interval.
    """

    def __init__(self, store: PostgresStore, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._ready = False
        self._idle = 60.0  # a row idle this long is full again (the longest refill seen, plus a margin)
        self._swept_at = clock()

    async def lease(self, bucket: str, rate: Rate, want: int) -> Lease:
        """Take up to ``want`` tokens from ``bucket`` (an `auth.mcp.LeaseSource`).

        Raises:
            StoreUnavailable: the database did not answer within the store's timeout.
        """
        self._idle = max(self._idle, rate.burst / rate.per_second + 10.0)
        sweep = self._clock() - self._swept_at >= _SWEEP_EVERY_S
        if sweep:
            self._swept_at = self._clock()
        params = {"bucket": bucket, "burst": rate.burst, "rate": rate.per_second, "want": want}
        granted, tokens = await self._store._call(self._lease, params, self._idle if sweep else None)
        if granted > 0:
            return Lease(int(granted))
        return Lease(0, max(0.0, (want - float(tokens)) / rate.per_second))

    async def _lease(self, conn: psycopg.AsyncConnection[Any], params: dict[str, object],
                     sweep_idle: float | None) -> tuple[int, float]:
        if not self._ready:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                await conn.execute(_CREATE)  # type: ignore[arg-type]
            self._ready = True
        cursor = await conn.execute(_LEASE, params)  # type: ignore[arg-type]
        row = await cursor.fetchone()
        assert row is not None
        if sweep_idle is not None:
            await conn.execute(_SWEEP, {"idle": sweep_idle})  # type: ignore[arg-type]
        return int(row[0]), float(row[1])
