"""What an onward call costs in tokens: an exchange on a cache miss, and a cache hit, against floors.

    python -m pip install -e '.[test]' && python bench/bench_exchange.py [--calls 200] [--rounds 5]

The dev issuer (with its exchange grants) runs under uvicorn in a child process on 127.0.0.1,
signing with a key this process also holds, so caller tokens are minted here without HTTP.
Measured in wall time, medians over the calls of a round; a ratio is taken within each round and
the table shows the median ratio over the rounds:

- ``exchange, miss``: `TokenProvider.exchange` (JWT bearer grant) of a caller token never seen:
  form, HTTP POST over a kept-alive connection, the issuer's checks (our signature on the subject
  token, its audience) and its signature on the new token, and our parse and checks.
  Floor: a plain local HTTP round trip, a POST of the same size to a route of the same server
  that answers a constant JSON token response.
- ``exchange, hit``: the same call for a caller token already exchanged: SHA-256 of the token,
  the cache key, one lookup. Floor: a dict lookup under a tuple key.
- ``downstreams.token, hit``: the one call a tool makes (`Downstreams.token`), cached: the caller
  from the request context, the deadline, the audit line (to a no-op writer).
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from auth.client import ClientCredentials, ExchangeTarget, TokenProvider, ias_resource  # noqa: E402
from auth.client._credentials import RetryPolicy  # noqa: E402

SERVER = ("mcp-dev-server", "mcp-dev-server-secret")
TARGET = ExchangeTarget("jwt-bearer", resource=ias_resource(name="notes-backend"))
ANSWER = b'{"access_token":"h.p.s","token_type":"Bearer","expires_in":3600}'


def build_issuer(base_url: str, key_file: str) -> object:
    from auth.testing import Audience
    from server._dev_issuer import DevClient, DevIssuer

    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return DevIssuer(
        base_url,
        extra_clients={SERVER[0]: DevClient(SERVER[1], ("backend_read",))},
        applications=[Audience("dev-backend", (), "notes-backend")],
        private_key=key,
        app_tid="bench",
    )


def serve(port: int, key_file: str) -> None:
    """The child process: the issuer and the floor route on one uvicorn server."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    issuer = build_issuer(f"http://127.0.0.1:{port}", key_file)

    async def floor(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json", headers={"Cache-Control": "no-store"})

    app = Starlette(routes=[issuer.mount(), Route("/floor", floor, methods=["POST"])])  # type: ignore[attr-defined]
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http="httptools", loop="uvloop",
                access_log=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _times(call: Callable[[int], Awaitable[object]], n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - started)
    return out


def _dict_lookup_ns(n: int) -> float:
    key = ("exchange", "https://ias/token", "client", TARGET, None, os.urandom(32), None)
    table = {key: 1}
    loops = max(n * 1000, 10_000)
    started = time.perf_counter()
    for _ in range(loops):
        table[key]
    return (time.perf_counter() - started) / loops


async def measure(base_url: str, issuer: object, calls: int, rounds: int) -> dict[str, list[float]]:
    from auth import VerifiedToken
    from auth._context import bind_token, reset_token
    from auth.downstream import Downstream, Downstreams, DownstreamSettings

    credentials = ClientCredentials(SERVER[0], token_endpoint=base_url + "/dev-ias/oauth2/token",
                                    client_secret=SERVER[1])
    ratios: dict[str, list[float]] = {"miss": [], "hit": [], "tool hit": [], "miss/hit": []}
    medians: dict[str, list[float]] = {"floor http": [], "miss": [], "floor dict": [], "hit": [], "tool hit": []}
    settings = DownstreamSettings(
        downstreams={"b": Downstream("b", "on-behalf-of", base_url + "/backend", TARGET)}, credentials=credentials
    )
    async with TokenProvider(credentials, retry=RetryPolicy(attempts=1)) as provider, \
            httpx.AsyncClient(timeout=10) as http, \
            Downstreams(settings, provider=provider, audit=lambda _m, _f: None) as downstreams:
        form_size = "x" * 1000
        await http.post(base_url + "/floor", data={"assertion": form_size})  # connections warm
        await provider.exchange(issuer.mint("warm-up"), TARGET)  # type: ignore[attr-defined]
        expires = int(time.time()) + 3600
        principal = VerifiedToken("caller", "caller", "bench", ("mcp-dev-server",), frozenset(), expires)
        for _ in range(rounds):
            subjects = [issuer.mint(f"caller-{i}") for i in range(calls)]  # type: ignore[attr-defined]
            def post(i: int, s: list[str] = subjects) -> Awaitable[object]:
                return http.post(base_url + "/floor", data={"assertion": s[i]})

            def exchange(i: int, s: list[str] = subjects) -> Awaitable[object]:
                return provider.exchange(s[i], TARGET)

            def one_call(_: int, s: list[str] = subjects) -> Awaitable[object]:
                return downstreams.token("b", subject_token=s[0])

            floor_http = await _times(post, calls)
            miss = await _times(exchange, calls)
            hit = await _times(exchange, calls)
            handle = bind_token(principal)
            try:
                tool_hit = await _times(one_call, calls)
            finally:
                reset_token(handle)
            floor_dict = _dict_lookup_ns(calls)
            m = {"floor http": statistics.median(floor_http), "miss": statistics.median(miss),
                 "floor dict": floor_dict, "hit": statistics.median(hit), "tool hit": statistics.median(tool_hit[1:])}
            for name, value in m.items():
                medians[name].append(value)
            ratios["miss"].append(m["miss"] / m["floor http"])
            ratios["hit"].append(m["hit"] / m["floor dict"])
            ratios["tool hit"].append(m["tool hit"] / m["floor dict"])
            ratios["miss/hit"].append(m["miss"] / m["hit"])
    return {**{f"median {k}": v for k, v in medians.items()}, **{f"ratio {k}": v for k, v in ratios.items()}}


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:9.2f} µs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--key-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.key_file)
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        key_file = Path(scratch) / "key.pem"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_file.chmod(0o600)
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--key-file", str(key_file)])
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base_url + "/dev-ias/oauth2/certs", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or child.poll() is not None:
                    print("the issuer did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            issuer = build_issuer(base_url, str(key_file))
            results = asyncio.run(measure(base_url, issuer, args.calls, args.rounds))
        finally:
            child.terminate()
            child.wait(10)

    med = {k.removeprefix("median "): statistics.median(v) for k, v in results.items() if k.startswith("median")}
    ratio = {k.removeprefix("ratio "): v for k, v in results.items() if k.startswith("ratio")}
    print(f"token exchange (JWT bearer) against the dev issuer on 127.0.0.1: {args.calls} calls x {args.rounds} rounds")
    print(f"{'':30} {'median':>12}   {'x floor (median of rounds, min-max)':>36}")
    rows = [
        ("floor: local HTTP round trip", med["floor http"], None),
        ("exchange, miss", med["miss"], "miss"),
        ("floor: dict lookup", med["floor dict"], None),
        ("exchange, hit", med["hit"], "hit"),
        ("downstreams.token, hit", med["tool hit"], "tool hit"),
    ]
    for name, value, key in rows:
        spread = ""
        if key is not None:
            r = ratio[key]
            spread = f"{statistics.median(r):10.1f}x   ({min(r):.1f}-{max(r):.1f})"
        print(f"{name:30} {_us(value)}   {spread}")
    r = ratio["miss/hit"]
    print(f"a hit saves {statistics.median(r):.0f}x the time of a miss ({min(r):.0f}-{max(r):.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
