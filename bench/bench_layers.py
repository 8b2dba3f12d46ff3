"""Where a ``tools/call`` spends its CPU, without an HTTP server: the four apps called in-process.

    python -m pip install -e '.[test]'
    python bench/bench_layers.py              # ~1 min
    python bench/bench_layers.py --quick      # seconds; what tests/test_bench.py runs

The apps of ``bench/_apps.py`` (``floor``, ``sdk``, ``noauth``, ``ours``) are built in this
process and called directly as ASGI apps with the same pre-built ``tools/call whoami`` request
``bench_server.py`` sends, in both framings. ``ours`` verifies a reused token from the dev issuer
(its key fetch goes to the issuer in this process). Batches are interleaved (every app once per
round, alternating order) and timed in CPU time of this thread; the table shows medians of the
per-batch CPU per request. With no sockets and no HTTP parsing, this is the part of a request
that is the app's own. For ``ours`` it also shows the SDK's single-exchange dispatch (``serve_one``:
request and argument validation, the SDK's middleware and ours, the tool, result shaping) apart
from everything around it, which says what an SDK-based server can at best come to.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE_URL = "http://127.0.0.1:9"  # never dialled: every request is an in-process ASGI call
APPS = ("floor", "sdk", "noauth", "ours")
FRAMINGS = ("2025-11-25", "2026-07-28")

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 9)}


def _request(framing: str, token: str | None) -> tuple[dict[str, Any], bytes]:
    from bench.bench_server import ENVELOPE

    params: dict[str, Any] = {"name": "whoami", "arguments": {}}
    headers = [(b"host", b"127.0.0.1:9"), (b"content-type", b"application/json"),
               (b"accept", b"application/json, text/event-stream"), (b"mcp-protocol-version", framing.encode())]
    if framing == "2026-07-28":
        params["_meta"] = ENVELOPE
        headers += [(b"mcp-method", b"tools/call"), (b"mcp-name", b"whoami")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params},
                      separators=(",", ":")).encode()
    headers.append((b"content-length", str(len(body)).encode()))
    return _scope("POST", "/mcp", headers), body


async def _call(app: App, scope: dict[str, Any], body: bytes) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(dict(scope), receive, send)
    return sent


async def _start(app: App, stack: contextlib.AsyncExitStack) -> None:
    """Run the app's lifespan startup now and its shutdown when ``stack`` closes."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                     inbox.get, outbox.put))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"lifespan failed: {started}")

    async def stop() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    stack.push_async_callback(stop)


def _ours() -> App:
    """``bench/_apps.py``'s ``ours``, its key fetches answered by the dev issuer in this process."""
    import httpx

    from auth import JWTVerifier
    from bench import _apps

    holder: list[App] = []

    async def itself(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await holder[0](scope, receive, send)

    def verifier_for(settings: Any) -> Any:
        return JWTVerifier(settings.auth, client=httpx.AsyncClient(transport=httpx.ASGITransport(app=itself)))

    app = _apps.dev_app(verifier_for=verifier_for)
    holder.append(app)
    return app


async def _token(app: App) -> str:
    basic = base64.b64encode(b"dev-full:dev-full-secret")
    headers = [(b"host", b"127.0.0.1:9"), (b"content-type", b"application/x-www-form-urlencoded"),
               (b"authorization", b"Basic " + basic)]
    sent = await _call(app, _scope("POST", "/dev-ias/oauth2/token", headers), b"grant_type=client_credentials")
    return str(json.loads(sent[1]["body"])["access_token"])


class _DispatchClock:
    """CPU time spent inside the SDK's single-exchange dispatch, while ``on`` (``ours`` only)."""

    def __init__(self) -> None:
        self.on = False
        self.spent = 0.0

    def install(self) -> None:
        import server._transport as transport

        inner = transport._serve_one

        async def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return await inner(*args, **kwargs)
            began = time.thread_time()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.spent += time.thread_time() - began

        transport._serve_one = timed  # type: ignore[assignment]  # this benchmark process only


async def _measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    from bench import _apps

    clock = _DispatchClock()
    clock.install()
    results: dict[str, dict[str, list[float]]] = {}
    async with contextlib.AsyncExitStack() as stack:
        apps: dict[str, App] = {}
        for name in APPS:
            apps[name] = _ours() if name == "ours" else getattr(_apps, name)()
            await _start(apps[name], stack)
        token = await _token(apps["ours"])
        for framing in FRAMINGS:
            requests = {name: _request(framing, token if name in ("ours", "noauth") else None) for name in APPS}
            for name in APPS:  # warm up, and check every app answers the call
                for _ in range(args.per):
                    sent = await _call(apps[name], *requests[name])
                if sent[0]["status"] != 200 or b'"isError":false' not in sent[1]["body"]:
                    raise RuntimeError(f"{name} ({framing}) does not answer the call: {sent}")
            cpu: dict[str, list[float]] = {name: [] for name in (*APPS, "ours: SDK dispatch")}
            for batch in range(args.batches):
                for name in APPS if batch % 2 == 0 else APPS[::-1]:
                    clock.on, clock.spent = name == "ours", 0.0
                    began = time.thread_time()
                    for _ in range(args.per):
                        await _call(apps[name], *requests[name])
                    cpu[name].append((time.thread_time() - began) / args.per)
                    if name == "ours":
                        cpu["ours: SDK dispatch"].append(clock.spent / args.per)
                    clock.on = False
            results[framing] = cpu
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=15, help="interleaved batches per framing")
    parser.add_argument("--per", type=int, default=300, help="requests per batch")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.per = 2, 20
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCH_BASE_URL"], os.environ["BENCH_DIR"] = BASE_URL, tmp
        try:
            import uvloop
        except ImportError:  # pragma: no cover (uvloop is a runtime dependency)
            results = asyncio.run(_measure(args))
        else:
            results = uvloop.run(_measure(args))
    print(f"tools/call whoami as in-process ASGI calls, {args.batches} interleaved batches of {args.per}; "
          "CPU per request (median of batches)")
    print(f"{'framing':10} {'floor':>8} {'sdk':>8} {'noauth':>8} {'ours':>8}   "
          f"{'ours: SDK dispatch':>18} {'ours: the rest':>14}  {'SDK dispatch / floor':>20}")
    for framing, cpu in results.items():
        med = {name: statistics.median(values) * 1e6 for name, values in cpu.items()}
        dispatch = med["ours: SDK dispatch"]
        print(f"{framing:10} {med['floor']:6.1f}µs {med['sdk']:6.1f}µs {med['noauth']:6.1f}µs {med['ours']:6.1f}µs   "
              f"{dispatch:16.1f}µs {med['ours'] - dispatch:12.1f}µs  {dispatch / med['floor']:19.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
