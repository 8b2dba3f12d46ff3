"""The OpenAI Agents SDK's ``MCPServerStreamableHttp`` (``openai-agents``, on ``mcp`` 2.x), no model.

The SDK calls the server directly (``list_tools``/``call_tool``), as an agent run would; auth
by ``headers`` or by ``params["auth"]`` (an ``httpx2.Auth`` under ``mcp`` 2.x: the provider's
``httpx2_auth()``).
"""

from __future__ import annotations

import pytest
from agents.mcp import MCPServerStreamableHttp
from mcp.shared.exceptions import MCPError

from auth.client import ClientCredentials, TokenProvider
from tests.server.conftest import DevServer

from .conftest import ALL_TOOLS, READ_TOOLS, REFUSAL, leaf_errors, titles_in_store, unique


async def test_agents_read_token_in_headers_lists_read_tools_calls_one_and_is_refused_a_write(
    served: DevServer,
) -> None:
    title = unique("agents-read")
    headers = {"Authorization": f"Bearer {served.token('dev-read')}"}
    async with MCPServerStreamableHttp(name="notes", params={"url": served.mcp_url, "headers": headers}) as notes:
        assert {t.name for t in await notes.list_tools()} == READ_TOOLS
        listed = await notes.call_tool("list_notes", {"limit": 3})
        assert not listed.is_error
        with pytest.raises(MCPError) as refused:
            await notes.call_tool("create_note", {"title": title, "body": "b"})
    assert str(refused.value) == f"insufficient_scope (HTTP 403): {REFUSAL}"
    assert titles_in_store(served, title) == []


async def test_agents_with_the_providers_httpx2_auth_writes(served: DevServer) -> None:
    title = unique("agents-full")
    creds = ClientCredentials(client_id="dev-full", client_secret="dev-full-secret",
                              token_endpoint=served.issuer.token_endpoint)
    async with TokenProvider(creds) as provider:
        params = {"url": served.mcp_url, "auth": provider.httpx2_auth()}
        async with MCPServerStreamableHttp(name="notes", params=params) as notes:  # type: ignore[arg-type]
            assert {t.name for t in await notes.list_tools()} == ALL_TOOLS
            created = await notes.call_tool("create_note", {"title": title, "body": "b"})
    assert not created.is_error
    assert titles_in_store(served, title) == [title]


async def test_agents_bad_token_reads_server_returned_an_error_response(served: DevServer) -> None:
    notes = MCPServerStreamableHttp(name="notes", params={"url": served.mcp_url,
                                                          "headers": {"Authorization": "Bearer not.a.token"}})
    try:
        with pytest.raises(BaseException) as bad:
            await notes.connect()
    finally:
        await notes.cleanup()
    errors = leaf_errors(bad.value)
    assert [str(e) for e in errors] == ["Server returned an error response"], errors
    assert isinstance(errors[0], MCPError)
