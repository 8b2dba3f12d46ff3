"""Key fetching against the real counting IdP (tests/_idp.py): single flight, cool-downs,
stale-on-error, 503 when nothing is cached, bounded responses and time, rotation.

Time is injected: ``monotonic`` drives the key cache's TTL, cool-down and failure back-off.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from auth import AuthSettings, InvalidToken, JWTVerifier, KeysUnavailable
from tests._idp import IdP, running_idp

from ._cases import OTHER_KEY, Ctx
from ._support import Clock, idp_key, issuer_config, settings_for

COOLDOWN = 30.0  # after a failed fetch
MIN_REFRESH = 5.0  # between refreshes for an unknown kid
TTL = 600.0


@pytest.fixture(scope="module")
def idp_server() -> Iterator[IdP]:
    with running_idp(keys=[idp_key()]) as server:
        yield server


@pytest.fixture
def idp(idp_server: IdP) -> IdP:
    """The module's IdP, healthy, with its original key and zeroed counters."""
    idp_server.reset(keys=[idp_key()])
    return idp_server


@pytest.fixture
def monotonic() -> Clock:
    return Clock(1000.0)


@pytest.fixture
async def verifier(idp: IdP, monotonic: Clock) -> AsyncIterator[JWTVerifier]:
    v = JWTVerifier(settings_for(idp.issuer, jwks_ttl_s=TTL, jwks_refresh_cooldown_s=COOLDOWN,
                                 jwks_min_refresh_s=MIN_REFRESH, token_cache_size=0), monotonic=monotonic)
    yield v
    await v.aclose()


def fetches(idp: IdP) -> tuple[int, int]:
    return idp.discovery_fetches, idp.jwks_fetches


def forged(idp: IdP) -> str:
    """A token naming the trusted issuer and a random kid, signed by a key the IdP never published."""
    c = Ctx(issuer=idp.issuer, now=int(time.time()))
    return c.token(c.header(kid=f"forged-{uuid.uuid4().hex}"), key=OTHER_KEY)


async def verify_all(verifier: JWTVerifier, tokens: list[str]) -> list[Any]:
    return await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)


async def test_cold_cache_under_50_concurrent_verifies_fetches_once(verifier: JWTVerifier, idp: IdP) -> None:
    tokens = [idp.mint() for _ in range(50)]
    assert len(set(tokens)) == 50
    results = await verify_all(verifier, tokens)
    assert [type(r).__name__ for r in results] == ["VerifiedToken"] * 50
    assert fetches(idp) == (1, 1)


async def test_cold_cache_under_concurrent_forged_kids_fetches_once(verifier: JWTVerifier, idp: IdP) -> None:
    results = await verify_all(verifier, [forged(idp) for _ in range(100)])
    assert all(isinstance(r, InvalidToken) for r in results)
    assert fetches(idp) == (1, 1)


async def test_unknown_kids_refresh_at_most_once_per_min_refresh(verifier: JWTVerifier, idp: IdP,
                                                                 monotonic: Clock) -> None:
    await verifier.verify(idp.mint())
    assert idp.jwks_fetches == 1

    async def storm() -> None:
        results = await verify_all(verifier, [forged(idp) for _ in range(200)])
        assert all(isinstance(r, InvalidToken) for r in results)

    await storm()
    assert idp.jwks_fetches == 1  # within the minimum interval of the first fetch: no refresh at all
    monotonic.advance(MIN_REFRESH + 1)
    await storm()
    assert idp.jwks_fetches == 2  # one refresh for 200 unknown kids
    monotonic.advance(MIN_REFRESH / 2)
    await storm()
    assert idp.jwks_fetches == 2
    monotonic.advance(MIN_REFRESH / 2)
    await storm()
    assert idp.jwks_fetches == 3
    assert idp.discovery_fetches == 1  # the jwks_uri from discovery is kept
    assert (await verifier.verify(idp.mint())).issuer == idp.issuer


@pytest.mark.parametrize("mode", ["down", "garbage", "empty", "huge"])
async def test_stale_keys_keep_verifying_while_idp_fails(verifier: JWTVerifier, idp: IdP, monotonic: Clock,
                                                         mode: str) -> None:
    await verifier.verify(idp.mint())
    idp.mode = mode
    monotonic.advance(TTL + 1)
    results = await verify_all(verifier, [idp.mint() for _ in range(20)])
    assert [type(r).__name__ for r in results] == ["VerifiedToken"] * 20
    assert idp.jwks_fetches == 2  # one failed attempt, however many requests
    for _ in range(3):  # one more attempt per cool-down at most, and still serving the stale keys
        monotonic.advance(COOLDOWN)
        results = await verify_all(verifier, [idp.mint() for _ in range(10)])
        assert [type(r).__name__ for r in results] == ["VerifiedToken"] * 10
    assert 2 < idp.jwks_fetches <= 5
    idp.mode = "ok"
    monotonic.advance(COOLDOWN)
    await verifier.verify(idp.mint())
    settled = idp.jwks_fetches
    await verify_all(verifier, [idp.mint() for _ in range(10)])
    assert idp.jwks_fetches == settled  # fresh again: no more fetching


async def test_nothing_cached_and_idp_down_is_503_then_recovers(verifier: JWTVerifier, idp: IdP,
                                                                monotonic: Clock) -> None:
    idp.mode = "down"
    with pytest.raises(KeysUnavailable) as info:
        await verifier.verify(idp.mint())
    retry_after = info.value.retry_after
    assert retry_after >= 1 and info.value.status == 503
    assert fetches(idp) == (1, 0)
    results = await verify_all(verifier, [idp.mint() for _ in range(20)])
    assert all(isinstance(r, KeysUnavailable) and r.retry_after >= 1 for r in results)
    assert fetches(idp) == (1, 0)  # backing off: no hammering of a failed issuer
    idp.mode = "ok"
    monotonic.advance(retry_after)  # Retry-After is honest: after it, the issuer is asked again
    assert (await verifier.verify(idp.mint())).issuer == idp.issuer
    assert fetches(idp) == (2, 1)


@pytest.mark.parametrize("mode", ["garbage", "empty", "huge", "down"])
@pytest.mark.parametrize("configured_jwks_uri", [False, True], ids=["via_discovery", "configured_jwks_uri"])
async def test_unusable_idp_answer_with_nothing_cached_is_keys_unavailable(idp: IdP, mode: str,
                                                                           configured_jwks_uri: bool) -> None:
    jwks_uri = f"{idp.issuer}/oauth2/certs" if configured_jwks_uri else None
    v = JWTVerifier(settings_for(issuer_config(idp.issuer, jwks_uri=jwks_uri)))
    idp.mode = mode
    try:
        with pytest.raises(KeysUnavailable):
            await v.verify(idp.mint())
    finally:
        await v.aclose()
    assert idp.jwks_fetches == (1 if configured_jwks_uri else 0)


async def test_jwks_larger_than_the_configured_cap_is_refused(idp: IdP) -> None:
    size = len(str(idp.jwks()))
    v = JWTVerifier(settings_for(issuer_config(idp.issuer, jwks_uri=f"{idp.issuer}/oauth2/certs"),
                                 jwks_max_bytes=size // 2))
    try:
        with pytest.raises(KeysUnavailable):
            await v.verify(idp.mint())
    finally:
        await v.aclose()


async def test_slow_idp_beyond_http_timeout_is_keys_unavailable_in_bounded_time(idp: IdP) -> None:
    idp.delay = 1.0
    v = JWTVerifier(settings_for(idp.issuer, http_timeout_s=0.3))
    try:
        started = time.monotonic()
        with pytest.raises(KeysUnavailable):
            await v.verify(idp.mint())
        assert time.monotonic() - started < 0.9
    finally:
        await v.aclose()
        idp.delay = 0.0


async def test_rotation_new_kid_accepted_after_one_refresh_and_old_kid_removed(
        verifier: JWTVerifier, idp: IdP, monotonic: Clock) -> None:
    old_key = idp.key
    await verifier.verify(idp.mint())
    idp.rotate("key-2")
    new_token = idp.mint()
    with pytest.raises(InvalidToken):  # within the minimum interval the unknown kid cannot force a fetch
        await verifier.verify(new_token)
    assert idp.jwks_fetches == 1
    monotonic.advance(MIN_REFRESH)  # seconds, not the 30 s cool-down (issue 7, item 12)
    assert (await verifier.verify(new_token)).issuer == idp.issuer
    assert idp.jwks_fetches == 2
    with pytest.raises(InvalidToken):  # a fresh token under the removed kid
        await verifier.verify(idp.mint(key=old_key))
    assert idp.jwks_fetches == 2


async def test_ttl_expiry_refetches_and_drops_removed_keys(verifier: JWTVerifier, idp: IdP,
                                                           monotonic: Clock) -> None:
    old_key = idp.key
    await verifier.verify(idp.mint())
    idp.rotate("key-2")
    monotonic.advance(TTL)
    with pytest.raises(InvalidToken):
        await verifier.verify(idp.mint(key=old_key))
    assert idp.jwks_fetches == 2
    assert (await verifier.verify(idp.mint())).issuer == idp.issuer
    assert idp.jwks_fetches == 2


@pytest.mark.parametrize("overrides", [
    {"issuer": "https://evil.example.com/tenant"},
    {"issuer": None},
    {"jwks_uri": "http://evil.example.com/certs"},
    {"jwks_uri": "https://evil.example.com/certs?x=1"},
    {"jwks_uri": None},
], ids=["other_issuer", "no_issuer", "jwks_uri_plain_http", "jwks_uri_query", "no_jwks_uri"])
async def test_untrustworthy_discovery_document_is_rejected(idp: IdP, overrides: dict[str, Any]) -> None:
    idp.discovery_overrides.update(overrides)
    v = JWTVerifier(settings_for(idp.issuer))
    try:
        with pytest.raises(KeysUnavailable):
            await v.verify(idp.mint())
    finally:
        await v.aclose()
    assert fetches(idp) == (1, 0)


async def test_discovery_naming_another_issuer_of_ours_is_still_rejected(idp: IdP) -> None:
    with running_idp() as other:
        idp.discovery_overrides["issuer"] = other.issuer
        v = JWTVerifier(settings_for(idp.issuer, other.issuer))
        try:
            with pytest.raises(KeysUnavailable):
                await v.verify(idp.mint())
        finally:
            await v.aclose()
        assert idp.jwks_fetches == 0 and fetches(other) == (0, 0)


async def test_configured_jwks_uri_skips_discovery(idp: IdP) -> None:
    v = JWTVerifier(settings_for(issuer_config(idp.issuer, jwks_uri=f"{idp.issuer}/oauth2/certs")))
    try:
        assert (await v.verify(idp.mint())).issuer == idp.issuer
    finally:
        await v.aclose()
    assert fetches(idp) == (0, 1)


async def test_ias_key_requests_carry_our_client_id_and_the_tokens_tenant_and_consumer(idp: IdP) -> None:
    config = issuer_config(idp.issuer, client_id="our-client-id", app_tid="our-tenant-id")
    v = JWTVerifier(AuthSettings(issuers=(config,), resource_url="https://mcp.example.com/mcp"))
    try:
        await v.verify(idp.mint(azp="consumer-1", app_tid="tenant-1", client_id="not-sent"))
    finally:
        await v.aclose()
    assert idp.last_headers["x-client_id"] == "our-client-id"  # ours, never the token's
    assert idp.last_headers["x-app_tid"] == "tenant-1"
    assert idp.last_headers["x-azp"] == "consumer-1"


@pytest.mark.parametrize("bad", ["a\r\nx-evil: 1", "a b", "x" * 129, "", "ü"])
async def test_malformed_token_values_never_reach_key_request_headers(idp: IdP, bad: str) -> None:
    config = issuer_config(idp.issuer, client_id="our-client-id", app_tid="our-tenant-id")
    v = JWTVerifier(AuthSettings(issuers=(config,), resource_url="https://mcp.example.com/mcp"))
    try:
        await v.verify(idp.mint(azp=bad, app_tid=bad))
    finally:
        await v.aclose()
    assert idp.last_headers["x-app_tid"] == "our-tenant-id"  # the binding's tenant instead
    assert "x-azp" not in idp.last_headers
    assert "x-evil" not in idp.last_headers


async def test_many_consumers_with_a_known_kid_cost_one_issuer_fetch_and_one_question_each(idp: IdP) -> None:
    config = issuer_config(idp.issuer, client_id="our-client-id")
    v = JWTVerifier(AuthSettings(issuers=(config,), resource_url="https://mcp.example.com/mcp"))
    try:
        for _ in range(2):
            for n in range(40):  # no budget of new key sets to run out of: never a 503
                verified = await v.verify(idp.mint(azp=f"consumer-{n}", app_tid="tenant-1"))
                assert verified.client_id == f"consumer-{n}"
        stats = v.cache_stats()
    finally:
        await v.aclose()
    # The issuer's keys once; IAS asked once per (tenant, consumer), and its answer remembered.
    assert (stats["key_fetches"], stats["consumer_fetches"], stats["key_sets"]) == (1, 40, 1)
    assert idp.jwks_fetches == 41


async def test_rotated_key_of_a_new_consumer_comes_from_the_issuer_then_is_checked_with_its_headers(
        idp: IdP, monotonic: Clock) -> None:
    config = issuer_config(idp.issuer, client_id="our-client-id")
    v = JWTVerifier(AuthSettings(issuers=(config,), resource_url="https://mcp.example.com/mcp",
                                 jwks_min_refresh_s=MIN_REFRESH), monotonic=monotonic)
    try:
        await v.verify(idp.mint(azp="consumer-1", app_tid="tenant-1"))
        new_key = idp.rotate("key-2")
        monotonic.advance(MIN_REFRESH)
        verified = await v.verify(idp.mint(azp="consumer-2", app_tid="tenant-1", key=new_key))
    finally:
        await v.aclose()
    assert verified.client_id == "consumer-2"
    assert idp.jwks_fetches == 4  # issuer, consumer-1, issuer again (new kid), consumer-2
    assert idp.last_headers["x-azp"] == "consumer-2"


@pytest.mark.parametrize("profile", ["ias", "generic"])
async def test_key_requests_carry_no_client_id_when_none_is_configured(idp: IdP, profile: str) -> None:
    v = JWTVerifier(settings_for(issuer_config(idp.issuer, profile=profile)))
    try:
        await v.verify(idp.mint(azp="consumer-azp", app_tid="tenant-tid", client_id="their-client", scope="x"))
    finally:
        await v.aclose()
    assert "x-client_id" not in idp.last_headers
    assert not any("their-client" in value for value in idp.last_headers.values())
    if profile == "generic":  # only IAS key requests carry the tenant and consumer
        assert not {"x-app_tid", "x-azp"} & set(idp.last_headers)


# --- pure decisions and settings ----------------------------------------------------------------------

_D = {"ttl": 600.0, "min_refresh": 5.0, "cooldown": 30.0, "max_stale": 3600.0}


@pytest.mark.parametrize(("outcome", "served", "since_answer", "since_attempt", "decision"), [
    ("none", False, float("inf"), float("inf"), "ask"),  # never asked
    ("ok", True, 10, 10, "accept"),
    ("ok", True, 600, 600, "ask"),  # the answer is due
    ("ok", False, 1, 1, "refuse"),  # IAS did not serve this key: not asked again within the minimum interval
    ("ok", False, 5, 5, "ask"),
    ("refused", False, float("inf"), 29, "refuse"),  # a refusal is remembered for the cool-down...
    ("refused", True, 100, 30, "ask"),  # ...then asked again
    ("failed", True, 700, 10, "accept"),  # IAS unreachable: the last acceptance serves while stale is allowed
    ("failed", True, 600 + 3600, 10, "unavailable"),
    ("failed", False, float("inf"), 10, "unavailable"),  # never answered: 503, not 401
    ("failed", False, float("inf"), 30, "ask"),  # retried at most once per cool-down
])
def test_consumer_decision_table(outcome: str, served: bool, since_answer: float, since_attempt: float,
                                 decision: str) -> None:
    from auth._verifier import consumer_decision

    assert consumer_decision(outcome, served, since_answer=since_answer, since_attempt=since_attempt,
                             **_D) == decision


def test_key_cache_settings_are_read_and_checked() -> None:
    from auth import ConfigError, load_settings

    env = {"MCP_AUTH_ISSUER": "https://t.accounts.ondemand.com", "MCP_AUTH_AUDIENCE": "a",
           "MCP_RESOURCE_URL": "https://mcp.example.com/mcp"}
    defaults = load_settings(env)
    assert (defaults.jwks_min_refresh_s, defaults.jwks_max_stale_s) == (5.0, 3600.0)
    custom = load_settings(env | {"MCP_AUTH_JWKS_MIN_REFRESH": "2", "MCP_AUTH_JWKS_MAX_STALE": "0"})
    assert (custom.jwks_min_refresh_s, custom.jwks_max_stale_s) == (2.0, 0.0)
    for name, bad in (("MCP_AUTH_JWKS_MIN_REFRESH", "0"), ("MCP_AUTH_JWKS_MAX_STALE", "-1"),
                      ("MCP_AUTH_JWKS_MIN_REFRESH", "soon")):
        with pytest.raises(ConfigError, match=name):
            load_settings(env | {name: bad})


async def test_max_stale_zero_stops_serving_keys_as_soon_as_a_refresh_fails(verifier: JWTVerifier, idp: IdP,
                                                                            monotonic: Clock) -> None:
    v = JWTVerifier(settings_for(idp.issuer, jwks_ttl_s=TTL, jwks_max_stale_s=0, token_cache_size=0),
                    monotonic=monotonic)
    try:
        await v.verify(idp.mint())
        idp.mode = "down"
        monotonic.advance(TTL)
        with pytest.raises(KeysUnavailable):
            await v.verify(idp.mint())
    finally:
        await v.aclose()


async def test_drip_fed_key_set_is_cut_at_the_total_deadline(idp: IdP) -> None:
    idp.mode, idp.delay = "drip", 1.0  # 64 bytes a second: ~8 s for the key set, a read timeout never fires
    v = JWTVerifier(settings_for(issuer_config(idp.issuer, jwks_uri=f"{idp.issuer}/oauth2/certs"),
                                 http_timeout_s=0.8))
    try:
        started = time.monotonic()
        with pytest.raises(KeysUnavailable):
            await v.verify(idp.mint())
        assert time.monotonic() - started < 4.0  # the 0.8 s deadline plus generous slack
    finally:
        await v.aclose()
