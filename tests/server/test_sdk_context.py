"""Inside our server, a tool written the SDK's way sees the caller: ``get_access_token()`` works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer

from .conftest import MODES, DevServer, dev_server, jwt_claims, mcp_client

pytestmark = pytest.mark.timeout(60)


def add_sdk_style_tool(mcp: MCPServer) -> None:
    @mcp.tool()
    async def sdk_me() -> dict[str, Any]:
        """The caller, read the SDK's way."""
        token = get_access_token()
        if token is None:
            return {"token": None}
        return {"client_id": token.client_id, "scopes": token.scopes, "resource": token.resource,
                "expires_at": token.expires_at, "subject": token.subject}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with dev_server(tmp_path_factory.mktemp("notes") / "notes.db", customize=add_sdk_style_tool) as srv:
        yield srv


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("client_id", "scopes"), [("dev-full", ["api_read_access", "api_write_access"]),
                                                   ("dev-read", ["api_read_access"])])
async def test_get_access_token_inside_a_tool_of_our_server(
    server: DevServer, mode: str, client_id: str, scopes: list[str]
) -> None:
    raw = server.token(client_id)
    async with mcp_client(server.mcp_url, raw, mode) as client:
        result = await client.call_tool("sdk_me", {})
    assert not result.is_error, result
    claims = jwt_claims(raw)
    assert result.structured_content == {
        "client_id": client_id,
        "scopes": scopes,
        "resource": server.settings.auth.resource_url,
        "expires_at": claims["exp"],
        "subject": claims["sub"],
    }


def test_get_access_token_is_none_outside_a_request(tmp_path: Path) -> None:
    assert get_access_token() is None
