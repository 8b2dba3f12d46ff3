"""Fit with the mcp SDK and Starlette.

* `JWTVerifier` is the SDK's ``TokenVerifier``: a plain SDK ``MCPServer(token_verifier=..., auth=...)``
  served by uvicorn and called with the SDK's client, in both protocol generations. What that route
  loses against our middleware is pinned here too (503 becomes 401).
* `BearerAuthMiddleware` sets what Starlette reads (``scope["user"]``, ``scope["auth"]``), so
  ``starlette.authentication.requires`` guards a plain route, and builds it once per verified token.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings as SdkAuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.authentication import requires as starlette_requires
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auth import AuthSettings, BearerAuthMiddleware, JWTVerifier, VerifiedToken
from auth._sdk import PrincipalCache, access_token
from tests._idp import IdP
from tests._live import running_server

from ._cases import AUDIENCE
from ._support import issuer_config, settings_for

pytestmark = pytest.mark.timeout(60)

MODES = ("legacy", "2026-07-28")
READ, WRITE = "api_read_access", "api_write_access"


def settings_at(idp: IdP, resource: str, **overrides: Any) -> AuthSettings:
    return settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource, **overrides)


@contextlib.asynccontextmanager
async def sdk_client(url: str, token: str, mode: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(20.0)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


# -- a plain SDK MCPServer with our verifier ------------------------------------------------------------


@dataclasses.dataclass
class PlainServer:
    url: str
    resource: str
    verifier: JWTVerifier


@contextlib.contextmanager
def plain_sdk_server(idp: IdP) -> Iterator[PlainServer]:
    built: list[PlainServer] = []

    def factory(base_url: str) -> Any:
        resource = base_url + "/mcp"
        verifier = JWTVerifier(settings_at(idp, resource))
        mcp = MCPServer(
            "plain",
            token_verifier=verifier,  # no adapter: JWTVerifier is the SDK's TokenVerifier
            auth=SdkAuthSettings(issuer_url=idp.issuer, resource_server_url=resource, validate_token_resource=True),
        )

        @mcp.tool()
        async def me() -> dict[str, Any]:
            """The caller as the SDK sees it."""
            token = get_access_token()
            assert token is not None
            return {"client_id": token.client_id, "scopes": token.scopes, "resource": token.resource,
                    "subject": token.subject, "issuer": (token.claims or {}).get("iss")}

        built.append(PlainServer(resource, resource, verifier))
        return mcp.streamable_http_app(streamable_http_path="/mcp")

    with running_server(factory=factory, lifespan="on"):
        yield built[0]


@pytest.fixture(scope="module")
def plain(idp: IdP) -> Iterator[PlainServer]:
    with plain_sdk_server(idp) as srv:
        yield srv


@pytest.fixture(autouse=True)
def healthy_idp(idp: IdP) -> Iterator[None]:
    idp.reset()
    yield
    idp.reset()


@pytest.mark.parametrize("mode", MODES)
async def test_plain_sdk_server_serves_a_valid_token_and_the_tool_sees_our_principal(
    plain: PlainServer, idp: IdP, mode: str
) -> None:
    async with sdk_client(plain.url, idp.mint(aud=plain.resource), mode) as client:
        result = await client.call_tool("me", {})
    assert not result.is_error, result
    assert result.structured_content == {
        "client_id": "consumer-client",
        "scopes": [READ, WRITE],
        "resource": plain.resource,
        "subject": "consumer-client",
        "issuer": idp.issuer,
    }


@pytest.mark.parametrize("mode", MODES)
async def test_plain_sdk_server_refuses_a_token_for_another_audience(plain: PlainServer, idp: IdP, mode: str) -> None:
    with pytest.raises(BaseExceptionGroup) as info:  # the SDK client's task group surfaces the 401
        async with sdk_client(plain.url, idp.mint(aud="https://other.example/mcp"), mode) as client:
            await client.call_tool("me", {})
    assert info.value.subgroup(MCPError) is not None
    response = httpx.post(plain.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                          headers={"Authorization": f"Bearer {idp.mint(aud='https://other.example/mcp')}",
                                   "Accept": "application/json, text/event-stream"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_plain_sdk_route_turns_unavailable_keys_into_401_where_our_middleware_answers_503(
    plain: PlainServer, idp: IdP
) -> None:
    idp.mode = "down"
    unknown_kid = idp.mint(aud=plain.resource, header={"kid": "not-yet-published"})
    response = httpx.post(plain.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                          headers={"Authorization": f"Bearer {unknown_kid}",
                                   "Accept": "application/json, text/event-stream"})
    assert response.status_code == 401  # the protocol has no way to say "try again later"


# -- verify_token as a unit --------------------------------------------------------------------------


async def test_verify_token_maps_our_principal_to_the_sdk_access_token(idp: IdP) -> None:
    resource = "https://mcp.example.com/mcp"
    verifier = JWTVerifier(settings_at(idp, resource))
    raw = idp.mint(aud=resource)
    try:
        token = await verifier.verify_token(raw)
        verified = await verifier.verify(raw)
    finally:
        await verifier.aclose()
    assert isinstance(token, AccessToken)
    assert (token.token, token.client_id, token.scopes, token.expires_at, token.resource) == (
        raw, verified.client_id, sorted(verified.permissions), verified.expires_at, resource)


@pytest.mark.parametrize("overrides", [{"exp": 1}, {"aud": "https://other.example"}, {"iss": "https://evil.example"}])
async def test_verify_token_returns_none_for_a_refused_token(idp: IdP, overrides: dict[str, Any]) -> None:
    verifier = JWTVerifier(settings_at(idp, "https://mcp.example.com/mcp"))
    try:
        assert await verifier.verify_token(idp.mint(**overrides)) is None
        assert await verifier.verify_token("not a jwt") is None
    finally:
        await verifier.aclose()


async def test_verify_token_refuses_when_certificate_binding_is_required(idp: IdP) -> None:
    """The SDK's protocol cannot see the client certificate: fail closed rather than skip RFC 8705."""
    resource = "https://mcp.example.com/mcp"
    verifier = JWTVerifier(settings_at(idp, resource, cert_binding="required"))
    try:
        raw = idp.mint(aud=resource)
        assert await verifier.verify(raw)  # the token itself is fine
        assert await verifier.verify_token(raw) is None
    finally:
        await verifier.aclose()


# -- our middleware: scope["user"], scope["auth"], Starlette's requires --------------------------------------


def token_of(client_id: str, *permissions: str) -> VerifiedToken:
    return VerifiedToken(subject=client_id, client_id=client_id, issuer="https://issuer.example",
                         audience=("https://rs.example/mcp",), permissions=frozenset(permissions),
                         expires_at=2_000_000_000)


class FixedVerifier:
    """Tokens by name (the middleware's own behaviour is under test, not verification)."""

    def __init__(self) -> None:
        self.tokens = {"writer": token_of("writer", READ, WRITE), "reader": token_of("reader", READ)}

    async def verify(self, token: str) -> VerifiedToken:
        from auth import InvalidToken

        if token not in self.tokens:
            raise InvalidToken("unknown")
        return self.tokens[token]


@pytest.fixture(scope="module")
def starlette_url() -> Iterator[str]:
    @starlette_requires(WRITE)
    async def admin(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def who(request: Request) -> JSONResponse:
        user = request.user
        return JSONResponse({"authenticated": user.is_authenticated, "name": user.display_name,
                             "scopes": request.auth.scopes, "sdk": isinstance(user, AuthenticatedUser),
                             "user_id": id(user),
                             "access_token_client": getattr(get_access_token(), "client_id", None)})

    app = Starlette(routes=[Route("/mcp/admin", admin), Route("/mcp/who", who)])
    settings = AuthSettings(issuers=(issuer_config("https://issuer.example"),), resource_url="https://rs.example/mcp")
    with running_server(BearerAuthMiddleware(app, verifier=FixedVerifier(), settings=settings)) as base:
        yield base


@pytest.mark.parametrize(("token", "status"), [("writer", 200), ("reader", 403)])
def test_starlette_requires_on_a_route_behind_our_middleware(starlette_url: str, token: str, status: int) -> None:
    response = httpx.get(starlette_url + "/mcp/admin", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == status


def test_route_without_a_token_is_answered_by_our_middleware_not_reached(starlette_url: str) -> None:
    response = httpx.get(starlette_url + "/mcp/admin")
    assert response.status_code == 401
    assert "error=" not in response.headers["www-authenticate"]


def test_route_sees_the_sdk_user_and_starlette_credentials(starlette_url: str) -> None:
    body = httpx.get(starlette_url + "/mcp/who", headers={"Authorization": "Bearer reader"}).json()
    assert body["authenticated"] is True and body["sdk"] is True
    assert (body["name"], body["scopes"], body["access_token_client"]) == ("reader", [READ], "reader")


def test_the_user_object_is_built_once_per_verified_token(starlette_url: str) -> None:
    with httpx.Client(base_url=starlette_url, headers={"Authorization": "Bearer writer"}) as client:
        ids = {client.get("/mcp/who").json()["user_id"] for _ in range(3)}
        other = httpx.get(starlette_url + "/mcp/who", headers={"Authorization": "Bearer reader"}).json()["user_id"]
    assert len(ids) == 1 and other not in ids


def test_principal_cache_is_bounded_and_keyed_by_the_verified_token_and_raw_token() -> None:
    cache = PrincipalCache("https://rs.example/mcp", max_entries=2)
    a, b, c = token_of("a", READ), token_of("b"), token_of("c")
    user_a, creds_a = cache.get(a, "raw-a")
    assert cache.get(a, "raw-a")[0] is user_a
    assert creds_a.scopes == [READ] and user_a.access_token.token == "raw-a"
    assert cache.get(a, "raw-other")[0].access_token.token == "raw-other"  # another bearer: rebuilt
    cache.get(b, "raw-b")
    cache.get(c, "raw-c")
    assert len(cache) == 2


def test_shared_access_token_cannot_be_reassigned() -> None:
    shared = access_token(token_of("a", READ), "raw", resource="https://rs.example/mcp", shared=True)
    with pytest.raises(Exception):  # pydantic's frozen-instance ValidationError
        shared.client_id = "someone-else"  # type: ignore[misc]
