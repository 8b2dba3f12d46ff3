"""The FastMCP client (``fastmcp`` 4.x, on this project's ``mcp`` 2.x), with no model: list and call tools.

Auth either as ``BearerAuth(token)`` or as the token provider's ``httpx2_auth()`` (FastMCP's
transport is the ``mcp`` SDK's, built on ``httpx2``; an ``httpx.Auth`` is refused).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastmcp import Client
from fastmcp.client.auth import BearerAuth
from mcp.shared.exceptions import MCPError

from auth.client import ClientCredentials, TokenProvider
from tests.server.conftest import DevServer

from .conftest import ALL_TOOLS, READ_TOOLS, REFUSAL, leaf_errors, titles_in_store, unique


@pytest.fixture
async def full_provider(served: DevServer) -> AsyncIterator[TokenProvider]:
    creds = ClientCredentials(client_id="dev-full", client_secret="dev-full-secret",
                              token_endpoint=served.issuer.token_endpoint)
    async with TokenProvider(creds) as provider:
        yield provider


async def test_fastmcp_read_token_lists_read_tools_calls_one_and_is_refused_a_write(served: DevServer) -> None:
    title = unique("fastmcp-read")
    async with Client(served.mcp_url, auth=BearerAuth(served.token("dev-read"))) as client:
        assert {t.name for t in await client.list_tools()} == READ_TOOLS
        listed = await client.call_tool("list_notes", {"limit": 3})
        assert not listed.is_error and isinstance(listed.structured_content["notes"], list)
        with pytest.raises(MCPError) as refused:
            await client.call_tool("create_note", {"title": title, "body": "b"})
        assert await client.call_tool("whoami", {})  # the session goes on after a refusal
    assert str(refused.value) == f"insufficient_scope (HTTP 403): {REFUSAL}"
    assert titles_in_store(served, title) == []


async def test_fastmcp_with_the_providers_httpx2_auth_writes(served: DevServer, full_provider: TokenProvider) -> None:
    title = unique("fastmcp-full")
    async with Client(served.mcp_url, auth=full_provider.httpx2_auth()) as client:
        assert {t.name for t in await client.list_tools()} == ALL_TOOLS
        created = await client.call_tool("create_note", {"title": title, "body": "b"})
    assert created.structured_content["created_by"] == "dev-full"
    assert titles_in_store(served, title) == [title]


async def test_fastmcp_refuses_the_providers_httpx_auth_use_httpx2(full_provider: TokenProvider) -> None:
    with pytest.raises(RuntimeError, match='Invalid "auth" argument'):
        async with Client("http://127.0.0.1:9/mcp", auth=full_provider.httpx_auth()):  # type: ignore[arg-type]
            pass


async def test_fastmcp_bad_token_reads_server_returned_an_error_response(served: DevServer) -> None:
    with pytest.raises(BaseException) as bad:
        async with Client(served.mcp_url, auth=BearerAuth("not.a.token")) as client:
            await client.list_tools()
    messages = [str(e) for e in leaf_errors(bad.value)]
    assert any("Server returned an error response" in m for m in messages), messages
