"""Forged-token flood interleaved with valid traffic, through a real uvicorn server (issue 7).

A smaller run than the documented one (``python -m tests.auth.flood``, figures in SECURITY.md),
with the same assertions.
"""

from __future__ import annotations

from .flood import run_flood


def test_forged_token_flood_never_denies_a_valid_caller_and_stays_within_its_bounds() -> None:
    f = run_flood(400, concurrency=16, every=4)
    assert f["valid_200"] == f["valid"] == 100  # every valid request served
    assert f["forged_other"] == 0 and f["forged_401"] + f["forged_503"] == f["forged"] == 400  # never 200, never 500
    assert f["issuer_key_fetches"] <= f["allowed_per_issuer"]  # one refresh per minimum interval, however many kids
    assert f["issuer_discovery_fetches"] == 1  # once, at the first token: the key set URL is kept
    assert f["known_tenant_fetches"] <= f["allowed_per_issuer"]
    assert f["max_fetches_per_label"] == 1  # a forged label is fetched once at most...
    assert f["cache_peak_in_flight"] <= 8  # ...at most 8 of them at once (the newcomers' global cap)
    assert f["cache_remembered_failures"] == f["forged_labels_fetched"]  # each one line, no key set
    assert f["refused_by_idp"] == 0  # IAS was asked about validly signed tokens only
    assert f["consumer_questions"] <= 2 * 8 + 10  # once per valid (tenant, consumer), never per forged token
    assert f["cache_tenants"] == 1 and f["cache_newcomers"] == 0  # bounded memory: no forged label holds keys
    assert f["cache_key_sets"] <= 2 + 64 and f["cache_consumers"] <= 2 * 8 + 10 + 1
    assert f["cache_tokens"] <= 50 + 1  # only valid tokens are remembered
