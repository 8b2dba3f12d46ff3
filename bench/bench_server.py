"""End-to-end throughput: this server against the bare MCP SDK, measured in the same run.

    python -m pip install -e '.[test]' && python bench/bench_server.py [--clients 16] [--seconds 5]

Each app runs in its own uvicorn process on 127.0.0.1; 16 concurrent clients send
``tools/call whoami`` (JSON responses, stateless) for a fixed time. The bare SDK has no
auth at all, so the ratio is what the whole security layer costs: Host/Origin checks,
bearer-token verification (a cached token, as real clients reuse theirs), the per-tool
gate and the audit line (written to a null handler here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, headers: dict[str, str], clients: int, seconds: float) -> tuple[int, int]:
    done = errors = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=10) as http:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < stop:
                r = await http.post(url, json=CALL, headers=headers)
                if r.status_code == 200 and '"isError":false' in r.text:
                    done += 1
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    return done, errors


def _serve(factory: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        f"bench._apps:{factory}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{factory} did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"bare": [], "full": []}
    errors = {"bare": 0, "full": 0}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        try:
            for name in ("bare", "full"):
                port = _free_port()
                base = f"http://127.0.0.1:{port}"
                servers[name] = (_serve(name, port, {"BENCH_BASE_URL": base, "BENCH_DIR": tmp}), base)
            headers = {"bare": {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}}
            full_base = servers["full"][1]
            token = httpx.post(
                f"{full_base}/dev-ias/oauth2/token",
                auth=("dev-read", "dev-read-secret"),
                data={"grant_type": "client_credentials"},
            ).json()["access_token"]
            headers["full"] = {**headers["bare"], "Authorization": f"Bearer {token}"}
            for name in servers:  # warm up
                asyncio.run(_load(f"{servers[name][1]}/mcp", headers[name], args.clients, 1.0))
            for _ in range(args.rounds):  # alternate, so background load hits both alike
                for name in servers:
                    done, failed = asyncio.run(
                        _load(f"{servers[name][1]}/mcp", headers[name], args.clients, args.seconds)
                    )
                    rates[name].append(done / args.seconds)
                    errors[name] += failed
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=15)
    bare, full = statistics.median(rates["bare"]), statistics.median(rates["full"])
    print(f"{args.clients} concurrent clients, tools/call whoami, median of {args.rounds} rounds of {args.seconds:g} s")
    print(f"{'server':40} {'req/s':>8} {'errors':>7} {'x bare':>7}")
    print(f"{'bare MCP SDK (no auth)':40} {bare:8.0f} {errors['bare']:7d} {1.0:7.2f}")
    print(f"{'this project (auth, gate, audit)':40} {full:8.0f} {errors['full']:7d} {full / bare:7.2f}")


if __name__ == "__main__":
    main()
