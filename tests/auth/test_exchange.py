"""Token exchange: RFC 7523 JWT bearer and RFC 8693, the calling side against the library's local issuer.

The issuer is `auth.testing.Issuer` with its exchange grants, served by uvicorn on 127.0.0.1 (as
``--dev`` mounts it); exchanged tokens are checked with this layer's own `JWTVerifier`, as the
downstream API would. Clocks are injected where time would otherwise pass.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from auth import AuthSettings, ConfigError, IssuerConfig, JWTVerifier
from auth.client import (
    ClientCredentials,
    ExchangeTarget,
    InvalidClient,
    TokenEndpointUnreachable,
    TokenProvider,
    TokenRequestRejected,
    TokenResponseError,
    ias_resource,
)
from auth.client._credentials import RetryPolicy, parse_token_response
from auth.client._exchange import (
    ACCESS_TOKEN_TYPE,
    JWT_BEARER,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    check_exchange_response,
    exchange_request_form,
    looks_like_jwt,
    token_digest,
)
from auth.testing import DEFAULT_CLIENTS, Audience, Issuer, RegisteredClient
from auth.testing._grants import JWT_BEARER as LIBRARY_JWT_BEARER
from tests._live import free_port, running_server

pytestmark = pytest.mark.timeout(60)

BACKEND = "dev-backend"
BACKEND_RESOURCE = ias_resource(name="notes-backend")
SERVER = ("mcp-dev-server", "mcp-dev-server-secret")
CLIENTS = (
    *DEFAULT_CLIENTS,
    RegisteredClient(SERVER[0], SERVER[1], ("backend_read",)),
    RegisteredClient("other-app", "other-app-secret", ("backend_read",)),
)


@dataclass
class Served:
    issuer: Issuer
    base_url: str

    def credentials(self, client: tuple[str, str] = SERVER) -> ClientCredentials:
        return ClientCredentials(client[0], token_endpoint=self.issuer.token_endpoint, client_secret=client[1])

    def caller_token(self, client_id: str = "dev-read", **claims: Any) -> str:
        """A caller's token as the MCP server receives it: addressed to the server (the first audience)."""
        return self.issuer.mint(client_id, claims=claims)

    def verifier(self, audience: str = BACKEND) -> JWTVerifier:
        settings = AuthSettings(
            issuers=(IssuerConfig(issuer=self.issuer.url, audiences=(audience,)),),
            resource_url=self.base_url + "/dev-backend",
        )
        return JWTVerifier(settings)


@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[Served]:
    built: list[Issuer] = []

    def factory(base_url: str) -> Starlette:
        issuer = Issuer(
            base_url + "/dev-ias",
            clients=CLIENTS,
            audiences=[Audience(SERVER[0]), Audience(BACKEND, (base_url + "/dev-backend",), "notes-backend")],
        )
        built.append(issuer)
        return Starlette(routes=[Mount("/dev-ias", app=issuer.app())])

    with running_server(factory=factory) as url:
        yield Served(built[0], url)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def provider(issuer: Served, **kw: Any) -> TokenProvider:
    kw.setdefault("retry", RetryPolicy(attempts=1))
    kw.setdefault("timeout", 5.0)
    return TokenProvider(issuer.credentials(kw.pop("client", SERVER)), **kw)


# --------------------------------------------------------------------------- the grants, over HTTP


async def test_jwt_bearer_keeps_subject_and_client_names_the_target_and_records_the_actor(dev_issuer: Served) -> None:
    caller = dev_issuer.caller_token("dev-read")
    async with provider(dev_issuer) as p:
        issued = await p.exchange(caller, ExchangeTarget("jwt-bearer", resource=BACKEND_RESOURCE))
    verified = await dev_issuer.verifier().verify(issued.access_token)  # the backend's own check passes
    assert verified.subject == "dev-read" and verified.client_id == "dev-read"
    assert verified.audience == (BACKEND,)
    assert verified.claims["act"] == {"sub": SERVER[0]}
    assert verified.permissions == frozenset({"backend_read"})  # the server's grant on the backend
    with pytest.raises(Exception):  # and it is no token for the MCP server
        await dev_issuer.verifier(SERVER[0]).verify(issued.access_token)


async def test_token_exchange_by_audience_answers_issued_token_type(dev_issuer: Served) -> None:
    caller = dev_issuer.caller_token("dev-full")
    target = ExchangeTarget("token-exchange", audience=BACKEND, token_format=None)
    async with provider(dev_issuer) as p:
        issued = await p.exchange(caller, target)
    claims = claims_of(issued.access_token)
    assert claims["aud"] == [BACKEND] and claims["sub"] == "dev-full" and claims["act"] == {"sub": SERVER[0]}


async def test_token_exchange_with_an_actor_token_records_the_actor_and_nests_earlier_ones(dev_issuer: Served) -> None:
    earlier = {"sub": "gateway"}
    caller = dev_issuer.caller_token("dev-read", act=earlier)
    actor = dev_issuer.issuer.mint("robot", permissions=None)
    target = ExchangeTarget("token-exchange", resource=BACKEND_RESOURCE, token_format=None)
    async with provider(dev_issuer) as p:
        issued = await p.exchange(caller, target, actor_token=actor)
    assert claims_of(issued.access_token)["act"] == {"sub": "robot", "act": earlier}


async def test_the_exchanged_token_does_not_outlive_the_subject_token(dev_issuer: Served) -> None:
    caller = dev_issuer.issuer.mint("dev-read", lifetime=120)
    async with provider(dev_issuer) as p:
        issued = await p.exchange(caller, ExchangeTarget("jwt-bearer", resource=BACKEND_RESOURCE))
    assert claims_of(issued.access_token)["exp"] == claims_of(caller)["exp"]
    assert issued.expires_in <= 120


@pytest.mark.parametrize(
    ("make_subject", "target", "error"),
    [
        # a token for another application cannot be exchanged by the server
        (lambda i: i.issuer.mint("dev-read", audience="other-app"), ExchangeTarget(resource=BACKEND_RESOURCE),
         "invalid_grant"),
        (lambda i: i.issuer.mint("dev-read", expired=True), ExchangeTarget(resource=BACKEND_RESOURCE),
         "invalid_grant"),
        (lambda i: i.caller_token(iss="https://evil.example"), ExchangeTarget(resource=BACKEND_RESOURCE),
         "invalid_grant"),
        (lambda i: i.issuer.mint("dev-read", foreign_key=True), ExchangeTarget(resource=BACKEND_RESOURCE),
         "invalid_grant"),
        (lambda i: i.caller_token(may_act={"sub": "someone-else"}),
         ExchangeTarget(resource=BACKEND_RESOURCE), "invalid_grant"),
        (lambda i: i.caller_token(), ExchangeTarget(resource=ias_resource(name="nobody")), "invalid_target"),
        (lambda i: i.caller_token(), ExchangeTarget("token-exchange", audience="nobody", token_format=None),
         "invalid_target"),
        (lambda i: i.caller_token(), ExchangeTarget(resource=BACKEND_RESOURCE, token_format="opaque"),
         "invalid_request"),
        (lambda i: i.caller_token(),
         ExchangeTarget("token-exchange", resource=BACKEND_RESOURCE, token_format=None, subject_token_type="id_token"),
         "invalid_request"),
    ],
    ids=["not-addressed-to-the-client", "expired", "foreign-issuer", "another-key", "may-act-someone-else",
         "unknown-resource",
         "unknown-audience", "opaque-format", "id-token-subject"],
)
async def test_the_issuer_refuses_what_a_real_issuer_refuses(
    dev_issuer: Served, make_subject: Any, target: ExchangeTarget, error: str
) -> None:
    async with provider(dev_issuer) as p:
        with pytest.raises(TokenRequestRejected) as refused:
            await p.exchange(make_subject(dev_issuer), target)
    assert refused.value.status == 400 and refused.value.error == error


async def test_wrong_client_secret_is_invalid_client(dev_issuer: Served) -> None:
    async with provider(dev_issuer, client=(SERVER[0], "wrong")) as p:
        with pytest.raises(InvalidClient):
            await p.exchange(dev_issuer.caller_token(), ExchangeTarget(resource=BACKEND_RESOURCE))


async def test_an_unreachable_issuer_fails_within_bounded_time() -> None:
    credentials = ClientCredentials(
        "c", token_endpoint=f"http://127.0.0.1:{free_port()}/oauth2/token", client_secret="s"
    )
    async with TokenProvider(credentials, retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02),
                             timeout=1.0) as p:
        with pytest.raises(TokenEndpointUnreachable):
            await asyncio.wait_for(p.exchange("a.b.c", ExchangeTarget(resource=BACKEND_RESOURCE)), 5)


# --------------------------------------------------------------------------- the cache


async def test_one_caller_gets_the_cached_token_another_caller_never_does(dev_issuer: Served) -> None:
    alice, bob = dev_issuer.caller_token("dev-read"), dev_issuer.caller_token("dev-full")
    target = ExchangeTarget(resource=BACKEND_RESOURCE)
    async with provider(dev_issuer) as p:
        first = await p.exchange(alice, target)
        again = await p.exchange(alice, target)
        other = await p.exchange(bob, target)
        assert p.requests == 2 and p.cached_exchanges == 2
    assert again is first
    assert other.access_token != first.access_token
    assert claims_of(other.access_token)["sub"] == "dev-full" and claims_of(first.access_token)["sub"] == "dev-read"


async def test_same_subject_for_two_targets_is_two_entries(dev_issuer: Served) -> None:
    caller = dev_issuer.caller_token()
    async with provider(dev_issuer) as p:
        one = await p.exchange(caller, ExchangeTarget(resource=BACKEND_RESOURCE))
        two = await p.exchange(caller, ExchangeTarget("token-exchange", audience=BACKEND, token_format=None))
        assert p.requests == 2
    assert one.access_token != two.access_token


async def test_concurrent_exchanges_of_one_token_share_one_request(dev_issuer: Served) -> None:
    caller = dev_issuer.caller_token()
    async with provider(dev_issuer) as p:
        results = await asyncio.gather(*(p.exchange(caller, ExchangeTarget(resource=BACKEND_RESOURCE))
                                         for _ in range(30)))
        assert p.requests == 1
    assert len({r.access_token for r in results}) == 1


async def test_the_cache_is_bounded_least_recently_used_first(dev_issuer: Served) -> None:
    tokens = [dev_issuer.caller_token(c) for c in ("dev-read", "dev-full", "other-app")]
    target = ExchangeTarget(resource=BACKEND_RESOURCE)
    async with provider(dev_issuer, exchange_cache_size=2) as p:
        for token in tokens:
            await p.exchange(token, target)
        assert p.cached_exchanges == 2
        await p.exchange(tokens[2], target)  # still cached
        assert p.requests == 3
        await p.exchange(tokens[0], target)  # evicted first: asked again
        assert p.requests == 4


async def test_a_cached_exchange_is_renewed_before_expiry_and_never_kept_past_the_subject(dev_issuer: Served) -> None:
    clock = FakeClock()
    caller = dev_issuer.caller_token()
    target = ExchangeTarget(resource=BACKEND_RESOURCE)
    async with provider(dev_issuer, clock=clock) as p:
        await p.exchange(caller, target, subject_expires_in=200)
        clock.now += 90  # within 200 s, but past the refresh margin of a 200 s lifetime (max(60, 10 %) -> 60)
        await p.exchange(caller, target, subject_expires_in=110)
        assert p.requests == 1
        clock.now += 60
        await p.exchange(caller, target, subject_expires_in=50)
        assert p.requests == 2


async def test_invalidate_forgets_an_exchanged_token(dev_issuer: Served) -> None:
    caller = dev_issuer.caller_token()
    async with provider(dev_issuer) as p:
        issued = await p.exchange(caller, ExchangeTarget(resource=BACKEND_RESOURCE))
        p.invalidate(issued.access_token)
        assert p.cached_exchanges == 0
        await p.exchange(caller, ExchangeTarget(resource=BACKEND_RESOURCE))
        assert p.requests == 2


async def test_nothing_secret_reaches_the_log(dev_issuer: Served, caplog: pytest.LogCaptureFixture) -> None:
    caller = dev_issuer.caller_token()
    caplog.set_level("DEBUG")
    async with provider(dev_issuer) as p:
        issued = await p.exchange(caller, ExchangeTarget(resource=BACKEND_RESOURCE))
        with pytest.raises(TokenRequestRejected):
            await p.exchange(caller, ExchangeTarget(resource=ias_resource(name="nobody")))
    logged = caplog.text
    assert "jwt-bearer token for client mcp-dev-server" in logged
    assert caller not in logged and issued.access_token not in logged and SERVER[1] not in logged


# --------------------------------------------------------------------------- an issuer answering the wrong kind


@pytest.fixture
def odd_issuer() -> Iterator[str]:
    answers: dict[str, dict[str, object]] = {
        "saml": {"access_token": "PHNhbWw6QXNzZXJ0aW9uPg", "token_type": "Bearer", "expires_in": 300},
        "id": {"access_token": "a.b.c", "token_type": "Bearer", "expires_in": 300,
               "issued_token_type": "urn:ietf:params:oauth:token-type:id_token"},
        "na": {"access_token": "a.b.c", "token_type": "N_A", "expires_in": 300,
               "issued_token_type": ACCESS_TOKEN_TYPE},
    }

    async def token(request: Request) -> JSONResponse:
        return JSONResponse(answers[request.path_params["kind"]])

    with running_server(Starlette(routes=[Route("/{kind}/token", token, methods=["POST"])])) as url:
        yield url


@pytest.mark.parametrize(("kind", "target"), [
    ("saml", ExchangeTarget(resource=BACKEND_RESOURCE)),  # token_format=jwt asked for, no JWT came
    ("id", ExchangeTarget("token-exchange", resource=BACKEND_RESOURCE, token_format=None)),
    ("na", ExchangeTarget("token-exchange", resource=BACKEND_RESOURCE, token_format=None)),
])
async def test_an_answer_of_the_wrong_kind_is_refused(odd_issuer: str, kind: str, target: ExchangeTarget) -> None:
    credentials = ClientCredentials("c", token_endpoint=f"{odd_issuer}/{kind}/token", client_secret="s")
    async with TokenProvider(credentials, retry=RetryPolicy(attempts=1)) as p:
        with pytest.raises(TokenResponseError):
            await p.exchange("a.b.c", target)
        assert p.cached_exchanges == 0


# --------------------------------------------------------------------------- pure parts


CREDS = ClientCredentials("me", token_endpoint="https://ias.example/oauth2/token", client_secret="s")


def test_jwt_bearer_form_sends_the_assertion_and_token_format() -> None:
    form = exchange_request_form(CREDS, "a.b.c", ExchangeTarget(resource=BACKEND_RESOURCE),
                                 resource=BACKEND_RESOURCE)
    assert form == {"grant_type": JWT_BEARER, "assertion": "a.b.c", "resource": BACKEND_RESOURCE,
                    "token_format": "jwt"}


def test_token_exchange_form_follows_rfc8693() -> None:
    target = ExchangeTarget("token-exchange", audience="orders", scope="read write", token_format=None,
                            requested_token_type="jwt")
    form = exchange_request_form(CREDS, "a.b.c", target, actor_token="x.y.z")
    assert form == {
        "grant_type": TOKEN_EXCHANGE, "subject_token": "a.b.c", "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": JWT_TOKEN_TYPE, "audience": "orders", "actor_token": "x.y.z",
        "actor_token_type": ACCESS_TOKEN_TYPE, "scope": "read write",
    }


@pytest.mark.parametrize(("kwargs", "setting"), [
    ({"grant": "password"}, "grant"),
    ({"resource": "not a uri"}, "resource"),
    ({"resource": "https://api.example/#frag"}, "resource"),
    ({"audience": "orders"}, "audience"),  # RFC 8693 only
    ({"grant": "token-exchange", "audience": "two words"}, "audience"),
    ({"scope": 'bad"scope'}, "scope"),
    ({"token_format": "saml"}, "token_format"),
    ({"requested_token_type": "jwt"}, "requested_token_type"),  # RFC 8693 only
    ({"grant": "token-exchange", "requested_token_type": "not-a-uri"}, "requested_token_type"),
])
def test_exchange_target_names_the_bad_setting(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as bad:
        ExchangeTarget(**kwargs)
    assert bad.value.setting == setting


def test_no_actor_token_with_jwt_bearer_and_no_empty_subject() -> None:
    with pytest.raises(ConfigError):
        exchange_request_form(CREDS, "a.b.c", ExchangeTarget(resource=BACKEND_RESOURCE), actor_token="x.y.z")
    with pytest.raises(ConfigError):
        exchange_request_form(CREDS, "", ExchangeTarget(resource=BACKEND_RESOURCE))


def test_check_exchange_response_passes_a_jwt_and_refuses_a_saml_assertion() -> None:
    target = ExchangeTarget(resource=BACKEND_RESOURCE)
    good = json.dumps({"access_token": "h.p.s", "token_type": "Bearer"}).encode()
    issued = parse_token_response(200, good, obtained_at=0)
    assert check_exchange_response(issued, good, target) is issued
    saml = json.dumps({"access_token": "PHNhbWw+", "token_type": "Bearer"}).encode()
    with pytest.raises(TokenResponseError):
        check_exchange_response(parse_token_response(200, saml, obtained_at=0), saml, target)


def test_digests_and_jwt_shape() -> None:
    assert token_digest("a") != token_digest("b") and len(token_digest("a")) == 32
    assert looks_like_jwt("eyJ.eyJ.sig") and not looks_like_jwt("PHNhbWw+") and not looks_like_jwt("a.b")


def test_discovery_lists_the_exchange_grants(dev_issuer: Served) -> None:
    assert dev_issuer.issuer.metadata()["grant_types_supported"] == ["client_credentials", JWT_BEARER, TOKEN_EXCHANGE]
    assert LIBRARY_JWT_BEARER == JWT_BEARER


def test_an_x509_client_names_itself_in_the_exchange_form(tmp_path: Any) -> None:
    from tests._certs import TestCA

    issued = TestCA(tmp_path).issue_client("mcp-server")
    creds = ClientCredentials("mcp-server", token_endpoint="https://ias.example/oauth2/token",
                              certificate=issued.cert_pem.decode(), private_key=issued.key_pem.decode())
    form = exchange_request_form(creds, "a.b.c", ExchangeTarget(resource=BACKEND_RESOURCE))
    assert form["client_id"] == "mcp-server" and "client_secret" not in form  # RFC 8705 §2: tls_client_auth
