"""`JWTVerifier.verify` end to end against a real IdP served by uvicorn (tests/_idp.py).

Every bad token of attacks.md must raise `InvalidToken` and nothing else; good tokens minted
three independent ways (joserfc, PyJWT, and by hand with `cryptography`: RFC 7515 §7.1 compact
serialization) in the IAS, XSUAA and Entra shapes must yield the right principal.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import pytest_asyncio
from joserfc.jwk import ECKey

import auth._verifier
from auth import InvalidToken, JWTVerifier, KeysUnavailable
from tests._idp import IdP, TenantRouting, running_idp

from ._cases import AUDIENCE, EC_KEY, KEY, KID, OTHER_KEY, TOKEN_CASES, Case, Ctx, compact, private_pem
from ._guarded import forged_token
from ._support import Clock, idp_key, issuer_config, settings_for


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monotonic() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def ctx(idp: IdP, attacker: IdP, clock: Clock) -> Ctx:
    return Ctx(issuer=idp.issuer, now=int(clock()), attacker_url=f"{attacker.issuer}/oauth2/certs")


@pytest.fixture
async def verifier(idp: IdP, clock: Clock, monotonic: Clock) -> AsyncIterator[JWTVerifier]:
    v = JWTVerifier(settings_for(idp.issuer), clock=clock, monotonic=monotonic)
    yield v
    await v.aclose()


@pytest.fixture
def crypto_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count signature verifications the verifier performs."""
    calls: list[str] = []
    real = auth._verifier.verify_signature

    def counting(jws: Any, key: Any) -> None:
        calls.append(jws.kid)
        real(jws, key)

    monkeypatch.setattr(auth._verifier, "verify_signature", counting)
    return calls


async def test_valid_ias_token_yields_the_principal(verifier: JWTVerifier, ctx: Ctx) -> None:
    token = await verifier.verify(ctx.good())
    assert (token.issuer, token.client_id, token.audience) == (ctx.issuer, "consumer-client", (AUDIENCE,))
    assert token.permissions == {"api_read_access", "api_write_access"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def warm_verifier(idp: IdP, attacker: IdP) -> AsyncIterator[tuple[JWTVerifier, Ctx]]:
    """One verifier, keys already fetched, for the whole attack table (one event loop for all cases)."""
    clock = Clock()
    v = JWTVerifier(settings_for(idp.issuer), clock=clock)
    c = Ctx(issuer=idp.issuer, now=int(clock()), attacker_url=f"{attacker.issuer}/oauth2/certs")
    await v.verify(c.good())
    yield v, c
    await v.aclose()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", TOKEN_CASES, ids=lambda c: c.name)
async def test_bad_token_is_rejected_with_invalid_token(warm_verifier: tuple[JWTVerifier, Ctx],
                                                        case: Case) -> None:
    verifier, ctx = warm_verifier
    with pytest.raises(InvalidToken):
        await verifier.verify(case.build(ctx))


async def test_bad_tokens_in_a_row_are_rejected_by_a_fresh_verifier(verifier: JWTVerifier, ctx: Ctx) -> None:
    for case in TOKEN_CASES:
        with pytest.raises(InvalidToken):
            await verifier.verify(case.build(ctx))


@pytest.mark.parametrize("header", ["jku", "x5u"])
async def test_key_url_header_is_never_fetched(verifier: JWTVerifier, ctx: Ctx, attacker: IdP,
                                               header: str) -> None:
    before = (attacker.discovery_fetches, attacker.jwks_fetches)
    for url in (ctx.attacker_url, f"{attacker.issuer}/.well-known/openid-configuration"):
        with pytest.raises(InvalidToken):
            await verifier.verify(ctx.token(ctx.header(**{header: url}), key=OTHER_KEY))
    assert (attacker.discovery_fetches, attacker.jwks_fetches) == before


async def test_attacker_issuer_with_its_own_keys_is_never_contacted(verifier: JWTVerifier, ctx: Ctx,
                                                                    attacker: IdP) -> None:
    before = (attacker.discovery_fetches, attacker.jwks_fetches)
    with pytest.raises(InvalidToken):
        await verifier.verify(attacker.mint())
    with pytest.raises(InvalidToken):
        await verifier.verify(ctx.token(claims=ctx.claims(iss=attacker.issuer), key=OTHER_KEY))
    assert (attacker.discovery_fetches, attacker.jwks_fetches) == before


async def test_ias_iss_right_with_custom_domain_iss_is_accepted(verifier: JWTVerifier, ctx: Ctx) -> None:
    token = await verifier.verify(ctx.token(claims=ctx.claims(iss="https://login.customer.example",
                                                                 ias_iss=ctx.issuer)))
    assert token.issuer == ctx.issuer


@pytest.mark.parametrize("iss", [
    "https://tenant.accounts.ondemand.com.evil", "https://evilaccounts.ondemand.com",
    "https://a.b.accounts.ondemand.com", "https://TENANT.accounts.ondemand.com",
    "https://tenant.accounts.ondemand.com:443", "https://tenant.accounts.ondemand.com/x",
])
async def test_multi_tenant_lookalike_issuer_is_rejected_without_fetching(idp: IdP, ctx: Ctx, clock: Clock,
                                                                          iss: str) -> None:
    settings = settings_for(issuer_config(idp.issuer, domains=("accounts.ondemand.com",)))
    v = JWTVerifier(settings, clock=clock)
    try:
        with pytest.raises(InvalidToken):
            await v.verify(ctx.token(claims=ctx.claims(iss=iss)))
        with pytest.raises(InvalidToken):
            await v.verify(ctx.token(claims=ctx.claims(iss="https://custom.example", ias_iss=iss)))
    finally:
        await v.aclose()


async def test_es256_psychic_signature_is_rejected_when_ec_keys_are_allowed(clock: Clock) -> None:
    ec_key = ECKey.import_key(private_pem(EC_KEY), parameters={"kid": "ec-1", "use": "sig", "alg": "ES256"})
    with running_idp(keys=[ec_key]) as ec_idp:
        v = JWTVerifier(settings_for(ec_idp.issuer, algorithms=frozenset({"RS256", "ES256"})), clock=clock)
        try:
            c = Ctx(issuer=ec_idp.issuer, now=int(clock()))
            header = c.header(alg="ES256", kid="ec-1")
            assert (await v.verify(c.token(header, key=EC_KEY))).issuer == ec_idp.issuer
            for signature in (bytes(64), bytes(32) + b"\x01" * 32, b"\x01" * 32 + bytes(32)):
                with pytest.raises(InvalidToken):
                    await v.verify(compact(header, c.claims(), signature=signature))
            with pytest.raises(InvalidToken):  # an RSA token against the EC key of the same kid
                await v.verify(c.token(c.header(kid="ec-1")))
        finally:
            await v.aclose()


# --- verified-token cache ------------------------------------------------------------------------------

async def test_second_verify_of_same_token_is_a_cache_hit_without_crypto(
        verifier: JWTVerifier, ctx: Ctx, crypto_calls: list[str]) -> None:
    token = ctx.good()
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert second == first
    assert crypto_calls == [KID]
    assert verifier.cache_hits == 1


async def test_cached_token_is_rejected_once_it_expires(
        verifier: JWTVerifier, ctx: Ctx, clock: Clock, crypto_calls: list[str]) -> None:
    token = ctx.token(claims=ctx.claims(exp=ctx.now + 120))
    await verifier.verify(token)
    clock.advance(120 + 60)  # exp + leeway
    with pytest.raises(InvalidToken):
        await verifier.verify(token)
    with pytest.raises(InvalidToken):
        await verifier.verify(token)
    assert verifier.cache_hits == 0
    clock.advance(-1)  # back inside the leeway: valid again, verified afresh
    assert (await verifier.verify(token)).expires_at == ctx.now + 120
    assert len(crypto_calls) == 3


async def test_cached_token_whose_key_left_the_key_set_is_not_served(clock: Clock, monotonic: Clock) -> None:
    with running_idp(keys=[idp_key()]) as idp:
        v = JWTVerifier(settings_for(idp.issuer), clock=clock, monotonic=monotonic)
        try:
            old = idp.mint()
            await v.verify(old)
            idp.rotate("key-2")
            monotonic.advance(31)  # past the unknown-kid cool-down
            await v.verify(idp.mint())  # new kid: one refresh, key-1 is gone now
            assert idp.jwks_fetches == 2
            with pytest.raises(InvalidToken):
                await v.verify(old)
            assert v.cache_hits == 0
        finally:
            await v.aclose()


async def test_token_cache_is_bounded_by_token_cache_size(
        idp: IdP, ctx: Ctx, clock: Clock, crypto_calls: list[str]) -> None:
    v = JWTVerifier(settings_for(idp.issuer, token_cache_size=2), clock=clock)
    try:
        t1, t2, t3 = (ctx.token(claims=ctx.claims(jti=str(n))) for n in range(3))
        for t in (t1, t2, t3):
            await v.verify(t)
        await v.verify(t3)
        await v.verify(t2)
        assert (v.cache_hits, len(crypto_calls)) == (2, 3)
        await v.verify(t1)  # evicted as the oldest
        assert (v.cache_hits, len(crypto_calls)) == (2, 4)
    finally:
        await v.aclose()


async def test_token_cache_size_zero_disables_the_cache(idp: IdP, ctx: Ctx, clock: Clock,
                                                       crypto_calls: list[str]) -> None:
    v = JWTVerifier(settings_for(idp.issuer, token_cache_size=0), clock=clock)
    try:
        token = ctx.good()
        await v.verify(token)
        await v.verify(token)
        assert (v.cache_hits, len(crypto_calls)) == (0, 2)
    finally:
        await v.aclose()


async def test_rejected_token_is_not_cached(verifier: JWTVerifier, ctx: Ctx, crypto_calls: list[str]) -> None:
    token = ctx.token(claims=ctx.claims(aud="someone-else"))
    for _ in range(2):
        with pytest.raises(InvalidToken):
            await verifier.verify(token)
    assert (verifier.cache_hits, len(crypto_calls)) == (0, 2)


# --- tokens from independent libraries, in three issuer shapes ----------------------------------------

async def test_ias_token_minted_by_joserfc(verifier: JWTVerifier, idp: IdP) -> None:
    minted = idp.mint(azp="consumer-app", sub="consumer-app", ias_apis=["api_read_access"])
    token = await verifier.verify(minted)
    assert (token.client_id, token.tenant) == ("consumer-app", "7b20408e-3fe0-4ade-aa2e-ad97baac72e8")
    assert token.permissions == {"api_read_access"}


async def test_xsuaa_token_minted_by_pyjwt(idp: IdP, clock: Clock) -> None:
    xsappname = "mcp-server!t5874"
    issuer = f"{idp.issuer}/oauth/token"  # {url}/oauth/token; keys from the configured jwks_uri
    config = issuer_config(issuer, audiences=("sb-mcp-server!t5874", xsappname), profile="xsuaa",
                           xsappname=xsappname, jwks_uri=f"{idp.issuer}/oauth2/certs")
    now = int(clock())
    claims = {
        "iss": issuer, "sub": "sb-consumer!b12", "cid": "sb-consumer!b12", "client_id": "sb-consumer!b12",
        "azp": "sb-consumer!b12", "zid": "zone-5874", "aud": [xsappname, "uaa"], "iat": now, "exp": now + 600,
        "jti": uuid.uuid4().hex, "grant_type": "client_credentials",
        "scope": [f"{xsappname}.read", f"{xsappname}.write", "uaa.resource", "other-app!t1.admin"],
    }
    token_str = pyjwt.encode(claims, private_pem(KEY), algorithm="RS256", headers={"kid": KID})
    v = JWTVerifier(settings_for(config), clock=clock)
    try:
        discovery_before = idp.discovery_fetches
        token = await v.verify(token_str)
        assert idp.discovery_fetches == discovery_before
    finally:
        await v.aclose()
    assert (token.client_id, token.tenant, token.issuer) == ("sb-consumer!b12", "zone-5874", issuer)
    assert token.permissions == {"read", "write"}


async def test_entra_token_minted_by_hand_with_cryptography(idp: IdP, clock: Clock) -> None:
    issuer = f"{idp.issuer}/tid-1/v2.0"  # stands in for https://login.microsoftonline.com/<tid>/v2.0
    config = issuer_config(issuer, audiences=("api://mcp-server",), profile="entra",
                           jwks_uri=f"{idp.issuer}/oauth2/certs")
    now = int(clock())
    claims = {
        "iss": issuer, "aud": "api://mcp-server", "sub": "object-id-1", "azp": "entra-client-app",
        "tid": "tid-1", "oid": "object-id-1", "scp": "notes.read notes.write", "roles": ["Notes.Admin"],
        "iat": now, "nbf": now, "exp": now + 600, "ver": "2.0",
    }
    raw = compact({"alg": "RS256", "kid": KID, "typ": "JWT"}, claims, key=KEY)  # PKCS#1 v1.5 over SHA-256
    v = JWTVerifier(settings_for(config), clock=clock)
    try:
        token = await v.verify(raw)
    finally:
        await v.aclose()
    assert (token.client_id, token.tenant, token.subject) == ("entra-client-app", "tid-1", "object-id-1")
    assert token.permissions == {"notes.read", "notes.write", "Notes.Admin"}


# --- several trusted issuers at once ---------------------------------------------------------------------

async def test_several_issuers_each_with_own_keys_audiences_and_profile(idp: IdP, clock: Clock) -> None:
    with running_idp() as other:  # its own freshly generated key, also published as kid "key-1"
        assert other.key.kid == KID
        settings = settings_for(
            issuer_config(idp.issuer),
            issuer_config(other.issuer, audiences=("b-audience",), profile="generic"),
            implies={"write": frozenset({"read"})},
        )
        v = JWTVerifier(settings, clock=clock)
        now = int(clock())
        a = Ctx(issuer=idp.issuer, now=now)
        try:
            assert (await v.verify(a.good())).permissions == {"api_read_access", "api_write_access"}
            b_token = other.mint(aud="b-audience", scope="write", ias_apis=None)
            b = await v.verify(b_token)
            assert (b.issuer, b.permissions) == (other.issuer, {"write", "read"})
            with pytest.raises(InvalidToken):  # claims A, signed with B's key under the same kid
                await v.verify(other.mint(a.claims()))
            with pytest.raises(InvalidToken):  # claims B, signed with A's key
                await v.verify(a.token(claims=other.claims(aud="b-audience")))
            with pytest.raises(InvalidToken):  # A's token naming only B's audience
                await v.verify(a.token(claims=a.claims(aud="b-audience")))
            with pytest.raises(InvalidToken):  # B's token naming only A's audience
                await v.verify(other.mint(aud=AUDIENCE))
        finally:
            await v.aclose()


async def test_idp_down_with_nothing_cached_is_keys_unavailable_not_invalid_token(clock: Clock) -> None:
    with running_idp(mode="down") as down:
        v = JWTVerifier(settings_for(down.issuer), clock=clock)
        try:
            with pytest.raises(KeysUnavailable) as info:
                await v.verify(down.mint())
            assert info.value.retry_after >= 1
        finally:
            await v.aclose()


def test_verifier_satisfies_the_token_verifier_protocol(idp: IdP) -> None:
    from auth import TokenVerifier

    assert isinstance(JWTVerifier(settings_for(idp.issuer)), TokenVerifier)


@pytest.fixture
def tenants(idp: IdP) -> Iterator[IdP]:
    """The module's IdP serving multi-tenant labels (reset afterwards)."""
    idp.reset(keys=[idp_key()])
    yield idp
    idp.reset(keys=[idp_key()])


@contextlib.asynccontextmanager
async def multi_tenant(idp: IdP, monotonic: Clock) -> AsyncIterator[JWTVerifier]:
    """A multi-tenant verifier reaching ``https://<label>.<tenant_domain>`` through the IdP's routing."""
    settings = settings_for(issuer_config(idp.issuer, domains=(idp.tenant_domain,)), jwks_refresh_cooldown_s=30)
    v = JWTVerifier(settings, client=httpx.AsyncClient(transport=TenantRouting(idp)), monotonic=monotonic)
    try:
        yield v
    finally:
        await v.aclose()
        await v._client.aclose()


async def test_token_named_issuers_that_do_not_exist_cost_one_request_each_and_no_budget(
        tenants: IdP, monotonic: Clock) -> None:
    """Forged labels that fail cheaply (404, no such name, refused) never refuse a first-time tenant."""
    tenants.tenants.add("newcomer")
    async with multi_tenant(tenants, monotonic) as v:
        labels = [f"gone{n}" for n in range(40)] + [f"nx{n}" for n in range(20)] + [f"down{n}" for n in range(20)]
        tenants.unresolvable.update(lb for lb in labels if lb.startswith("nx"))
        tenants.refusing.update(lb for lb in labels if lb.startswith("down"))
        for _ in range(2):  # each label twice: the second time answered from memory
            for label in labels:
                error = KeysUnavailable if label.startswith("down") else InvalidToken
                with pytest.raises(error):
                    await v.verify(forged_token(tenants.tenant_issuer(label)))
        token = await v.verify(tenants.mint(iss=tenants.tenant_issuer("newcomer")))
        assert token.issuer == tenants.tenant_issuer("newcomer")
        stats = v.cache_stats()
    assert all(tenants.lookups[label] == 1 for label in labels)
    assert (stats["newcomers"], stats["tenants"], stats["remembered_failures"]) == (0, 1, 80)
    assert stats["discoveries"] == 81


async def test_keys_found_for_no_valid_token_are_charged_to_the_source_and_paid_back_by_a_valid_one(
        tenants: IdP, monotonic: Clock) -> None:
    real = [f"real{n}" for n in range(9)]
    first_timers = [f"first{n}" for n in range(20)]  # after a restart every tenant is a first-time one
    tenants.tenants.update([*real, *first_timers, "known"])
    async with multi_tenant(tenants, monotonic) as v:
        await v.verify(tenants.mint(iss=tenants.tenant_issuer("known")))
        for label in first_timers:  # valid tokens: their discoveries are paid back, however many
            assert (await v.verify(tenants.mint(iss=tenants.tenant_issuer(label)))).issuer.endswith(
                f"//{label}.{tenants.tenant_domain}")
        for label in real[:8]:  # a tenant that exists, a forged token: the source pays
            with pytest.raises(InvalidToken):
                await v.verify(forged_token(tenants.tenant_issuer(label)))
            monotonic.advance(1)
        with pytest.raises(KeysUnavailable) as spent:
            await v.verify(forged_token(tenants.tenant_issuer(real[8])))
        assert spent.value.status == 503 and spent.value.retry_after == 30 - 8
        with pytest.raises(KeysUnavailable):  # new labels from this source wait for the window...
            await v.verify(tenants.mint(iss=tenants.tenant_issuer("late")))
        await v.verify(tenants.mint(iss=tenants.tenant_issuer("known")))  # ...tenants seen before do not
        await v.verify(tenants.mint(iss=tenants.tenant_issuer("first3")))
        await v.verify(tenants.mint())  # nor does the configured issuer
        monotonic.advance(30 - 8)
        tenants.tenants.add("late")
        await v.verify(tenants.mint(iss=tenants.tenant_issuer("late")))
    assert tenants.lookups["late"] == 2  # refused before any request, then discovery and key set


async def test_unproven_issuers_never_evict_a_proven_tenant_and_stay_bounded(tenants: IdP, monotonic: Clock) -> None:
    forged = [f"forged{n}" for n in range(100)]
    tenants.tenants.update([*forged, "known"])
    async with multi_tenant(tenants, monotonic) as v:
        await v.verify(tenants.mint(iss=tenants.tenant_issuer("known")))
        proven = v._known(tenants.tenant_issuer("known"))
        for n, label in enumerate(forged):
            if n % 8 == 0:
                monotonic.advance(30)  # a fresh window for the source's charges
            with pytest.raises(InvalidToken):
                await v.verify(forged_token(tenants.tenant_issuer(label)))
        stats = v.cache_stats()
        assert (stats["tenants"], stats["newcomers"]) == (1, 64)  # found, unproven sets: their own bounded pool
        assert v._known(tenants.tenant_issuer("known")) is proven
        await v.verify(tenants.mint(iss=tenants.tenant_issuer("known")))
    assert tenants.tenant_fetches["known"] == 2  # discovery and key set, never again
