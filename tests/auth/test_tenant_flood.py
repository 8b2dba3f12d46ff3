"""Issue 15 item 10: a first-time tenant is served while forged tenant labels flood (multi-tenant mode).

Through a real uvicorn server (tests/auth/tenant_flood.py drives it; ``python -m tests.auth.tenant_flood``
prints the same figures for a longer run). Forged labels fail in each cheap way, with no DNS asked:
the name does not resolve (tests/_idp.py's routing is the resolver), the connection is refused (a
loopback port bound, not listening), the IdP answers 404. Statuses and error codes are asserted
for the first-time tenants and for every forged request; so are the bounds of the work the flood
caused (requests per label, discoveries in flight, what is kept).
"""

from __future__ import annotations

import pytest

from .tenant_flood import run_tenant_flood

WINDOW = 30  # the default cool-down: how long a charge, and a failed label, lasts


@pytest.mark.parametrize("kind", ["nxdomain", "refused", "404"])
def test_a_first_time_tenant_is_served_during_a_flood_of_forged_labels(kind: str) -> None:
    f = run_tenant_flood(160, kind=kind, concurrency=16, first_timers=3)  # 80 labels, each sent twice
    assert f["first_timer_statuses"] == [200]  # today's main: 503 once 16 labels were tried in the window
    assert f["first_timers_200"] == f["first_timers"] == 3  # each verified, as its own tenant
    if kind == "refused":  # nothing listens: the tenant's outage, 503 with an honest Retry-After
        assert f["forged_503_retry_after"] == 160 and 1 <= f["forged_max_retry_after"] <= WINDOW
    else:  # no such tenant
        assert f["forged_401_invalid_token"] == 160
    assert f["forged_other"] == 0
    assert f["forged_lookups"] == f["forged_labels"] == 80 and f["max_lookups_per_label"] == 1  # a repeat is free
    assert f["verifier_peak_in_flight"] <= 8  # the global cap on discoveries under way
    assert f["verifier_newcomers"] == 0  # labels that failed take no key-set place...
    assert f["verifier_remembered_failures"] == 80  # ...only a line in the bounded memory of failures
    assert f["verifier_tenants"] == 3
    assert f["seconds"] < 30


def test_a_source_spending_its_budget_cannot_keep_another_sources_first_time_tenant_out() -> None:
    # 127.0.0.2 names 40 tenants that exist, each with a forged token: keys found, never a valid token.
    f = run_tenant_flood(80, kind="real", concurrency=8, first_timers=3, attacker="127.0.0.2", legit="127.0.0.1")
    assert f["first_timer_statuses"] == [200] and f["first_timers_200"] == 3
    found = f["verifier_discoveries"] - 3
    assert 8 <= found <= 8 + 3  # the source's 8 charges per window (+ at most 3 already under way)...
    assert f["forged_401_invalid_token"] == 2 * found  # (a repeat of a found label: its keys, no kid: 401)
    assert f["forged_503_retry_after"] == 80 - 2 * found  # ...then 503 for its new labels only
    assert 1 <= f["forged_max_retry_after"] <= WINDOW and f["forged_other"] == 0
    assert f["max_lookups_per_label"] == 2  # discovery and key set, once
    assert f["verifier_newcomers"] == found and f["verifier_tenants"] == 3


def test_a_source_holding_its_discovery_slots_cannot_make_another_source_wait() -> None:
    # 127.0.0.2's labels take the IdP 2 s each: it holds its 4 slots, the rest of it waits.
    f = run_tenant_flood(12, kind="404", concurrency=12, first_timers=2, attacker="127.0.0.2", slow=2.0)
    assert f["first_timer_statuses"] == [200] and f["first_timers_200"] == 2
    assert f["first_timer_ms_max"] < 1000  # served at once, not behind the 2 s discoveries
    assert f["verifier_peak_in_flight"] <= 4 + 2  # the attacker's 4, never more
    assert f["forged_401_invalid_token"] + f["forged_503_retry_after"] == 12 and f["forged_other"] == 0
    assert f["max_lookups_per_label"] == 1
