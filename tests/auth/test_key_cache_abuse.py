"""Issue 7 items 1, 2, 4, 5 and 12, through a real uvicorn server: what forged tokens can and cannot
do to the key and verified-token caches. Every request goes over HTTP; the IdP is the real local
key server of tests/_idp.py, answering 400 to an ``x-app_tid`` it does not know, as IAS does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests._idp import IdP, TenantRouting

from ._cases import KID, OTHER_KEY
from ._guarded import (
    BINDING_TID,
    assert_invalid,
    assert_ok,
    assert_unavailable,
    bearer,
    forged_token,
    guarded,
    ias_settings,
)
from ._support import Clock, idp_key

T1, T2 = "tenant-1", "tenant-2"
MIN_REFRESH, COOLDOWN, TTL = 5.0, 30.0, 600.0


@pytest.fixture
def ias(idp: IdP) -> Iterator[IdP]:
    """The module's IdP as IAS: it knows our binding's tenant and T1 (not T2), and tenant 'alpha'."""
    idp.reset(keys=[idp_key()])
    idp.known_tenants = {BINDING_TID, T1}
    idp.tenants.add("alpha")
    yield idp
    idp.reset(keys=[idp_key()])


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


def issuer_fetches(idp: IdP) -> int:
    """Key requests for the issuer's own keys (not questions about a tenant and consumer)."""
    return idp.jwks_fetches - idp.consumer_fetches


def settings(idp: IdP, **overrides: object):  # type: ignore[no-untyped-def]
    values = {"jwks_min_refresh_s": MIN_REFRESH, "jwks_refresh_cooldown_s": COOLDOWN, "jwks_ttl_s": TTL}
    return ias_settings(idp, **(values | overrides))


# --- item 1: forged tokens block valid ones -------------------------------------------------------------

def test_forged_unknown_kids_with_random_tenants_and_consumers_never_cost_a_valid_caller_a_503(
        ias: IdP, clock: Clock) -> None:
    with guarded(settings(ias), monotonic=clock) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        for _ in range(40):  # far more than the old budget of 8 new key sets
            assert_invalid(c.get("/mcp", headers=bearer(forged_token(ias.issuer))))
        for azp in ("first-time-consumer", "another-consumer"):  # first-time callers included
            assert_ok(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1, azp=azp))))
        stats = g.verifier.cache_stats()
    assert issuer_fetches(ias) == 1  # forged kids within the minimum interval cost nothing more
    assert ias.consumer_fetches == 2 and ias.refused == 0  # IAS is asked about validly signed tokens only
    assert (stats["key_sets"], stats["consumers"]) == (1, 2)


def test_forged_tenant_labels_never_evict_or_block_a_tenant_already_seen(ias: IdP, clock: Clock) -> None:
    client = httpx.AsyncClient(transport=TenantRouting(ias))
    alpha = ias.tenant_issuer("alpha")
    ias.tenants.update(f"forged{n}" for n in range(150) if n % 16 < 7)  # 69 name tenants that exist: keys found
    with guarded(settings(ias, multi_tenant=True), client=client, monotonic=clock) as g, \
            httpx.Client(base_url=g.base_url, timeout=30) as c:
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(iss=alpha, app_tid=T1))))
        alpha_fetches = ias.tenant_fetches["alpha"]
        statuses = set()
        for n in range(150):  # beyond the 64 key sets of unproven issuers: LRU eviction once dropped sets in use
            if n % 16 == 0:
                clock.advance(COOLDOWN)  # a fresh window for the source's 8 charges: 7 found, 9 not, each time
            r = c.get("/mcp", headers=bearer(forged_token(ias.tenant_issuer(f"forged{n}"))))
            statuses.add((r.status_code, r.headers.get("www-authenticate", "").count("invalid_token")))
            assert_ok(c.get("/mcp", headers=bearer(ias.mint(iss=alpha, app_tid=T1, azp="consumer-client"))))
        stats = g.verifier.cache_stats()
    assert statuses == {(401, 1)}  # each forged label: no such tenant, or not its key
    assert ias.tenant_fetches["alpha"] == alpha_fetches  # alpha's keys were never evicted nor refetched
    assert max(ias.tenant_fetches[f"forged{n}"] for n in range(150)) <= 2  # discovery and key set, once
    assert (stats["tenants"], stats["newcomers"]) == (1, 64)  # bounded: unproven issuers in their own pool
    assert stats["remembered_failures"] == 150 - 69  # labels that do not exist: one line each, no key set


def test_a_burst_of_forged_labels_does_not_cost_a_first_time_tenant_its_first_request(ias: IdP, clock: Clock) -> None:
    ias.tenants.add("beta")
    client = httpx.AsyncClient(transport=TenantRouting(ias))
    with guarded(settings(ias, multi_tenant=True), client=client, monotonic=clock) as g, \
            httpx.Client(base_url=g.base_url, timeout=30) as c:
        for n in range(40):  # today's main admitted 16 new labels per cool-down, then 503 for every new one
            assert_invalid(c.get("/mcp", headers=bearer(forged_token(ias.tenant_issuer(f"burst{n}")))))
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(iss=ias.tenant_issuer("beta"), app_tid=T1))))
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1))))  # the configured issuer: never limited
    assert sum(ias.tenant_fetches.values()) == 40 + 2  # one 404 per label; beta's discovery and keys


def test_a_source_that_named_too_many_existing_tenants_gets_an_honest_retry_after_for_new_labels(
        ias: IdP, clock: Clock) -> None:
    """The limit left: one source's forged tokens for tenants that exist are charged to that source."""
    real = [f"real{n}" for n in range(8)]
    ias.tenants.update([*real, "beta"])
    client = httpx.AsyncClient(transport=TenantRouting(ias))
    with guarded(settings(ias, multi_tenant=True), client=client, monotonic=clock) as g, \
            httpx.Client(base_url=g.base_url, timeout=30) as c:
        for label in real:
            assert_invalid(c.get("/mcp", headers=bearer(forged_token(ias.tenant_issuer(label)))))
        beta_token = ias.mint(iss=ias.tenant_issuer("beta"), app_tid=T1)
        retry_after = assert_unavailable(c.get("/mcp", headers=bearer(beta_token)))  # same source: spent
        assert retry_after <= COOLDOWN
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1))))
        clock.advance(retry_after)
        assert_ok(c.get("/mcp", headers=bearer(beta_token)))
    assert sum(ias.tenant_fetches.values()) == 2 * 8 + 2  # discovery and key set of each, once


# --- item 2: a cached verdict outlives its key -----------------------------------------------------------

def test_cached_verdict_dies_when_the_idp_replaces_the_key_behind_the_same_kid(ias: IdP, clock: Clock) -> None:
    with guarded(settings(ias), monotonic=clock) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        old_token = ias.mint(app_tid=T1)
        for _ in range(2):
            assert_ok(c.get("/mcp", headers=bearer(old_token)))
        assert g.verifier.cache_hits == 1
        new_key = ias.replace_key(KID)
        clock.advance(MIN_REFRESH)
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(key=new_key, app_tid=T1))))  # new material, same kid
        assert_invalid(c.get("/mcp", headers=bearer(old_token)))  # its verdict was bound to the old material
        assert_invalid(c.get("/mcp", headers=bearer(old_token)))


@pytest.mark.parametrize("revealed_by", ["rotation_traffic", "ttl"])
def test_token_of_a_leaked_key_for_a_new_consumer_stops_being_accepted_once_the_key_is_revoked(
        ias: IdP, clock: Clock, revealed_by: str) -> None:
    with guarded(settings(ias), monotonic=clock) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        leaked = ias.key
        # Whoever holds the leaked key mints a day-long token for a consumer of their own.
        stolen = ias.mint(key=leaked, azp=f"attacker-{uuid.uuid4().hex[:8]}", app_tid=T1,
                          exp=int(time.time()) + 86_400)
        assert_ok(c.get("/mcp", headers=bearer(stolen)))
        assert_ok(c.get("/mcp", headers=bearer(stolen)))  # cached
        new_key = ias.add_key("key-2")
        ias.remove_key(KID)  # the IdP revokes the leaked key
        if revealed_by == "rotation_traffic":
            clock.advance(MIN_REFRESH)
            assert_ok(c.get("/mcp", headers=bearer(ias.mint(key=new_key, app_tid=T1))))
        else:
            clock.advance(TTL)
        assert_invalid(c.get("/mcp", headers=bearer(stolen)))


def test_keys_served_to_a_token_named_tenant_never_verify_and_a_tenant_not_served_the_key_is_refused(
        ias: IdP, clock: Clock) -> None:
    """A key set opened for a tenant and consumer taken from an unverified token is a yes/no, not a key source."""
    evil = "tenant-evil"
    ias.known_tenants.add(evil)
    planted = idp_key(OTHER_KEY)  # other material behind the issuer's own kid...
    extra = idp_key(OTHER_KEY, kid="planted-kid")  # ...and under a kid the issuer never published
    ias.tenant_keys[evil] = [planted, extra]
    with guarded(settings(ias), monotonic=clock) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1))))
        for key in (planted, extra):
            for _ in range(2):
                assert_invalid(c.get("/mcp", headers=bearer(ias.mint(key=key, app_tid=evil))))
            clock.advance(MIN_REFRESH)
        # A token signed by the issuer's real key, for a tenant IAS serves other keys to: refused.
        assert_invalid(c.get("/mcp", headers=bearer(ias.mint(app_tid=evil))))
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1))))


# --- item 4: a verdict depends on what was verified before ------------------------------------------------

@pytest.mark.parametrize("order", [["T2", "T1", "T2"], ["T1", "T2", "T1", "T2"]], ids=["t2_first", "t1_first"])
def test_a_tenant_the_idp_refuses_gets_the_same_401_whatever_was_verified_before(
        ias: IdP, clock: Clock, order: list[str]) -> None:
    with guarded(settings(ias), monotonic=clock) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        for tenant in order:
            r = c.get("/mcp", headers=bearer(ias.mint(app_tid={"T1": T1, "T2": T2}[tenant])))
            if tenant == "T1":
                assert_ok(r)
            else:
                assert_invalid(r)  # IAS answered 400 for T2: refused, not "unavailable", never accepted
    assert ias.refused == 1  # the refusal is remembered


# --- item 5: failed key sets refetched after a short back-off ------------------------------------------

def test_a_failed_key_request_is_retried_at_most_once_per_cooldown(ias: IdP, clock: Clock) -> None:
    ias.mode = "down"
    with guarded(settings(ias), monotonic=clock) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        for _ in range(13):  # 60 s in 5 s steps, the old back-off
            assert_unavailable(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1))))
            for _ in range(3):
                assert c.get("/mcp", headers=bearer(forged_token(ias.issuer))).status_code == 503
            clock.advance(5)
    assert ias.discovery_fetches == 3  # at 0, 30 and 60 s


def test_a_failed_question_about_a_consumer_is_retried_at_most_once_per_cooldown(ias: IdP, clock: Clock) -> None:
    with guarded(settings(ias), monotonic=clock) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1))))
        ias.mode = "down"
        before = ias.consumer_fetches
        for _ in range(13):
            assert_unavailable(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1, azp="new-consumer"))))
            assert_ok(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1))))  # the known consumer: served
            clock.advance(5)
    assert ias.consumer_fetches - before == 3


# --- item 12: rotation looks like an outage ----------------------------------------------------------------

def test_a_newly_published_key_is_accepted_within_the_minimum_interval_and_floods_cost_one_fetch_each(
        ias: IdP, clock: Clock) -> None:
    with guarded(settings(ias), monotonic=clock) as g, httpx.Client(base_url=g.base_url, timeout=30) as c:
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1))))
        new_key = ias.add_key("key-2")
        rotated = ias.mint(key=new_key, app_tid=T1)
        clock.advance(MIN_REFRESH)  # seconds after the last fetch, far inside the 30 s cool-down
        assert_ok(c.get("/mcp", headers=bearer(rotated)))
        assert issuer_fetches(ias) == 2
        for _ in range(3):
            for _ in range(30):
                assert_invalid(c.get("/mcp", headers=bearer(forged_token(ias.issuer))))
            clock.advance(MIN_REFRESH)
        assert issuer_fetches(ias) == 2 + 2  # one per interval that saw unknown kids, none per token
        assert_ok(c.get("/mcp", headers=bearer(ias.mint(app_tid=T1))))  # the old key is still published
