"""``protect(mcp, settings, rate_limit=...)`` on the user's path: a plain SDK ``MCPServer`` under uvicorn.

One client flooding gets 429 (``Retry-After`` in whole seconds, a JSON-RPC error with code -32029
in both framings, before any tool runs) while another client's calls all succeed; reads and writes
have separate buckets; requests refused 401 or 403 never reach a bucket.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import ToolAnnotations

from auth.mcp import Rate, RateLimiter, protect, requires
from tests._idp import IdP
from tests._live import running_server

from ._cases import AUDIENCE
from ._support import issuer_config, settings_for

pytestmark = pytest.mark.timeout(60)

READ, WRITE = "api_read_access", "api_write_access"
RATE_LIMITED = -32029
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
SLOW = 0.001  # tokens per second: nothing refills during a test, so every count is exact


@dataclass
class Served:
    url: str
    limiter: RateLimiter
    ran: list[str]


@pytest.fixture
def served(idp: IdP) -> Iterator[Served]:
    limiter = RateLimiter(read=Rate(SLOW, 5), write=Rate(SLOW, 2))
    ran: list[str] = []

    def factory(base_url: str) -> Any:
        resource = base_url + "/mcp"
        mcp = MCPServer("limited", log_level="WARNING")

        @mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
        async def look() -> str:
            ran.append("look")
            return "seen"

        @mcp.tool()
        @requires(WRITE)
        async def change() -> str:
            ran.append("change")
            return "changed"

        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource)
        app = mcp.streamable_http_app(streamable_http_path="/mcp", json_response=True, stateless_http=True)
        return protect(mcp, settings, app=app, rate_limit=limiter)

    with running_server(factory=factory, lifespan="on") as base:
        yield Served(base + "/mcp", limiter, ran)


def _call(url: str, token: str, tool: str, *, modern: bool, request_id: int = 1) -> httpx.Response:
    params: dict[str, Any] = {"name": tool, "arguments": {}}
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {token}"}
    if modern:
        params["_meta"] = ENVELOPE
        headers |= {"Mcp-Method": "tools/call", "Mcp-Name": tool, "MCP-Protocol-Version": "2026-07-28"}
    else:
        headers["MCP-Protocol-Version"] = "2025-11-25"
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    return httpx.post(url, json=body, headers=headers, timeout=10)


def _assert_rate_limited(response: httpx.Response, request_id: int, limit: str) -> None:
    assert response.status_code == 429, response.text
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    body = response.json()
    assert body["id"] == request_id and body["error"]["code"] == RATE_LIMITED
    assert body["error"]["data"] == {"error": "rate_limited", "limit": limit, "retry_after": int(retry_after),
                                     "status": 429}
    assert "www-authenticate" not in response.headers  # not an authentication problem


@pytest.mark.parametrize("modern", [False, True], ids=["2025-11-25", "2026-07-28"])
def test_a_flooding_client_gets_429_while_another_client_is_served(served: Served, idp: IdP, modern: bool) -> None:
    flooder, other = idp.mint(azp="flooder", sub="flooder"), idp.mint(azp="other", sub="other")
    statuses = []
    for n in range(12):
        response = _call(served.url, flooder, "look", modern=modern, request_id=n)
        statuses.append(response.status_code)
        if response.status_code == 429:
            _assert_rate_limited(response, n, "read")
        if n % 3 == 0:  # the other client, interleaved, stays within its own budget of 5
            answer = _call(served.url, other, "look", modern=modern, request_id=100 + n)
            assert answer.status_code == 200 and answer.json()["result"]["isError"] is False
    assert statuses == [200] * 5 + [429] * 7
    assert served.ran.count("look") == 5 + 4  # no tool ran for a refused request


def test_reads_and_writes_have_separate_buckets(served: Served, idp: IdP) -> None:
    token = idp.mint(azp="writer", sub="writer")
    assert [_call(served.url, token, "change", modern=False).status_code for _ in range(4)] == [200, 200, 429, 429]
    _assert_rate_limited(_call(served.url, token, "change", modern=True, request_id=9), 9, "write")
    assert [_call(served.url, token, "look", modern=False).status_code for _ in range(6)] == [200] * 5 + [429]
    assert served.ran.count("change") == 2


def test_refused_401_and_403_never_reach_a_bucket(served: Served, idp: IdP) -> None:
    forged = idp.mint(azp="forged")[:-4] + "AAAA"
    for n in range(20):
        response = _call(served.url, forged if n % 2 else "not-a-jwt", "change", modern=bool(n % 3))
        assert response.status_code == 401
    assert served.limiter.size("read") == served.limiter.size("write") == 0
    reader = idp.mint(azp="reader", sub="reader", ias_apis=[READ])
    for _ in range(5):
        response = _call(served.url, reader, "change", modern=False)
        assert response.status_code == 403 and response.json()["error"]["data"]["error"] == "insufficient_scope"
    assert served.limiter.size("write") == 0
    assert _call(served.url, reader, "look", modern=False).status_code == 200
    assert served.limiter.size("read") == 1


def test_one_client_is_one_bucket_whatever_token_it_presents(served: Served, idp: IdP) -> None:
    # Same issuer, tenant and client: a fresh token does not bring a fresh budget.
    statuses = [_call(served.url, idp.mint(azp="rotating", sub="rotating"), "change", modern=False).status_code
                for _ in range(3)]
    assert statuses == [200, 200, 429]
    other_tenant = idp.mint(azp="rotating", sub="rotating", app_tid="0e8a0e53-0000-4000-8000-000000000001")
    assert _call(served.url, other_tenant, "change", modern=False).status_code == 200


@contextlib.asynccontextmanager
async def sdk_client(url: str, token: str, mode: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(20.0)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_the_sdk_client_sees_the_rate_limit_error(served: Served, idp: IdP, mode: str) -> None:
    token = idp.mint(azp=f"sdk-{mode}", sub="sdk")
    async with sdk_client(served.url, token, mode) as client:
        assert (await client.call_tool("change", {})).is_error is False
        assert (await client.call_tool("change", {})).is_error is False
        with pytest.raises(MCPError) as caught:
            await client.call_tool("change", {})
    assert caught.value.error.code == RATE_LIMITED
    assert "rate_limited (HTTP 429)" in caught.value.error.message
