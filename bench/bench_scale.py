"""Scale-out throughput: tools/call over 1, 2 and 3 server instances sharing one PostgreSQL database.

    python -m pip install -e '.[test]' && python bench/bench_scale.py [--clients 24] [--seconds 4] [--rounds 3]

Starts a throw-away PostgreSQL (tests/_postgres.py: Debian's binaries, as the tests do), an
IAS-like key server, and three ``python -m server`` processes in production mode on one
database. Concurrent clients spread ``tools/call`` round-robin (no affinity, like the Cloud
Foundry router) over the first N instances, half ``create_note`` and half ``list_notes``
(limit 5), for a fixed time; instances not in use sit idle. Each N is measured in every round,
in alternating order, and the median per N is reported as a ratio to one instance.

On a machine with few cores the figures say more about the machine than the design: the
instances, PostgreSQL and the load generator share the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._idp import running_idp  # noqa: E402 - after the path is set
from tests._postgres import running_postgres  # noqa: E402

HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(n: int) -> dict[str, object]:
    if n % 2:
        params = {"name": "list_notes", "arguments": {"limit": 5}}
    else:
        params = {"name": "create_note", "arguments": {"title": f"bench {n}", "body": "x" * 200}}
    return {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}


async def _load(bases: list[str], token: str, clients: int, seconds: float) -> tuple[int, int]:
    done = errors = 0
    counter = itertools.count()
    targets = itertools.cycle(bases)
    stop = time.monotonic() + seconds
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients * len(bases), max_keepalive_connections=clients * len(bases))
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < stop:
                r = await http.post(next(targets) + "/mcp", json=_call(next(counter)), headers=headers)
                if r.status_code == 200 and '"isError":false' in r.text:
                    done += 1
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    return done, errors


def _start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env={**env, "PORT": str(port)},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"instance exited:\n{log.read_text()}")
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"instance at {base} not ready:\n{log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=3)
    args = parser.parse_args()
    counts = list(range(1, args.instances + 1))
    rates: dict[int, list[float]] = {n: [] for n in counts}
    errors = dict.fromkeys(counts, 0)
    with running_postgres() as pg, running_idp() as idp, tempfile.TemporaryDirectory() as tmp:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": tmp,
            "HOST": "127.0.0.1",
            "MCP_AUTH_ISSUER": idp.issuer,
            "MCP_AUTH_AUDIENCE": "mcp-client",
            "MCP_RESOURCE_URL": "https://notes.example/mcp",
            "MCP_NOTES_DB": pg.url(pg.new_database()),
            "MCP_LOG_LEVEL": "WARNING",
            "MCP_WORKERS": os.environ.get("MCP_WORKERS", "1"),  # one process per instance (bench_production: workers)
        }
        ports = [_free_port() for _ in counts]
        logs = [Path(tmp) / f"instance-{i}.log" for i in counts]
        procs = [_start(env, port, log) for port, log in zip(ports, logs, strict=True)]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            for base, proc, log in zip(bases, procs, logs, strict=True):
                _wait_ready(base, proc, log)
            token = idp.mint()
            asyncio.run(_load(bases, token, args.clients, 1.0))  # warm up: keys fetched, pools filled
            for r in range(args.rounds):
                for n in counts if r % 2 == 0 else reversed(counts):
                    done, failed = asyncio.run(_load(bases[:n], token, args.clients, args.seconds))
                    rates[n].append(done / args.seconds)
                    errors[n] += failed
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=20)
    one = statistics.median(rates[1])
    print(f"{args.clients} concurrent clients, tools/call (create_note / list_notes), one PostgreSQL, "
          f"median of {args.rounds} rounds of {args.seconds:g} s; {os.cpu_count()} CPUs shared with the load generator")
    print(f"{'instances':10} {'calls/s':>8} {'errors':>7} {'x one':>6}")
    for n in counts:
        rate = statistics.median(rates[n])
        print(f"{n:<10} {rate:8.0f} {errors[n]:7d} {rate / one:6.2f}")


if __name__ == "__main__":
    main()
