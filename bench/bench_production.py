"""Production settings end to end: the cost of per-client rate limits, and 1 worker against 2.

    python -m pip install -e '.[test]'
    python bench/bench_production.py                 # both parts (~1 min)
    python bench/bench_production.py --part limits   # rate limiting on vs off
    python bench/bench_production.py --part workers  # MCP_WORKERS=1 vs 2
    python bench/bench_production.py --quick         # seconds; what tests/test_bench.py runs

**limits**: the app ``python -m server --dev`` builds (``bench/_apps.py``'s ``ours``), once with no
limit and once with ``MCP_RATE_LIMIT_READ``/``WRITE`` set so high that no request is refused:
the difference is what the bookkeeping costs every request (the read-or-write decision, one
bucket looked up and charged). Both in their own uvicorn process (httptools, uvloop), measured in
interleaved rounds; the ratio is the median of the per-round ratios (limits on / off), with its range.

**workers**: ``python -m server`` in production mode (a local IAS look-alike, SQLite), once with
``MCP_WORKERS=1`` and once with ``MCP_WORKERS=2``, side by side, measured in interleaved rounds.
Server CPU per request is the process tree's (parent and workers); "split" is how the two
workers shared that CPU. The load generator (this process) shares the machine's cores with the
servers, so on a 2-core machine the figure says as much about the machine as about the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_server import (  # noqa: E402 - after the path is set
    FRAMINGS,
    _cpu_seconds,
    _free_port,
    _load,
    _request,
    _run_uvloop,
    _token,
    _tree,
    _wait_ready,
)

LIMITS = {"MCP_RATE_LIMIT_READ": "1000000/s:1000000", "MCP_RATE_LIMIT_WRITE": "1000000/s:1000000"}


def limited() -> Any:
    """``ours`` with per-client rate limits on, high enough that no request is refused (a uvicorn factory)."""
    from bench._apps import _configure_audit
    from server._app import create_app
    from server._dev_issuer import DevIssuer
    from server._main import dev_settings

    base = os.environ["BENCH_BASE_URL"]
    issuer = DevIssuer(base)
    env = {"MCP_NOTES_DB": str(Path(os.environ["BENCH_DIR"]) / f"notes-{os.getpid()}.db"), **LIMITS}
    settings = dev_settings(env, base, issuer)
    assert settings.rate_limits.enabled
    return create_app(settings, extra_routes=[*issuer.well_known_routes(), issuer.mount()], audit=_configure_audit())


def _uvicorn(target: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--factory", target, "--host", "127.0.0.1", "--port", str(port),
            "--http", "httptools", "--loop", "uvloop", "--lifespan", "on", "--log-level", "warning",
            "--no-access-log"]


Command = tuple[list[str], dict[str, str], int]  # argv, environment, port


@contextlib.contextmanager
def _processes(commands: dict[str, Command]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (command, env, _port) in commands.items():
            procs[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
        for name, (_command, _env, port) in commands.items():
            _wait_ready(port, procs[name], name)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]" if values else "-"


def _measure(port: int, request: bytes, k: int, seconds: float, pid: int) -> tuple[float, float, int]:
    """(requests/s, server CPU seconds, errors) of one measurement."""
    before = _cpu_seconds(pid)
    sample = _run_uvloop(_load(port, request, k, seconds))
    return sample.done / seconds, _cpu_seconds(pid) - before, sample.errors


def bench_limits(ks: list[int], seconds: float, rounds: int) -> int:
    apps = {"off": "bench._apps:ours", "on": "bench.bench_production:limited"}
    ports = {name: _free_port() for name in apps}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {name: (_uvicorn(target, ports[name]),
                           {**os.environ, "BENCH_BASE_URL": f"http://127.0.0.1:{ports[name]}", "BENCH_DIR": tmp,
                            "PYTHONPATH": str(ROOT)}, ports[name])
                    for name, target in apps.items()}
        with _processes(commands) as procs:
            requests = {name: {f: _request(ports[name], f, _token(ports[name])) for f in FRAMINGS} for name in apps}
            for name in apps:  # warm-up: imports, caches, the token's first verification
                for framing in FRAMINGS:
                    if _run_uvloop(_load(ports[name], requests[name][framing], 2, min(0.5, seconds))).done == 0:
                        print(f"{name} fails", file=sys.stderr)
                        return 1
            rates: dict[tuple[str, int, str], list[float]] = {}
            cpu: dict[tuple[str, int, str], list[float]] = {}
            ratios: dict[tuple[str, int], list[float]] = {}
            errors = 0
            for round_no in range(rounds):
                for framing in FRAMINGS:
                    for k in ks:
                        order = ["off", "on"] if round_no % 2 == 0 else ["on", "off"]
                        got: dict[str, float] = {}
                        for name in order:
                            rate, used, failed = _measure(ports[name], requests[name][framing], k, seconds,
                                                          procs[name].pid)
                            errors += failed
                            got[name] = rate
                            rates.setdefault((framing, k, name), []).append(rate)
                            cpu.setdefault((framing, k, name), []).append(used / max(1.0, rate * seconds) * 1000)
                        ratios.setdefault((framing, k), []).append(got["on"] / got["off"])
    print(f"rate limiting: tools/call whoami over HTTP/1.1 keep-alive, limits on (never reached) vs off, "
          f"{rounds} interleaved rounds of {seconds:g} s; on/off: median of per-round ratios [range]")
    header = f"{'framing':10} {'K':>3} {'off req/s':>9} {'on req/s':>9} {'on/off':>20} {'CPU ms/req off':>14} {'on':>6}"
    print(header)
    print("-" * len(header))
    for framing in FRAMINGS:
        for k in ks:
            off, on = (framing, k, "off"), (framing, k, "on")
            print(f"{framing:10} {k:3d} {statistics.median(rates[off]):9.0f} {statistics.median(rates[on]):9.0f} "
                  f"{_median_range(ratios[(framing, k)]):>20} {statistics.median(cpu[off]):14.3f} "
                  f"{statistics.median(cpu[on]):6.3f}")
    layer = _layer_cost_us(20_000 if seconds < 1 else 200_000)
    cpu_off = statistics.median(cpu[(FRAMINGS[0], ks[-1], "off")]) * 1000
    print(f"in process: the rate-limit layer (classify, look up and charge a bucket) costs {layer:.2f} µs a request, "
          f"{layer / cpu_off * 100:.1f}% of the server CPU per request with limits off ({cpu_off:.0f} µs)")
    print(f"errors: {errors}")
    return 0 if errors == 0 else 1


def _layer_cost_us(calls: int) -> float:
    """Median over 5 runs of (RateLimitGate around a no-op app) - (the no-op app), per call, in µs."""
    import asyncio
    import time

    from auth import VerifiedToken
    from auth.mcp import Rate, RateLimiter, RateLimitGate

    token = VerifiedToken(subject="bench", client_id="bench", issuer="https://ias.example", audience=("a",),
                          permissions=frozenset(), expires_at=2**40, tenant="t")
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    scope = {"type": "http", "method": "POST", "auth.token": token, "mcp.message": message}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        return None

    limiter = RateLimiter(read=Rate(1e6, 1_000_000), write=Rate(1e6, 1_000_000))
    gate = RateLimitGate(inner, limiter=limiter, read_only={"whoami"}.__contains__)

    async def timed(app: Any) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await app(scope, None, None)
        return (time.perf_counter() - started) / calls * 1e6

    async def run() -> list[float]:
        return [await timed(gate) - await timed(inner) for _ in range(5)]

    return statistics.median(asyncio.run(run()))


def bench_workers(ks: list[int], seconds: float, rounds: int) -> int:
    from tests._idp import running_idp

    counts = (1, 2)
    with tempfile.TemporaryDirectory() as tmp, running_idp() as idp:
        ports = {n: _free_port() for n in counts}
        commands: dict[str, Command] = {}
        for n in counts:
            env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "PYTHONPATH": str(ROOT),
                   "PORT": str(ports[n]), "MCP_AUTH_ISSUER": idp.issuer, "MCP_AUTH_AUDIENCE": "mcp-client",
                   "MCP_RESOURCE_URL": f"http://127.0.0.1:{ports[n]}/mcp",
                   "MCP_NOTES_DB": str(Path(tmp) / f"notes-{n}.db"), "MCP_LOG_LEVEL": "WARNING",
                   "MCP_WORKERS": str(n)}
            commands[f"{n} worker(s)"] = ([sys.executable, "-m", "server"], env, ports[n])
        with _processes(commands) as procs:
            pids = {n: procs[f"{n} worker(s)"].pid for n in counts}
            token = idp.mint()
            request = {n: _request(ports[n], "2025-11-25", token) for n in counts}
            for n in counts:
                if _run_uvloop(_load(ports[n], request[n], 4, min(0.5, seconds))).done == 0:
                    print(f"{n} worker(s) fails", file=sys.stderr)
                    return 1
            rates: dict[tuple[int, int], list[float]] = {}
            cpu: dict[tuple[int, int], list[float]] = {}
            split: dict[int, list[float]] = {}
            ratios: dict[int, list[float]] = {}
            errors = 0
            for round_no in range(rounds):
                for k in ks:
                    got: dict[int, float] = {}
                    for n in (counts if round_no % 2 == 0 else tuple(reversed(counts))):
                        workers = [p for p in _tree(pids[n]) if p != pids[n]]
                        each = [_cpu_seconds_one(p) for p in workers]
                        rate, used, failed = _measure(ports[n], request[n], k, seconds, pids[n])
                        if n == 2 and len(workers) == 2:
                            spent = [_cpu_seconds_one(p) - b for p, b in zip(workers, each, strict=True)]
                            split.setdefault(k, []).append(max(spent) / max(1e-9, sum(spent)))
                        errors += failed
                        got[n] = rate
                        rates.setdefault((n, k), []).append(rate)
                        cpu.setdefault((n, k), []).append(used / max(1.0, rate * seconds) * 1000)
                    ratios.setdefault(k, []).append(got[2] / got[1])
    print(f"workers: python -m server (production, SQLite), tools/call whoami (2025-11-25), MCP_WORKERS=1 vs 2, "
          f"{rounds} interleaved rounds of {seconds:g} s; {os.cpu_count()} CPUs, load generator included")
    header = (f"{'K':>3} {'1 worker req/s':>14} {'2 workers req/s':>15} {'2/1':>20} {'CPU ms/req 1':>12} "
              f"{'2':>6} {'busier worker':>13}")
    print(header)
    print("-" * len(header))
    for k in ks:
        busier = f"{statistics.median(split[k]) * 100:.0f}%" if split.get(k) else "-"
        print(f"{k:3d} {statistics.median(rates[(1, k)]):14.0f} {statistics.median(rates[(2, k)]):15.0f} "
              f"{_median_range(ratios[k]):>20} {statistics.median(cpu[(1, k)]):12.3f} "
              f"{statistics.median(cpu[(2, k)]):6.3f} {busier:>13}")
    print(f"errors: {errors}")
    return 0 if errors == 0 else 1


def _cpu_seconds_one(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("limits", "workers", "both"), default="both")
    parser.add_argument("--clients", default="1,16", help="comma-separated connection counts K (default 1,16)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.clients = 0.3, 1, "1,4"
    ks = [int(k) for k in args.clients.split(",")]
    status = 0
    if args.part in ("limits", "both"):
        status |= bench_limits(ks, args.seconds, args.rounds)
    if args.part in ("workers", "both"):
        if args.part == "both":
            print()
        status |= bench_workers(ks, args.seconds, args.rounds)
    return status


if __name__ == "__main__":
    sys.exit(main())
