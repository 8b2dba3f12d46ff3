"""Serve from several processes on one port: the worker count, and a fork-per-worker supervisor.

The parent binds the socket once (``server._main``), then forks the workers; each worker builds
its own app (its own token cache, key sets, rate-limit buckets, store pool) and serves the
inherited socket; the kernel hands each new connection to one of them. The parent only watches:

- **SIGTERM or SIGINT** to the parent: every worker gets SIGTERM and drains (in-flight requests
  finish, `server._main._GracefulServer`), and the parent exits 0 once all have exited 0; a worker
  still running ``stop_timeout`` seconds later is killed and the parent exits 1.
- **A worker dying** unexpectedly after it had served for `RESTART_AFTER_S` seconds is replaced;
  one dying sooner (a start-up failure, a crash loop) stops the others and the parent exits with
  its status, so the platform restarts the instance.
- **The parent dying** (SIGKILL): each worker gets SIGTERM from the kernel (Linux
  ``PR_SET_PDEATHSIG``), so no orphan keeps serving the port.

The default count (`default_workers`) is the number of CPUs the container may use: the cgroup
CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``) rounded down, else the
CPUs this process may run on (``os.sched_getaffinity``), at most one per `WORKER_MEMORY` bytes of
the cgroup memory limit (so a 256 MiB Cloud Foundry container on a 32-core host serves from one
process), at least 1. The parsing functions are pure; `container_limits` reads the files.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "parse_cpu_max",
    "parse_cfs_quota",
    "parse_memory_limit",
    "cgroup_path",
    "container_limits",
    "available_cpus",
    "default_workers",
    "detected_workers",
    "run_workers",
    "WORKER_MEMORY",
    "RESTART_AFTER_S",
]

log = logging.getLogger("server")

WORKER_MEMORY = 256 * 1024 * 1024
"""Memory budget per worker for the default count (a worker's RSS is ~60-90 MB; the rest is headroom)."""
RESTART_AFTER_S = 10.0
"""A worker that dies after serving this long is replaced; sooner, the whole server stops."""
_UNLIMITED_MEMORY = 1 << 60  # cgroup v1 writes "no limit" as a huge page-rounded number (9223372036854771712)
_CGROUP = Path("/sys/fs/cgroup")


# -- the worker count (pure) ---------------------------------------------------------------------


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (``"quota period"``, ``"max period"``); None: no quota."""
    parts = text.split()
    if len(parts) not in (1, 2) or parts[0] == "max":
        return None
    period = parts[1] if len(parts) == 2 else "100000"
    return _ratio(parts[0], period)


def parse_cfs_quota(quota: str, period: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``; None: no quota (-1)."""
    return _ratio(quota.strip(), period.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def parse_memory_limit(text: str) -> int | None:
    """Bytes allowed by v2 ``memory.max`` or v1 ``memory.limit_in_bytes``; None: no limit (``max``, huge)."""
    raw = text.strip()
    if not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return value if 0 < value < _UNLIMITED_MEMORY else None


def cgroup_path(proc_self_cgroup: str, controller: str | None) -> str | None:
    """This process's cgroup path from ``/proc/self/cgroup``: the v2 line (``0::/path``) when
    ``controller`` is None, else the v1 line naming ``controller`` (``4:memory:/path``)."""
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if controller is None and hierarchy == "0" and names == "":
            return path
        if controller is not None and controller in names.split(","):
            return path
    return None


def default_workers(cpu_limit: float | None, cpus: int, memory_limit: int | None, *,
                    per_worker: int = WORKER_MEMORY, most: int = 64) -> int:
    """How many workers to run (pure): the CPU quota rounded down (or ``cpus`` without one), at most
    one per ``per_worker`` bytes of the memory limit, between 1 and ``most``."""
    count = max(1, cpus)
    if cpu_limit is not None:
        count = min(count, max(1, math.floor(cpu_limit)))
    if memory_limit is not None:
        count = min(count, max(1, memory_limit // per_worker))
    return max(1, min(count, most))


# -- reading the container's limits (I/O) --------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _dirs(root: Path, path: str | None) -> list[Path]:
    """``root/path`` and its ancestors up to ``root`` (a limit anywhere above applies too); ``root`` alone
    when the path is not visible (a container's cgroup namespace shows its own cgroup as the root)."""
    leaf = root / path.strip("/") if path else root
    if not leaf.is_dir():
        return [root]
    found = [leaf]
    while found[-1] != root and root in found[-1].parents:
        found.append(found[-1].parent)
    return found


def container_limits(root: Path = _CGROUP, proc_self_cgroup: str | None = None) -> tuple[float | None, int | None]:
    """``(CPUs, memory bytes)`` the cgroup allows this process (None: no limit), v2 or v1; the
    smallest limit along the cgroup's ancestors counts."""
    proc = proc_self_cgroup if proc_self_cgroup is not None else (_read(Path("/proc/self/cgroup")) or "")
    cpu: list[float] = []
    memory: list[int] = []
    if (root / "cgroup.controllers").is_file():  # v2: one unified hierarchy
        for folder in _dirs(root, cgroup_path(proc, None)):
            if (text := _read(folder / "cpu.max")) is not None and (value := parse_cpu_max(text)) is not None:
                cpu.append(value)
            if (text := _read(folder / "memory.max")) is not None and (limit := parse_memory_limit(text)):
                memory.append(limit)
    else:  # v1: one hierarchy per controller
        for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            if (root / name).is_dir():
                for folder in _dirs(root / name, cgroup_path(proc, "cpu")):
                    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                    if quota is not None and period is not None and (value := parse_cfs_quota(quota, period)):
                        cpu.append(value)
                break
        if (root / "memory").is_dir():
            for folder in _dirs(root / "memory", cgroup_path(proc, "memory")):
                if (text := _read(folder / "memory.limit_in_bytes")) is not None and (
                        limit := parse_memory_limit(text)):
                    memory.append(limit)
    return (min(cpu) if cpu else None), (min(memory) if memory else None)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def detected_workers() -> int:
    """`default_workers` for this container."""
    cpu, memory = container_limits()
    return default_workers(cpu, available_cpus(), memory)


# -- the supervisor --------------------------------------------------------------------------------

_WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send this process SIGTERM when the parent dies (no orphan keeps the port)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def run_workers(count: int, serve: Callable[[int], int], *, on_stop: Callable[[], None] | None = None,
                stop_timeout: float = 12.0, clock: Callable[[], float] = time.monotonic) -> int:
    """Fork ``count`` workers, each running ``serve(index)`` (build the app, serve the inherited
    socket, return an exit status); supervise them until a stop signal; return the exit status.

    ``on_stop`` runs in the parent when the stop begins: close the parent's copy of the listening
    socket there, so that once the workers have closed theirs, new connections are refused at
    once instead of waiting in the backlog of a socket nobody accepts from.

    Call it from the main thread before any other thread or event loop exists (``fork`` copies
    only the calling thread).

    Raises:
        RuntimeError: other threads are running.
    """
    if threading.active_count() > 1:
        raise RuntimeError("run_workers must fork before any other thread starts")
    parent = os.getpid()
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)

    def spawn(index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                _die_with_parent(parent)
                signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
                log.info("worker %d started (pid %d)", index, os.getpid())
                status = serve(index)
            except SystemExit as exc:  # uvicorn exits on a configuration it cannot load
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - whatever happens, the worker must not return into the parent's code
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(status)
        children[pid] = (index, clock())

    stop_at: float | None = None
    killed = False
    status = 0

    def stop(why: str, code: int) -> None:
        nonlocal stop_at, status
        if stop_at is None:
            stop_at = clock() + stop_timeout
            status = code
            log.info("stopping %d worker(s): %s", len(children), why)
            if on_stop is not None:
                on_stop()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    try:
        for index in range(count):
            spawn(index)
        while children:
            timeout = 1.0 if stop_at is None else max(0.05, min(1.0, stop_at - clock()))
            received = signal.sigtimedwait(_WATCHED, timeout)
            if received is not None and received.si_signo != signal.SIGCHLD:
                stop(f"signal {signal.Signals(received.si_signo).name}", 0)
            while children:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                index, started = children.pop(pid)
                code = os.waitstatus_to_exitcode(wait_status)
                if stop_at is not None:
                    if code != 0 and status == 0:
                        status = code if code > 0 else 1
                    continue
                log.error("worker %d (pid %d) exited with status %d", index, pid, code)
                if clock() - started >= RESTART_AFTER_S:
                    spawn(index)
                else:
                    stop(f"worker {index} failed within {RESTART_AFTER_S:g} s of its start", code if code > 0 else 1)
            if stop_at is not None and not killed and clock() >= stop_at and children:
                log.error("%d worker(s) still running %g s after the stop; killing them", len(children), stop_timeout)
                killed = True
                status = status or 1
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
    finally:
        # A second stop signal may be pending: drop it rather than die of it (or raise KeyboardInterrupt).
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return status
