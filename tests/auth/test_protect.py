"""`protect(mcp, settings)`: one call wires the whole layer into a plain SDK ``MCPServer``.

Served by uvicorn with `protect()`'s default app (the SDK's, stateless with JSON responses) and
with the SDK's stateful one (``stateless=False``: sessions and SSE), whose session-owner binding
reads the ``scope["user"]`` our middleware sets. ``test_protect_user_app.py`` runs a user's app
outside the checkout in several processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from auth.mcp import protect, requires
from tests._idp import IdP
from tests._live import running_server

from ._cases import AUDIENCE
from ._support import issuer_config, settings_for

pytestmark = pytest.mark.timeout(60)

MODES = ("legacy", "2026-07-28")
READ, WRITE = "api_read_access", "api_write_access"


@contextlib.asynccontextmanager
async def sdk_client(url: str, token: str, mode: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(20.0)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


@pytest.fixture(scope="module", params=[True, False], ids=["stateless", "stateful"])
def served(request: pytest.FixtureRequest, idp: IdP) -> Iterator[str]:
    def factory(base_url: str) -> Any:
        resource = base_url + "/mcp"
        mcp = MCPServer("protected")

        @mcp.tool(name="archive")
        @requires(WRITE)
        def archive_note(note_id: int) -> int:
            return note_id

        @mcp.tool()
        async def ping() -> str:
            return "pong"

        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource)
        return protect(mcp, settings, stateless=request.param)

    with running_server(factory=factory, lifespan="on") as base:
        yield base


@pytest.mark.parametrize("mode", MODES)
async def test_protected_server_lists_and_runs_the_tool_for_a_writer(served: str, idp: IdP, mode: str) -> None:
    async with sdk_client(served + "/mcp", idp.mint(), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"archive", "ping"}
        result = await client.call_tool("archive", {"note_id": 3})
        assert not result.is_error and result.structured_content == {"result": 3}


@pytest.mark.parametrize("mode", MODES)
async def test_protected_server_hides_and_refuses_the_tool_to_a_reader(served: str, idp: IdP, mode: str) -> None:
    async with sdk_client(served + "/mcp", idp.mint(ias_apis=[READ]), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"ping"}
        with pytest.raises(MCPError):
            await client.call_tool("archive", {"note_id": 3})


def test_protected_server_answers_a_refused_call_with_403_insufficient_scope(served: str, idp: IdP) -> None:
    response = httpx.post(served + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                 "params": {"name": "archive", "arguments": {"note_id": 1}}},
                          headers={"Authorization": f"Bearer {idp.mint(ias_apis=[READ])}",
                                   "Accept": "application/json, text/event-stream"})
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert f'scope="{WRITE}"' in response.headers["www-authenticate"]


def test_protected_server_challenges_a_request_without_a_token(served: str) -> None:
    response = httpx.post(served + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert response.status_code == 401
    assert "error=" not in response.headers["www-authenticate"]
    assert "resource_metadata=" in response.headers["www-authenticate"]


@pytest.mark.parametrize("path", ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"])
def test_protected_server_publishes_metadata_at_both_paths(served: str, idp: IdP, path: str) -> None:
    doc = httpx.get(served + path).json()
    assert doc["resource"] == served + "/mcp"
    assert doc["authorization_servers"] == [idp.issuer]
    assert doc["scopes_supported"] == [WRITE]
