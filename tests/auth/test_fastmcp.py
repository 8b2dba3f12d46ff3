"""A FastMCP server protected by our verifier, its per-tool ``auth=`` checks fed by our permission names.

The real ``fastmcp`` package serves under uvicorn and the FastMCP client calls it. FastMCP hides
a tool the caller may not use and refuses a call inside HTTP 200; our `protect` answers 403.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import httpx
import pytest
from fastmcp import Client, FastMCP  # the test extra; the auth package itself does not need fastmcp
from fastmcp.exceptions import ToolError

from auth import AuthSettings
from auth.mcp._fastmcp import fastmcp_auth, permission_check
from tests._idp import IdP
from tests._live import running_server

from ._cases import AUDIENCE
from ._support import issuer_config, settings_for

pytestmark = pytest.mark.timeout(60)

READ, WRITE, ADMIN = "api_read_access", "api_write_access", "api_admin"


@pytest.fixture(scope="module")
def served(idp: IdP) -> Iterator[tuple[str, AuthSettings]]:
    built: list[AuthSettings] = []

    def factory(base_url: str) -> Any:
        resource = base_url + "/mcp"
        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource,
                                permission_aliases=MappingProxyType({ADMIN: "notes.admin"}))
        built.append(settings)
        mcp = FastMCP("fast", auth=fastmcp_auth(settings, scopes_supported=[READ, WRITE, "notes.admin"]))

        @mcp.tool(auth=permission_check(WRITE, settings=settings))
        def archive(note_id: int) -> int:
            """Archive a note (writers)."""
            return note_id

        @mcp.tool(auth=permission_check(ADMIN, settings=settings))
        def rotate() -> str:
            """Rotate (administrators; the deployment grants notes.admin)."""
            return "rotated"

        @mcp.tool()
        def ping() -> str:
            """Any valid token."""
            return "pong"

        return mcp.http_app(path="/mcp")

    with running_server(factory=factory, lifespan="on") as base:
        yield base, built[0]


async def tool_names(url: str, token: str) -> set[str]:
    async with Client(url, auth=token) as client:
        return {t.name for t in await client.list_tools()}


async def test_writer_sees_and_calls_the_write_tool(served: tuple[str, AuthSettings], idp: IdP) -> None:
    base, _ = served
    token = idp.mint(aud=base + "/mcp")
    assert await tool_names(base + "/mcp", token) == {"archive", "ping"}
    async with Client(base + "/mcp", auth=token) as client:
        assert (await client.call_tool("archive", {"note_id": 4})).data == 4


async def test_reader_does_not_see_the_write_tool_and_is_refused(served: tuple[str, AuthSettings], idp: IdP) -> None:
    base, _ = served
    token = idp.mint(aud=base + "/mcp", ias_apis=[READ])
    assert await tool_names(base + "/mcp", token) == {"ping"}
    async with Client(base + "/mcp", auth=token) as client:
        with pytest.raises(ToolError):
            await client.call_tool("archive", {"note_id": 4})
        assert (await client.call_tool("ping", {})).data == "pong"


async def test_aliased_permission_grants_the_tool_declared_with_the_logical_name(
    served: tuple[str, AuthSettings], idp: IdP
) -> None:
    base, _ = served
    aliased = idp.mint(aud=base + "/mcp", ias_apis=["notes.admin"])
    assert await tool_names(base + "/mcp", aliased) == {"rotate", "ping"}
    logical = idp.mint(aud=base + "/mcp", ias_apis=[ADMIN])  # the logical name is not what this deployment grants
    assert await tool_names(base + "/mcp", logical) == {"ping"}


@pytest.mark.parametrize("header", [None, "Bearer not-a-jwt"])
def test_missing_or_invalid_token_gets_401(served: tuple[str, AuthSettings], header: str | None) -> None:
    base, _ = served
    headers = {"Accept": "application/json, text/event-stream"} | ({"Authorization": header} if header else {})
    response = httpx.post(base + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
    assert response.status_code == 401
    assert ('error="invalid_token"' in response.headers["www-authenticate"]) == (header is not None)


def test_token_for_another_audience_gets_401(served: tuple[str, AuthSettings], idp: IdP) -> None:
    base, _ = served
    response = httpx.post(base + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                          headers={"Authorization": f"Bearer {idp.mint(aud='https://other.example/mcp')}",
                                   "Accept": "application/json, text/event-stream"})
    assert response.status_code == 401


def test_metadata_names_our_issuer_and_resource(served: tuple[str, AuthSettings], idp: IdP) -> None:
    base, settings = served
    doc = httpx.get(base + "/.well-known/oauth-protected-resource/mcp").json()
    assert doc["resource"] == settings.resource_url
    assert [s.rstrip("/") for s in doc["authorization_servers"]] == [idp.issuer]


def test_permission_check_rejects_malformed_or_missing_names() -> None:
    with pytest.raises(ValueError):
        permission_check()
    with pytest.raises(ValueError):
        permission_check("two words")


def test_fastmcp_answers_a_refused_call_inside_http_200_not_with_403(
    served: tuple[str, AuthSettings], idp: IdP
) -> None:
    """What the README's comparison says: FastMCP hides the tool; `protect` would answer 403 here."""
    base, _ = served
    headers = {"Authorization": f"Bearer {idp.mint(aud=base + '/mcp', ias_apis=[READ])}",
               "Accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
        init = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}})
        assert init.status_code == 200
        session = {"mcp-session-id": init.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        call = http.post("/mcp", headers=session, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                                        "params": {"name": "archive", "arguments": {"note_id": 1}}})
    assert call.status_code == 200
    assert "www-authenticate" not in call.headers
    assert '"isError":true' in call.text
