"""Onward calls on the user's path: a user's own MCP server calling the user's own API, as docs/onward-calls.md shows.

Three processes outside the checkout, on 127.0.0.1: the local issuer (``btp-mcp-issuer``, which
exchanges its tokens), the user's API ``orders-api`` (validated with this layer, its own audience),
and the user's MCP server ``orders-agent`` whose tool calls the API on behalf of its caller through
``Downstreams(load_downstreams(os.environ))``. Then the usual attacks: no token, a token for
someone else, a token without the permission, and the caller's token taken straight to the API.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests._live import free_port
from tests.auth.test_issuer_command import REPO, Issuer, issuer_process, process, user_env, wait_for

pytestmark = pytest.mark.timeout(150)

AGENT = ("orders-agent", "agent-pw")
BUYER = ("buyer", "buyer-pw")
NOBODY = ("nobody", "nobody-pw")

ORDERS_API = '''\
"""The user's API: only tokens for orders-api, with the orders_read permission."""
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auth import BearerAuthMiddleware, JWTVerifier, load_settings


async def orders(request: Request) -> JSONResponse:
    token = request.state.token
    if not token.has("orders_read"):
        return JSONResponse({"refused": "orders_read"}, status_code=403)
    act = token.claims.get("act") or {}
    return JSONResponse({"subject": token.subject, "actor": act.get("sub"), "audience": list(token.audience)})


async def health(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


settings = load_settings(os.environ)
routes = [Route("/orders", orders), Route("/health", health)]
app = BearerAuthMiddleware(Starlette(routes=routes), verifier=JWTVerifier(settings), settings=settings,
                           protect=["/orders"])
'''

AGENT_APP = '''\
"""The user's MCP server: a tool that calls orders-api for its caller, one call."""
import contextlib
import os

from mcp.server.mcpserver import MCPServer

from auth import load_settings
from auth.downstream import Downstreams, load_downstreams
from auth.mcp import protect, requires

downstreams = Downstreams(load_downstreams(os.environ))
mcp = MCPServer("orders-agent")


@mcp.tool()
@requires("api_read_access")
async def my_orders(via: str = "orders") -> dict[str, object]:
    """What the orders API says about the caller."""
    response = await downstreams.request(via, "GET", "/orders")
    return response.json()


@contextlib.asynccontextmanager
async def closing():
    yield
    await downstreams.aclose()


settings = load_settings(os.environ)
app = protect(mcp, settings, app=mcp.streamable_http_app(
    streamable_http_path="/mcp", stateless_http=True, json_response=True), lifespan=closing)
'''

MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}


@dataclass
class Setup:
    issuer: Issuer
    agent_url: str
    api_url: str

    def token(self, client: tuple[str, str], **data: str) -> str:
        response = self.issuer.token(client, **data)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def call(self, token: str | None, arguments: dict[str, Any] | None = None) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "my_orders", "arguments": arguments or {}}}
        headers = dict(MCP_HEADERS) | ({"Authorization": f"Bearer {token}"} if token else {})
        return httpx.post(self.agent_url + "/mcp", json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("orders-project")
    assert not folder.resolve().is_relative_to(REPO)
    (folder / "orders_api.py").write_text(ORDERS_API)
    (folder / "app.py").write_text(AGENT_APP)
    api_port, agent_port = free_port(), free_port()
    api_url, agent_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{agent_port}"
    clients = ["--client", f"{AGENT[0]}:{AGENT[1]}:orders_read", "--client", f"{BUYER[0]}:{BUYER[1]}:api_read_access",
               "--client", f"{NOBODY[0]}:{NOBODY[1]}:"]
    with issuer_process(folder, "--key-file", str(folder / "keys" / "issuer.pem"), "--audience", "orders-agent",
                        "--audience", "orders-api", *clients) as issuer:
        uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--log-level", "warning"]
        api_env = user_env(MCP_AUTH_ISSUER=issuer.url, MCP_AUTH_AUDIENCE="orders-api", MCP_RESOURCE_URL=api_url)
        downstreams = {
            "orders": {"url": api_url, "mode": "on-behalf-of",
                       "resource": "urn:sap:identity:application:provider:name:orders-api"},
            "orders-rfc8693": {"url": api_url, "mode": "on-behalf-of", "grant": "token-exchange",
                               "audience": "orders-api"},
            "nowhere": {"url": api_url, "mode": "on-behalf-of",
                        "resource": "urn:sap:identity:application:provider:name:nowhere"},
        }
        agent_env = user_env(
            MCP_AUTH_ISSUER=issuer.url, MCP_AUTH_AUDIENCE="orders-agent", MCP_RESOURCE_URL=agent_url + "/mcp",
            MCP_DOWNSTREAMS=json.dumps(downstreams), MCP_DOWNSTREAM_CLIENT_ID=AGENT[0],
            MCP_DOWNSTREAM_CLIENT_SECRET=AGENT[1], MCP_DOWNSTREAM_ISSUER=issuer.url)
        with process([*uvicorn, "--port", str(api_port), "orders_api:app"], folder / "api.log", folder, api_env) as a:
            wait_for(api_url + "/health", a, folder / "api.log")
            with process([*uvicorn, "--port", str(agent_port), "app:app"], folder / "agent.log", folder,
                         agent_env) as b:
                wait_for(agent_url + "/.well-known/oauth-protected-resource/mcp", b, folder / "agent.log")
                yield Setup(issuer, agent_url, api_url)


def structured(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert not result.get("isError"), result
    return dict(result["structuredContent"])


@pytest.mark.parametrize("via", ["orders", "orders-rfc8693"])
def test_the_tool_reaches_the_api_as_its_caller_with_a_token_for_the_api(setup: Setup, via: str) -> None:
    seen = structured(setup.call(setup.token(BUYER), {"via": via}))
    assert seen == {"subject": "buyer", "actor": "orders-agent", "audience": ["orders-api"]}


def test_the_callers_own_token_is_refused_by_the_api(setup: Setup) -> None:
    response = httpx.get(setup.api_url + "/orders", headers={"Authorization": f"Bearer {setup.token(BUYER)}"})
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["www-authenticate"]


def test_without_a_token_the_agent_answers_401_and_calls_nobody(setup: Setup) -> None:
    response = setup.call(None)
    assert response.status_code == 401 and "error=" not in response.headers["www-authenticate"]


def test_a_token_for_the_api_is_refused_by_the_agent(setup: Setup) -> None:
    stolen = setup.token(AGENT, resource="urn:sap:identity:application:provider:name:orders-api")
    response = setup.call(stolen)
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_caller_without_the_permission_is_refused_before_any_exchange(setup: Setup) -> None:
    response = setup.call(setup.token(NOBODY))
    assert response.status_code == 403 and 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_a_refused_exchange_is_a_tool_error_naming_the_downstream(setup: Setup) -> None:
    response = setup.call(setup.token(BUYER), {"via": "nowhere"})
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["isError"] and "downstream 'nowhere' [exchange_refused]" in result["content"][0]["text"]
    assert "invalid_target" in result["content"][0]["text"]

