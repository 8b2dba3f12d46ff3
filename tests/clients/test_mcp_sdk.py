"""The ``mcp`` 2.x SDK client: what a refusal and a bad token look like to its user.

(`tests/server/test_mcp_clients.py` covers the tools themselves through this client.)
"""

from __future__ import annotations

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from auth.client import ClientCredentials, TokenProvider
from auth.mcp._gate import FORBIDDEN, refusal_text
from tests.server.conftest import DevServer, challenge_params, mcp_client, tool_call

from .conftest import ALL_TOOLS, READ_TOOLS, REFUSAL, leaf_errors, titles_in_store, unique


def test_refusal_challenge_names_the_tool_and_the_missing_permission(served: DevServer) -> None:
    r = served.rpc(served.token("dev-read"), tool_call("create_note", {"title": "x"}, modern=False),
                   {"MCP-Protocol-Version": "2025-11-25"})
    assert r.status_code == 403
    params = challenge_params(r.headers["www-authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "api_write_access"
    assert params["error_description"] == REFUSAL
    body = r.json()
    assert body["error"]["code"] == FORBIDDEN
    assert body["error"]["message"] == f"insufficient_scope (HTTP 403): {REFUSAL}"
    assert body["error"]["data"] == {"error": "insufficient_scope", "scope": "api_write_access",
                                     "missing": ["api_write_access"], "status": 403}


def test_refusal_text_leaves_out_names_that_would_break_a_quoted_string() -> None:
    text = refusal_text(['evil"tool\\', "create_note"], frozenset({"api_write_access", 'x"y'}))
    assert text == "Tool create_note needs permission api_write_access, which the access token does not grant"
    assert refusal_text([], frozenset()) == "This tool needs a permission, which the access token does not grant"
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in text)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_mcp_client_read_token_reads_and_sees_the_refusal_text(served: DevServer, mode: str) -> None:
    title = unique("sdk")
    async with mcp_client(served.mcp_url, served.token("dev-read"), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS
        assert not (await client.call_tool("list_notes", {"limit": 3})).is_error
        with pytest.raises(MCPError) as refused:
            await client.call_tool("create_note", {"title": title})
    assert str(refused.value) == f"insufficient_scope (HTTP 403): {REFUSAL}"
    assert titles_in_store(served, title) == []


async def test_mcp_client_with_the_providers_httpx2_auth_writes(served: DevServer) -> None:
    title = unique("sdk-full")
    creds = ClientCredentials(client_id="dev-full", client_secret="dev-full-secret",
                              token_endpoint=served.issuer.token_endpoint)
    async with TokenProvider(creds) as provider, httpx2.AsyncClient(auth=provider.httpx2_auth()) as http:
        async with Client(streamable_http_client(served.mcp_url, http_client=http)) as client:
            assert {t.name for t in (await client.list_tools()).tools} == ALL_TOOLS
            assert not (await client.call_tool("create_note", {"title": title})).is_error
    assert titles_in_store(served, title) == [title]


async def test_mcp_client_bad_token_reads_server_returned_an_error_response(served: DevServer) -> None:
    with pytest.raises(BaseException) as bad:
        async with mcp_client(served.mcp_url, "not.a.token", "legacy") as client:
            await client.list_tools()
    errors = leaf_errors(bad.value)
    assert [type(e) for e in errors] == [MCPError]
    assert str(errors[0]) == "Server returned an error response"  # the 401's reason is only in the server log
