"""End to end: an MCP ``tools/call`` over HTTP, four servers side by side in one run.

    python -m pip install -e '.[test]'
    python bench/bench_server.py                     # the full run the README shows (~3 min)
    python -m pip install -e '.[test,bench]'         # granian, for the HTTP-server comparison
    python bench/bench_server.py --server uvicorn-fast,uvicorn-h11,granian
    python bench/bench_server.py --quick             # seconds; what tests/test_bench.py runs

Apps (``bench/_apps.py``), each in its own server process on 127.0.0.1, all on the same HTTP
server implementation: ``ours`` (this project, auth on, a reused token), ``otel`` (``ours`` with
tracing and metrics on, exported over OTLP/HTTP to a sink process), ``noauth`` (the same
stack with a constant principal), ``sdk`` (the bare ``mcp`` SDK `MCPServer`, no auth) and
``floor`` (a bare ASGI app that parses the JSON-RPC request and answers the same result).

Both request framings: ``2025-11-25`` (JSON-RPC body, ``MCP-Protocol-Version: 2025-11-25``,
stateless, no session) and ``2026-07-28`` (``Mcp-Method``/``Mcp-Name`` headers and the
``_meta`` envelope in the params, as the SDK client sends it). K concurrent keep-alive
connections (default 1 and 16), each sending pre-built HTTP/1.1 requests back to back from a
small asyncio client in this process (it costs a fraction of what the servers do; the
machine's cores are shared by client and servers alike).

Rounds are interleaved (every app once per round, in a rotating order), so background load
hits all apps alike; ratios are medians of the per-round ratios, with their range. The cost of
telemetry is printed as ``otel / ours`` (on / off) from the same rounds. Server
CPU per request comes from ``/proc/<pid>/stat`` (utime+stime of the server's process tree)
before and after each measurement; RSS is the process tree's after all the load.
Nothing is installed at run time: uvicorn, httptools and uvloop are runtime dependencies, granian
comes with the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("ours", "otel", "noauth", "sdk", "floor")
FRAMINGS = ("2025-11-25", "2026-07-28")
SERVERS = ("uvicorn-fast", "uvicorn-h11", "granian")
SHIPPED = "uvicorn-fast"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0.1.0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
OK_MARK = b'"isError":false'
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(server: str, app: str, port: int) -> list[str]:
    target = f"bench._apps:{app}"
    if server == "granian":
        return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--loop", "uvloop", "--log-level", "warning",
                "--no-access-log", target]
    http, loop = {"uvicorn-fast": ("httptools", "uvloop"), "uvicorn-h11": ("h11", "asyncio")}[server]
    return [sys.executable, "-m", "uvicorn", "--factory", target, "--host", "127.0.0.1", "--port", str(port),
            "--http", http, "--loop", loop, "--lifespan", "on", "--log-level", "warning", "--no-access-log"]


# --- process accounting (/proc) ---------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (granian serves from a child process)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return pids


def _cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total / TICK


def _rss_mb(pid: int) -> float:
    kb = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    kb += int(line.split()[1])
    return kb / 1024


# --- the load generator -----------------------------------------------------------------------

@dataclass
class Sample:
    done: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error: bytes = b""


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending the same pre-built request back to back."""

    def __init__(self, request: bytes, sample: Sample, stop_at: float, finished: asyncio.Future[None]) -> None:
        self.request, self.sample, self.stop_at, self.finished = request, sample, stop_at, finished
        self.buffer = b""
        self.need = -1
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.started = time.perf_counter()
        self.transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].lower()
                at = head.find(b"content-length:")
                if at < 0:
                    self._fail(b"no content-length: " + head[:200])
                    return
                length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
                self.need = end + 4 + length
            if len(self.buffer) < self.need:
                return
            response, self.buffer, self.need = self.buffer[:self.need], self.buffer[self.need:], -1
            now = time.perf_counter()
            if response.startswith(b"HTTP/1.1 200") and OK_MARK in response:
                self.sample.done += 1
                self.sample.latencies.append(now - self.started)
            else:
                self.sample.errors += 1
                self.sample.first_error = self.sample.first_error or response[:300]
            if now >= self.stop_at:
                self.transport.close()  # type: ignore[attr-defined]
                return
            self._send()

    def _fail(self, why: bytes) -> None:
        self.sample.errors += 1
        self.sample.first_error = self.sample.first_error or why
        self.transport.close()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def _load(port: int, request: bytes, clients: int, seconds: float) -> Sample:
    loop = asyncio.get_running_loop()
    sample = Sample()
    stop_at = time.perf_counter() + seconds
    finished = [loop.create_future() for _ in range(clients)]
    for fut in finished:
        await loop.create_connection(lambda f=fut: _Connection(request, sample, stop_at, f), "127.0.0.1", port)
    await asyncio.wait_for(asyncio.gather(*finished), timeout=seconds + 30)
    return sample


def _request(port: int, framing: str, token: str | None) -> bytes:
    params: dict[str, object] = {"name": "whoami", "arguments": {}}
    headers = [f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
               "Accept: application/json, text/event-stream", f"MCP-Protocol-Version: {framing}"]
    if framing == "2026-07-28":
        params["_meta"] = ENVELOPE
        headers += ["Mcp-Method: tools/call", "Mcp-Name: whoami"]
    if token is not None:
        headers.append(f"Authorization: Bearer {token}")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params},
                      separators=(",", ":")).encode()
    head = "POST /mcp HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


# --- servers ----------------------------------------------------------------------------------

@dataclass
class Running:
    server: str
    app: str
    port: int
    proc: subprocess.Popen[bytes]
    requests: dict[str, bytes] = field(default_factory=dict)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not start")


def _token(port: int) -> str:
    import httpx

    response = httpx.post(f"http://127.0.0.1:{port}/dev-ias/oauth2/token", auth=("dev-full", "dev-full-secret"),
                          data={"grant_type": "client_credentials"}, timeout=10)
    response.raise_for_status()
    return response.json()["access_token"]


@contextlib.contextmanager
def _servers(servers: list[str], apps: list[str]) -> Iterator[list[Running]]:
    running: list[Running] = []
    sink: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sink_port = _free_port()
            if "otel" in apps:  # where the otel app exports: its own process, like a collector
                sink = subprocess.Popen(_command(SHIPPED, "otlp_sink", sink_port), cwd=ROOT,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)})
            for server in servers:
                for app in apps:
                    port = _free_port()
                    env = {**os.environ, "BENCH_BASE_URL": f"http://127.0.0.1:{port}", "BENCH_DIR": tmp,
                           "PYTHONPATH": str(ROOT), "BENCH_OTLP": f"http://127.0.0.1:{sink_port}"}
                    proc = subprocess.Popen(_command(server, app, port), cwd=ROOT, env=env)
                    running.append(Running(server, app, port, proc))
            for r in running:
                _wait_ready(r.port, r.proc, f"{r.app} on {r.server}")
                token = _token(r.port) if r.app in ("ours", "otel", "noauth") else None
                r.requests = {framing: _request(r.port, framing, token) for framing in FRAMINGS}
            yield running
        finally:
            procs = [r.proc for r in running] + ([sink] if sink is not None else [])
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


# --- the run ----------------------------------------------------------------------------------

@dataclass
class Cell:
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    done: int = 0
    errors: int = 0
    first_error: bytes = b""


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=SHIPPED,
                        help=f"comma-separated HTTP servers: {', '.join(SERVERS)} (default {SHIPPED}, what ships)")
    parser.add_argument("--clients", default="1,16", help="comma-separated connection counts K (default 1,16)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.clients = 0.3, 1, "1,4"
    servers = [s.strip() for s in args.server.split(",") if s.strip()]
    if unknown := set(servers) - set(SERVERS):
        parser.error(f"unknown server {sorted(unknown)}; choose from {SERVERS}")
    ks = [int(k) for k in args.clients.split(",")]
    run = _run_uvloop
    cells: dict[tuple[str, str, int, str], Cell] = {}
    ratios: dict[tuple[str, str, int, str, str], list[float]] = {}
    rss: dict[tuple[str, str], float] = {}
    started = time.monotonic()
    with _servers(servers, list(APPS)) as running:
        for r in running:  # warm-up: imports, caches, the token's first verification
            for framing in FRAMINGS:
                sample = run(_load(r.port, r.requests[framing], 2, min(0.5, args.seconds)))
                if sample.done == 0:
                    print(f"{r.app} on {r.server} ({framing}) fails: {sample.first_error!r}", file=sys.stderr)
                    return 1
        for round_no in range(args.rounds):
            for framing in FRAMINGS:
                for k in ks:
                    for server in servers:
                        group = [r for r in running if r.server == server]
                        shift = round_no % len(group)
                        rate: dict[str, float] = {}
                        for r in group[shift:] + group[:shift]:
                            cpu_before = _cpu_seconds(r.proc.pid)
                            sample = run(_load(r.port, r.requests[framing], k, args.seconds))
                            cpu = _cpu_seconds(r.proc.pid) - cpu_before
                            cell = cells.setdefault((server, framing, k, r.app), Cell())
                            rate[r.app] = sample.done / args.seconds
                            cell.rates.append(rate[r.app])
                            cell.latencies += sample.latencies
                            cell.cpu += cpu
                            cell.done += sample.done
                            cell.errors += sample.errors
                            cell.first_error = cell.first_error or sample.first_error
                        for app in APPS:
                            for base in ("sdk", "floor", "ours"):
                                if rate.get(base):
                                    ratios.setdefault((server, framing, k, app, base), []).append(
                                        rate[app] / rate[base])
        for r in running:
            rss[(r.server, r.app)] = _rss_mb(r.proc.pid)
    _print(servers, ks, cells, ratios, rss, args, time.monotonic() - started)
    return 0


def _run_uvloop(coro):  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _print(servers: list[str], ks: list[int], cells: dict[tuple[str, str, int, str], Cell],
           ratios: dict[tuple[str, str, int, str, str], list[float]], rss: dict[tuple[str, str], float],
           args: argparse.Namespace, elapsed: float) -> None:
    print(f"tools/call whoami over HTTP/1.1 keep-alive, {args.rounds} interleaved rounds of {args.seconds:g} s "
          f"per cell ({elapsed:.0f} s in all); ratios: median of per-round ratios [range]")
    header = (f"{'server':13} {'framing':10} {'K':>3} {'app':7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'CPU ms/req':>10} {'errors':>6}  {'x sdk':>20}  {'x floor':>20}")
    print(header)
    print("-" * len(header))
    for server in servers:
        for framing in FRAMINGS:
            for k in ks:
                for app in APPS:
                    cell = cells[(server, framing, k, app)]
                    cpu = cell.cpu / cell.done * 1000 if cell.done else float("nan")
                    print(f"{server:13} {framing:10} {k:3d} {app:7} {statistics.median(cell.rates):7.0f} "
                          f"{_pct(cell.latencies, 0.5) * 1000:7.2f} {_pct(cell.latencies, 0.99) * 1000:7.2f} "
                          f"{cpu:10.3f} {cell.errors:6d}  "
                          f"{_range(ratios.get((server, framing, k, app, 'sdk'), [])):>20}  "
                          f"{_range(ratios.get((server, framing, k, app, 'floor'), [])):>20}")
    print()
    print("RSS after load (MB): " + ", ".join(f"{s}/{a} {v:.0f}" for (s, a), v in rss.items()))
    _print_telemetry(servers, ks, cells, ratios)
    _print_targets(servers, ks, ratios, rss)
    for key, cell in cells.items():
        if cell.errors:
            print(f"first error {key}: {cell.first_error!r}")


def _print_telemetry(servers: list[str], ks: list[int], cells: dict[tuple[str, str, int, str], Cell],
                     ratios: dict[tuple[str, str, int, str, str], list[float]]) -> None:
    """Telemetry on (otel) / off (ours): throughput ratio from the same rounds, and CPU per request."""
    print()
    print("telemetry on / off (otel / ours: traces and metrics exported over OTLP/HTTP), median of per-round "
          "ratios [range]:")
    for server in servers:
        for framing in FRAMINGS:
            for k in ks:
                values = ratios.get((server, framing, k, "otel", "ours"), [])
                on, off = cells.get((server, framing, k, "otel")), cells.get((server, framing, k, "ours"))
                cpu = ""
                if on and off and on.done and off.done:
                    cpu = f"  CPU ms/req {on.cpu / on.done * 1000:.3f} vs {off.cpu / off.done * 1000:.3f}"
                print(f"  {server:13} {framing:10} K={k:<3d} throughput {_range(values):>20}{cpu}")


TARGETS = (  # issue 11, at K=16: (framing, base, at least)
    ("2025-11-25", "sdk", 1.5),
    ("2026-07-28", "sdk", 1.0),
    ("2025-11-25", "floor", 0.4),
    ("2026-07-28", "floor", 0.4),
)
RSS_TARGET_MB = 120


def _print_targets(servers: list[str], ks: list[int], ratios: dict[tuple[str, str, int, str, str], list[float]],
                   rss: dict[tuple[str, str], float]) -> None:
    """The issue's target table for the shipped server (or the first one run), K=16 when measured."""
    server = SHIPPED if SHIPPED in servers else servers[0]
    k = 16 if 16 in ks else max(ks)
    print()
    print(f"targets (issue 11), {server}, K={k}, medians of per-round ratios:")
    for framing, base, bound in TARGETS:
        values = ratios.get((server, framing, k, "ours", base), [])
        if values:
            ratio = statistics.median(values)
            print(f"  ours with auth / {base:5} {framing}  {ratio:5.2f}x  target >= {bound:.1f}x  "
                  f"{'met' if ratio >= bound else 'NOT MET'}")
    if (server, "ours") in rss:
        mb = rss[(server, "ours")]
        print(f"  RSS of ours after load          {mb:5.0f} MB target <= {RSS_TARGET_MB} MB  "
              f"{'met' if mb <= RSS_TARGET_MB else 'NOT MET'}")


if __name__ == "__main__":
    sys.exit(main())
