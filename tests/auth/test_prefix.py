"""No way around the auth layer under a path prefix (issue 15, item 1).

A protected app is deployed the ways users deploy one: `protect()` mounted in a Starlette app
(``Mount("/notes", ...)``), behind a proxy that strips the prefix (uvicorn ``root_path``), in
nested mounts, both at once; and `BearerAuthMiddleware` in a plain Starlette app under a prefix.
Each is served by real uvicorn on 127.0.0.1 and attacked over HTTP: no token, a bad token, a
read-only token on a write tool, each asserted by status and error code. Every layer decides on
the path the router routes on, and the endpoint itself refuses a request that no layer
authenticated (fail closed), also when a layer is left out.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from auth import BearerAuthMiddleware, JWTVerifier, current_token
from auth._metadata import resource_metadata_url
from auth.mcp import protect, requires
from auth.mcp._gate import ProtectedApp
from tests._idp import IdP
from tests._live import running_server

from ._cases import AUDIENCE
from ._guarded import forged_token
from ._support import issuer_config, settings_for

pytestmark = pytest.mark.timeout(60)

READ, WRITE = "api_read_access", "api_write_access"
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def challenge(response: httpx.Response) -> dict[str, str]:
    return dict(_PARAM.findall(response.headers.get("www-authenticate", "")))


def rpc(method: str, params: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}}


INITIALIZE = rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                "clientInfo": {"name": "probe", "version": "1"}})
UNAUTHENTICATED = {
    "initialize": INITIALIZE,
    "tools/list": rpc("tools/list"),
    "resources/read": rpc("resources/read", {"uri": "notes://secret"}),
    "unmarked tool": rpc("tools/call", {"name": "ping", "arguments": {}}),
    "write tool": rpc("tools/call", {"name": "archive", "arguments": {"note_id": 1}}),
}


def notes_server() -> MCPServer:
    mcp = MCPServer("notes")

    @mcp.tool(name="archive")
    @requires(WRITE)
    def archive_note(note_id: int) -> int:
        return note_id

    @mcp.tool()
    def ping() -> str:
        return "pong"

    @mcp.resource("notes://secret")
    def secret() -> str:
        return "the secret"

    return mcp


@dataclass(frozen=True)
class Deployment:
    """How the app is deployed: the outer app around `protect()`'s, and the uvicorn ``root_path``."""

    name: str
    wrap: Callable[[ProtectedApp], Any]
    root_path: str = ""
    request_prefix: str = ""  # what a client sends after the proxy stripped root_path

    @property
    def public_prefix(self) -> str:
        return self.root_path + self.request_prefix


def _mounted(*prefixes: str) -> Callable[[ProtectedApp], Any]:
    def wrap(app: ProtectedApp) -> Any:
        inner: Any = app
        for prefix in reversed(prefixes):
            inner = Mount(prefix, app=inner) if inner is app else Mount(prefix, routes=[inner])
        # The documented outer app: the metadata at the host root, the protected app's lifespan.
        return Starlette(routes=[*app.metadata_routes, inner], lifespan=app.lifespan)

    return wrap


DEPLOYMENTS = [
    Deployment("mount", _mounted("/notes"), request_prefix="/notes"),
    Deployment("root_path", lambda app: app, root_path="/notes"),
    Deployment("nested mounts", _mounted("/api", "/notes"), request_prefix="/api/notes"),
    Deployment("root_path and mount", _mounted("/notes"), root_path="/edge", request_prefix="/notes"),
]


@dataclass(frozen=True)
class Served:
    deployment: Deployment
    base_url: str  # where the test connects (the proxy's upstream)

    @property
    def resource(self) -> str:
        return self.base_url + self.deployment.public_prefix + "/mcp"

    @property
    def mcp_url(self) -> str:
        return self.base_url + self.deployment.request_prefix + "/mcp"

    def post(self, body: object, token: str | None = None) -> httpx.Response:
        headers = dict(HEADERS) | ({"Authorization": f"Bearer {token}"} if token is not None else {})
        return httpx.post(self.mcp_url, content=json.dumps(body), headers=headers | {
            "Content-Type": "application/json"}, timeout=10)


@pytest.fixture(scope="module", params=DEPLOYMENTS, ids=lambda d: d.name)
def served(request: pytest.FixtureRequest, idp: IdP) -> Iterator[Served]:
    deployment: Deployment = request.param

    def factory(base_url: str) -> Any:
        resource = base_url + deployment.public_prefix + "/mcp"  # the public URL, prefix included
        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource)
        return deployment.wrap(protect(notes_server(), settings))

    with running_server(factory=factory, lifespan="on", root_path=deployment.root_path) as base_url:
        yield Served(deployment, base_url)


@pytest.mark.parametrize("call", list(UNAUTHENTICATED), ids=str)
def test_no_token_under_a_prefix_gets_the_bare_challenge(served: Served, call: str) -> None:
    response = served.post(UNAUTHENTICATED[call])
    assert response.status_code == 401, (response.status_code, response.text[:200])
    params = challenge(response)
    assert "error" not in params  # RFC 6750 §3.1: no credentials, no error code
    assert response.json() == {"error": "unauthorized"}
    assert params["resource_metadata"] == resource_metadata_url(served.resource)
    assert served.deployment.public_prefix + "/mcp" in params["resource_metadata"]


@pytest.mark.parametrize("call", ["tools/list", "unmarked tool", "initialize"])
def test_bad_token_under_a_prefix_is_invalid_token(served: Served, idp: IdP, call: str) -> None:
    for token in (forged_token(idp.issuer), "not-a-jwt"):
        response = served.post(UNAUTHENTICATED[call], token)
        assert response.status_code == 401, (response.status_code, response.text[:200])
        assert challenge(response)["error"] == "invalid_token"
        assert challenge(response)["resource_metadata"] == resource_metadata_url(served.resource)


def test_read_token_on_a_write_tool_under_a_prefix_is_insufficient_scope(served: Served, idp: IdP) -> None:
    response = served.post(UNAUTHENTICATED["write tool"], idp.mint(ias_apis=[READ]))
    assert response.status_code == 403, (response.status_code, response.text[:200])
    assert challenge(response)["error"] == "insufficient_scope"
    assert challenge(response)["scope"] == WRITE
    assert response.json()["error"]["data"]["error"] == "insufficient_scope"


def test_valid_token_under_a_prefix_is_served(served: Served, idp: IdP) -> None:
    response = served.post(INITIALIZE, idp.mint())
    assert response.status_code == 200, (response.status_code, response.text[:200])
    assert '"protocolVersion"' in response.text


def test_metadata_under_a_prefix_names_the_public_url(served: Served, idp: IdP) -> None:
    """At the host root where RFC 9728 puts it (served by the outer app, or reached through the
    proxy), and at the endpoint's own path form under the prefix."""
    d = served.deployment
    at_root = served.base_url + "/.well-known/oauth-protected-resource" + d.public_prefix + "/mcp"
    mounted = served.base_url + d.request_prefix + "/.well-known/oauth-protected-resource/mcp"
    for url in (at_root, mounted):
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200, url
        doc = response.json()
        assert doc["resource"] == served.resource
        assert doc["authorization_servers"] == [idp.issuer]
        assert doc["scopes_supported"] == [WRITE]


# --- fail closed: the endpoint refuses whatever no layer authenticated --------------------------


@pytest.fixture(scope="module")
def unguarded(idp: IdP) -> Iterator[str]:
    """`protect()`'s endpoint stack served with `BearerAuthMiddleware` left out (the gate and the SDK app)."""

    def factory(base_url: str) -> Any:
        resource = base_url + "/mcp"
        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource)
        app = protect(notes_server(), settings)
        inner = app.endpoint.app  # type: ignore[attr-defined]  # BearerAuthMiddleware's app
        return Starlette(routes=[Mount("/", app=inner)], lifespan=app.lifespan)

    with running_server(factory=factory, lifespan="on") as base_url:
        yield base_url


@pytest.mark.parametrize("call", list(UNAUTHENTICATED), ids=str)
def test_endpoint_without_an_auth_layer_in_front_answers_401(unguarded: str, call: str) -> None:
    response = httpx.post(unguarded + "/mcp", json=UNAUTHENTICATED[call], headers=HEADERS, timeout=10)
    assert response.status_code == 401, (response.status_code, response.text[:200])
    params = challenge(response)
    assert "error" not in params
    assert params["resource_metadata"] == resource_metadata_url(unguarded + "/mcp")
    assert params["scope"] == WRITE


def test_endpoint_without_an_auth_layer_refuses_even_a_valid_token(unguarded: str, idp: IdP) -> None:
    """A token no layer verified is no principal: the endpoint never trusts an unverified header."""
    response = httpx.post(unguarded + "/mcp", json=INITIALIZE, timeout=10,
                          headers=HEADERS | {"Authorization": f"Bearer {idp.mint()}"})
    assert response.status_code == 401
    assert "error" not in challenge(response)


def test_cors_preflight_still_reaches_the_endpoint_of_a_mounted_app(served: Served) -> None:
    response = httpx.options(served.mcp_url, timeout=10, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert response.status_code != 401
    assert "www-authenticate" not in response.headers


# --- BearerAuthMiddleware in a plain Starlette app under a prefix -------------------------------


@dataclass(frozen=True)
class PlainServed:
    base_url: str
    prefix: str  # what the client sends


@pytest.fixture(scope="module", params=["mount", "root_path"])
def plain(request: pytest.FixtureRequest, idp: IdP) -> Iterator[PlainServed]:
    mode: str = request.param

    def factory(base_url: str) -> Any:
        resource = base_url + "/svc/api"
        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource)
        verifier = JWTVerifier(settings)

        async def data(_: Request) -> JSONResponse:
            return JSONResponse({"data": "secret", "client": current_token().client_id})

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            yield
            await verifier.aclose()

        api = Starlette(routes=[Route("/api", data, methods=["GET", "POST"]),
                                Route("/api/items", data, methods=["GET"])])
        guarded = BearerAuthMiddleware(api, verifier=verifier, settings=settings, protect=["/api"])
        if mode == "root_path":
            return Starlette(routes=[Mount("/", app=guarded)], lifespan=lifespan)
        return Starlette(routes=[Mount("/svc", app=guarded)], lifespan=lifespan)

    root_path = "/svc" if mode == "root_path" else ""
    with running_server(factory=factory, lifespan="on", root_path=root_path) as base_url:
        yield PlainServed(base_url, "" if mode == "root_path" else "/svc")


@pytest.mark.parametrize("path", ["/api", "/api/items"])
def test_bearer_middleware_under_a_prefix_refuses_no_token_and_bad_token(
    plain: PlainServed, idp: IdP, path: str
) -> None:
    url = plain.base_url + plain.prefix + path
    response = httpx.get(url, timeout=10)
    assert response.status_code == 401, (response.status_code, response.text[:200])
    assert "error" not in challenge(response)
    assert challenge(response)["resource_metadata"] == resource_metadata_url(plain.base_url + "/svc/api")
    response = httpx.get(url, headers={"Authorization": f"Bearer {forged_token(idp.issuer)}"}, timeout=10)
    assert response.status_code == 401
    assert challenge(response)["error"] == "invalid_token"
    response = httpx.get(url, headers={"Authorization": f"Bearer {idp.mint()}"}, timeout=10)
    assert response.status_code == 200
    assert response.json()["data"] == "secret"
