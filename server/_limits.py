"""Production settings beyond auth: per-client rate limits and the worker count.

    MCP_RATE_LIMIT_READ=20/s:40       reads per verified client (issuer, tenant, client id); off by default
    MCP_RATE_LIMIT_WRITE=2/s:10       writes (calls of tools not marked read-only); off by default
    MCP_RATE_LIMIT_CLIENTS=10000      buckets kept per kind and process (least recently used dropped)
    MCP_RATE_LIMIT_SHARED=            unset: shared by all instances when PostgreSQL is the store, else
                                      by the worker processes of the instance (shared memory);
                                      false: per process; true: through PostgreSQL, which is required
    MCP_WORKERS=                      unset or auto: the CPUs the container may use (cgroup quota,
                                      else the CPUs this process may run on), at most one per
                                      256 MiB of the memory limit; --dev: always 1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from auth import ConfigError
from auth._ratelimit import parse_rate
from auth.mcp import LeaseSource, Rate, RateLimiter
from tools import NotesStore, PostgresConfig, PostgresLeases, PostgresStore

__all__ = ["RateLimitSettings", "rate_limit_settings", "workers_setting", "rate_limiter", "MAX_WORKERS"]

MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Per-client limits (None: that kind is not limited) and where the buckets live."""

    read: Rate | None = None
    write: Rate | None = None
    max_clients: int = 10_000
    # "postgresql": one budget for all instances, through the PostgreSQL notes store; "workers": one
    # for the worker processes of this instance (shared memory); "no": each process its own
    shared: Literal["no", "workers", "postgresql"] = "workers"

    @property
    def enabled(self) -> bool:
        return self.read is not None or self.write is not None


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"must be true or false, got {raw[:20]!r}")


def rate_limit_settings(env: Mapping[str, str], notes_db: Path | PostgresConfig) -> RateLimitSettings:
    """Parse ``MCP_RATE_LIMIT_*`` (pure).

    Raises:
        ConfigError: naming the setting at fault.
    """
    read = parse_rate(env.get("MCP_RATE_LIMIT_READ", ""), "MCP_RATE_LIMIT_READ")
    write = parse_rate(env.get("MCP_RATE_LIMIT_WRITE", ""), "MCP_RATE_LIMIT_WRITE")
    raw = env.get("MCP_RATE_LIMIT_CLIENTS", "").strip()
    if raw and not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 10_000_000):
        raise ConfigError("MCP_RATE_LIMIT_CLIENTS", f"must be a whole number from 1 to 10000000, got {raw[:20]!r}")
    on_postgres = isinstance(notes_db, PostgresConfig)
    shared = _flag(env, "MCP_RATE_LIMIT_SHARED")
    if shared and not on_postgres:
        raise ConfigError("MCP_RATE_LIMIT_SHARED", "needs PostgreSQL as the notes store (MCP_NOTES_DB or a "
                                                   "postgresql binding): the buckets are shared through it")
    where: Literal["no", "workers", "postgresql"] = "no" if shared is False else (
        "postgresql" if on_postgres else "workers")
    return RateLimitSettings(read=read, write=write, max_clients=int(raw) if raw else 10_000, shared=where)


def workers_setting(env: Mapping[str, str], *, dev: bool = False) -> int | None:
    """``MCP_WORKERS``: a count, or None for the default (`server._workers.default_workers`; 1 under ``--dev``).

    Raises:
        ConfigError: not a whole number from 1 to `MAX_WORKERS` (or ``auto``), or above 1 with ``--dev``.
    """
    raw = env.get("MCP_WORKERS", "").strip().lower()
    if raw in ("", "auto"):
        return 1 if dev else None
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_WORKERS):
        raise ConfigError("MCP_WORKERS", f"must be a whole number from 1 to {MAX_WORKERS}, or auto; got {raw[:20]!r}")
    if dev and int(raw) > 1:
        raise ConfigError("MCP_WORKERS", "--dev serves from one process (the dev issuer keeps its keys, "
                                         "codes and clients in memory); leave it unset or 1")
    return int(raw)


def rate_limiter(
    settings: RateLimitSettings,
    store: NotesStore,
    *,
    leases: LeaseSource | None = None,
) -> RateLimiter | None:
    """The limiter for ``settings`` (None when nothing is limited): buckets in this process, leased
    from the PostgreSQL store when shared through it, else from ``leases`` (the workers' shared
    buckets) when given and shared by workers. Refusals are counted by the app's observer (`protect`)."""
    if not settings.enabled:
        return None
    if settings.shared == "postgresql" and isinstance(store, PostgresStore):
        leases = PostgresLeases(store)
    elif settings.shared != "workers":
        leases = None
    return RateLimiter(read=settings.read, write=settings.write, max_clients=settings.max_clients,
                       leases=leases)
