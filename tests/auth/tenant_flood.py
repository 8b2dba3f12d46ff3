"""Forged tenant labels flood a multi-tenant server while first-time tenants make their first requests.

    python -m tests.auth.tenant_flood [--forged 2000] [--kind mixed] [--concurrency 16]
                                      [--first-timers 10] [--attacker 127.0.0.1] [--legit 127.0.0.1]

Issue 15 item 10, through a real uvicorn server with the verifier's defaults (30 s cool-down;
the fetch deadline of tests/auth/_guarded.py, 3 s). The attacker sends forged tokens, each naming
a new tenant label of one kind, every label a second time later on:

- ``nxdomain``: the host name does not resolve (tests/_idp.py's routing is the resolver);
- ``refused``: the host refuses the connection (a loopback port bound, not listening);
- ``404``: the IdP knows no such tenant and says so;
- ``real``: a tenant that exists, named by a forged token (keys found, signature fails: the
  source pays); ``mixed`` cycles through the three cheap kinds.

First-time tenants (each one the verifier has never seen, served by the IdP) send their first
request from ``--legit``, spread evenly through the flood (while forged requests are under way).
``--attacker`` and ``--legit`` are loopback addresses the clients connect from (127.0.0.2 is a
second source). Prints the figures;
`run_tenant_flood` returns them and tests/auth/test_tenant_flood.py asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests._idp import IdP, TenantRouting, running_idp

from ._guarded import BINDING_TID, bearer, error_code, forged_token, guarded, ias_settings
from ._support import idp_key

T1 = "tenant-1"
CHEAP_KINDS = ("nxdomain", "refused", "404")
KINDS = (*CHEAP_KINDS, "real")


@dataclass
class Answer:
    status: int
    error: str | None
    retry_after: int | None
    issuer: str | None
    seconds: float


def _label(idp: IdP, kind: str) -> str:
    label = f"{kind}-{uuid.uuid4().hex[:12]}"
    {"nxdomain": idp.unresolvable, "refused": idp.refusing, "404": set(), "real": idp.tenants}[kind].add(label)
    return label


def run_tenant_flood(forged: int = 400, *, kind: str = "mixed", concurrency: int = 16, first_timers: int = 4,
                     attacker: str = "127.0.0.1", legit: str = "127.0.0.1", slow: float = 0.0) -> dict[str, Any]:
    """Run one flood (``forged`` requests, half of them repeating a label) and return its figures.

    ``slow``: the IdP takes this many seconds to answer each forged label's discovery.
    """
    with running_idp(keys=[idp_key()]) as idp:
        idp.known_tenants = {BINDING_TID, T1}
        settings = ias_settings(idp, multi_tenant=True)
        kinds = [CHEAP_KINDS[n % 3] if kind == "mixed" else kind for n in range(max(1, forged // 2))]
        labels = [_label(idp, k) for k in kinds]
        if slow:
            idp.slow.update(labels)
            idp.slow_s = slow
        # Every label twice, the second time well after the first: a repeat must cost nothing.
        plan = [(k, forged_token(idp.tenant_issuer(label))) for k, label in zip(kinds, labels, strict=True)] * 2
        plan = plan[:forged]
        newcomers = [f"first{n}" for n in range(first_timers)]
        idp.tenants.update(newcomers)
        legit_tokens = [idp.mint(iss=idp.tenant_issuer(t), app_tid=T1, azp=f"consumer-{t}") for t in newcomers]
        client = httpx.AsyncClient(transport=TenantRouting(idp))
        with guarded(settings, client=client) as g:
            flood, firsts, elapsed = asyncio.run(_drive(g.base_url, plan, legit_tokens, concurrency, attacker, legit))
            stats = g.verifier.cache_stats()
        forged_lookups = {label: idp.lookups[label] for label in labels}
        latencies = sorted(a.seconds for a in firsts)
        firsts_ok = [a for a, t in zip(firsts, newcomers, strict=True)
                     if a.status == 200 and a.issuer == idp.tenant_issuer(t)]
        invalid = [a for a in flood if a.status == 401 and a.error == "invalid_token"]
        unavailable = [a for a in flood if a.status == 503 and a.error is None and a.retry_after]
        return {
            "forged": len(flood),
            "forged_labels": len(labels),
            "forged_401_invalid_token": len(invalid),
            "forged_503_retry_after": len(unavailable),
            "forged_other": len(flood) - len(invalid) - len(unavailable),
            "forged_max_retry_after": max((a.retry_after or 0 for a in unavailable), default=0),
            "seconds": round(elapsed, 2),
            "forged_per_s": round(len(flood) / elapsed),
            "first_timers": len(firsts),
            "first_timers_200": len(firsts_ok),
            "first_timer_statuses": sorted({a.status for a in firsts}),
            "first_timer_ms_median": round(1000 * statistics.median(latencies), 1) if latencies else 0.0,
            "first_timer_ms_max": round(1000 * latencies[-1], 1) if latencies else 0.0,
            "forged_lookups": sum(forged_lookups.values()),  # requests the verifier made for forged labels
            "max_lookups_per_label": max(forged_lookups.values(), default=0),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **{f"verifier_{k}": v for k, v in stats.items()},
        }


async def _drive(base_url: str, plan: list[tuple[str, str]], legit_tokens: list[str], concurrency: int,
                 attacker: str, legit: str) -> tuple[list[Answer], list[Answer], float]:
    flood: list[Answer | None] = [None] * len(plan)
    firsts: list[Answer] = []
    sent = 0
    queue = iter(range(len(plan)))
    marks = [(n + 1) * len(plan) // (len(legit_tokens) + 1) for n in range(len(legit_tokens))]

    def client(address: str, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        transport = httpx.AsyncHTTPTransport(local_address=address, limits=limits)
        return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60)

    async def ask(c: httpx.AsyncClient, token: str) -> Answer:
        started = time.monotonic()
        r = await c.get("/mcp", headers=bearer(token))
        seconds = time.monotonic() - started
        issuer = r.json().get("issuer") if r.status_code == 200 else None
        retry = r.headers.get("retry-after")
        return Answer(r.status_code, error_code(r), int(retry) if retry else None, issuer, seconds)

    async with client(attacker, concurrency) as bad, client(legit, 1) as good:
        async def forger() -> None:
            nonlocal sent
            for n in queue:
                sent += 1
                flood[n] = await ask(bad, plan[n][1])

        async def first_timer() -> None:  # each one while forged requests are under way
            for mark, token in zip(marks, legit_tokens, strict=True):
                while sent < mark:
                    await asyncio.sleep(0.002)
                firsts.append(await ask(good, token))

        started = time.monotonic()
        await asyncio.gather(*(forger() for _ in range(concurrency)), first_timer())
        elapsed = time.monotonic() - started
    return [a for a in flood if a is not None], firsts, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forged", type=int, default=2000)
    parser.add_argument("--kind", choices=["mixed", *KINDS], default="mixed")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--first-timers", type=int, default=10)
    parser.add_argument("--attacker", default="127.0.0.1", help="loopback address the forged requests come from")
    parser.add_argument("--legit", default="127.0.0.1", help="loopback address the first-time tenants come from")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds the IdP takes per forged discovery")
    args = parser.parse_args()
    figures = run_tenant_flood(args.forged, kind=args.kind, concurrency=args.concurrency,
                               first_timers=args.first_timers, attacker=args.attacker, legit=args.legit,
                               slow=args.slow)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:{width}}  {value}")


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # one line per denied request is not what this run is about
    main()
