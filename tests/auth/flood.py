"""Forged-token flood against a real uvicorn server, interleaved with valid traffic (issue 7).

    python -m tests.auth.flood [--forged 1000] [--concurrency 16] [--every 4]

Forged tokens carry random ``kid``, random multi-tenant ``iss`` labels, random ``app_tid`` and
``azp``, or a known ``kid`` with a forged signature; every ``--every``-th request is a valid one
(main issuer, several consumers, and a tenant already seen). The IdP is tests/_idp.py on
loopback, answering 400 to unknown ``x-app_tid`` values as IAS does; the verifier runs with its
defaults (5 s minimum refresh, 30 s cool-down). Prints the figures; `run_flood` returns them and
tests/auth/test_flood.py asserts them: every valid request 200, forged ones 401/503 only, at most
one key fetch per minimum interval per issuer, each forged label fetched once, at most 8 discoveries
of new labels under way at once, bounded key sets and cache entries.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import resource
import time
import uuid
from typing import Any

import httpx

from tests._idp import IdP, TenantRouting, running_idp

from ._cases import KID
from ._guarded import BINDING_TID, bearer, forged_token, guarded, ias_settings
from ._support import idp_key

T1 = "tenant-1"
KNOWN_TENANT = "alpha"
CONSUMERS = 8


def _forged(idp: IdP, rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # the trusted issuer, an unknown kid, random tenant and consumer
        return forged_token(idp.issuer)
    if kind == 1:  # a random multi-tenant label
        return forged_token(idp.tenant_issuer(f"t{uuid.uuid4().hex[:16]}"))
    if kind == 2:  # the known kid, a signature by another key, random tenant and consumer
        return forged_token(idp.issuer, kid=KID)
    return forged_token(idp.tenant_issuer(KNOWN_TENANT))  # a tenant already seen, unknown kid


def _valid(idp: IdP, n: int) -> list[str]:
    tokens = [idp.mint(app_tid=(T1, BINDING_TID)[i % 2], azp=f"consumer-{i % CONSUMERS}") for i in range(n)]
    alpha = idp.tenant_issuer(KNOWN_TENANT)
    return tokens + [idp.mint(iss=alpha, app_tid=T1, azp=f"consumer-{i}") for i in range(max(1, n // 4))]


def run_flood(forged: int = 1000, *, concurrency: int = 16, every: int = 4, seed: int = 7) -> dict[str, Any]:
    """Run one flood and return its figures (see the module docstring)."""
    rng = random.Random(seed)
    with running_idp(keys=[idp_key()]) as idp:
        idp.known_tenants = {BINDING_TID, T1}
        idp.tenants.add(KNOWN_TENANT)
        settings = ias_settings(idp, multi_tenant=True)
        started = time.monotonic()
        forged_tokens = [_forged(idp, rng) for _ in range(forged)]
        valid_tokens = _valid(idp, 40)
        mint_s = time.monotonic() - started
        plan: list[tuple[bool, str]] = []
        for n, token in enumerate(forged_tokens):
            if n % every == 0:
                plan.append((True, valid_tokens[(n // every) % len(valid_tokens)]))
            plan.append((False, token))
        client = httpx.AsyncClient(transport=TenantRouting(idp))
        with guarded(settings, client=client) as g:
            with httpx.Client(base_url=g.base_url, timeout=30) as c:  # the tenant is seen before the flood
                warm = c.get("/mcp", headers=bearer(idp.mint(iss=idp.tenant_issuer(KNOWN_TENANT), app_tid=T1)))
                assert warm.status_code == 200, warm.status_code
            before = (idp.discovery_fetches, idp.jwks_fetches - idp.consumer_fetches, idp.tenant_fetches[KNOWN_TENANT])
            results, latencies, elapsed = asyncio.run(_drive(g.base_url, plan, concurrency))
            stats = g.verifier.cache_stats()
        valid = [status for (is_valid, _), status in zip(plan, results, strict=True) if is_valid]
        bad = [status for (is_valid, _), status in zip(plan, results, strict=True) if not is_valid]
        labels = {k: v for k, v in idp.tenant_fetches.items() if k != KNOWN_TENANT}
        intervals = 1 + math.ceil(elapsed / settings.jwks_min_refresh_s)
        latencies.sort()
        return {
            "forged": len(bad),
            "valid": len(valid),
            "valid_200": valid.count(200),
            "forged_401": bad.count(401),
            "forged_503": bad.count(503),
            "forged_other": len(bad) - bad.count(401) - bad.count(503),
            "seconds": round(elapsed, 2),
            "mint_seconds": round(mint_s, 2),
            "requests_per_s": round(len(plan) / elapsed),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
            "issuer_key_fetches": idp.jwks_fetches - idp.consumer_fetches - before[1],
            "issuer_discovery_fetches": idp.discovery_fetches - before[0],
            "known_tenant_fetches": idp.tenant_fetches[KNOWN_TENANT] - before[2],
            "allowed_per_issuer": intervals,
            "forged_labels_fetched": len(labels),
            "max_fetches_per_label": max(labels.values(), default=0),
            # asked for validly signed tokens only
            "consumer_questions": idp.consumer_fetches + sum(idp.tenant_consumer_fetches.values()),
            "refused_by_idp": idp.refused,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **{f"cache_{k}": v for k, v in stats.items()},
        }


async def _drive(base_url: str, plan: list[tuple[bool, str]], concurrency: int) -> tuple[list[int], list[float], float]:
    results = [0] * len(plan)
    latencies: list[float] = []
    queue = iter(range(len(plan)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as c:
        async def worker() -> None:
            for n in queue:
                started = time.monotonic()
                r = await c.get("/mcp", headers=bearer(plan[n][1]))
                latencies.append(time.monotonic() - started)
                results[n] = r.status_code

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, latencies, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forged", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--every", type=int, default=4, help="one valid request per this many forged ones")
    args = parser.parse_args()
    figures = run_flood(args.forged, concurrency=args.concurrency, every=args.every)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:{width}}  {value}")


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # one line per denied request is not what this run is about
    main()
