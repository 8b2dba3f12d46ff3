"""A tool added the documented way (``@mcp.tool()`` over ``@requires(...)``) is gated and listed correctly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from auth import REGISTRY, current_token, requires

from .conftest import (
    ALL_TOOLS,
    LEGACY_HEADERS,
    MODES,
    DevServer,
    challenge_params,
    dev_server,
    mcp_client,
    modern_headers,
    tool_call,
)

pytestmark = pytest.mark.timeout(60)

ADMIN = "api_admin"


def add_admin_tool(mcp: MCPServer) -> None:
    @mcp.tool()
    @requires(ADMIN)
    async def rotate_archive(reason: str) -> dict[str, str]:
        """Rotate the notes archive (administrators only)."""
        return {"rotated_by": current_token().client_id, "reason": reason}


@pytest.fixture
def admin_server(tmp_path: Path, isolated_registry: None) -> Iterator[DevServer]:
    with dev_server(
        tmp_path / "notes.db",
        extra_clients={
            "dev-admin": ("dev-admin-secret", [ADMIN]),
            "dev-everything": ("dev-everything-secret", ["api_read_access", "api_write_access", ADMIN]),
        },
        customize=add_admin_tool,
    ) as srv:
        yield srv


def test_new_tool_declares_its_permission_in_the_registry(admin_server: DevServer) -> None:
    assert REGISTRY.required("rotate_archive") == {ADMIN}


@pytest.mark.parametrize("mode", MODES)
async def test_client_granted_the_new_permission_sees_and_calls_the_new_tool(
    admin_server: DevServer, mode: str
) -> None:
    async with mcp_client(admin_server.mcp_url, admin_server.token("dev-admin"), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"whoami", "rotate_archive"}
        result = await client.call_tool("rotate_archive", {"reason": "monthly"})
        assert not result.is_error, result
        assert result.structured_content == {"rotated_by": "dev-admin", "reason": "monthly"}
    async with mcp_client(admin_server.mcp_url, admin_server.token("dev-everything"), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == ALL_TOOLS | {"rotate_archive"}


@pytest.mark.parametrize("mode", MODES)
async def test_full_access_client_does_not_see_the_new_tool_and_is_refused(
    admin_server: DevServer, mode: str
) -> None:
    async with mcp_client(admin_server.mcp_url, admin_server.token("dev-full"), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == ALL_TOOLS
        with pytest.raises(MCPError):
            await client.call_tool("rotate_archive", {"reason": "sneaky"})
        assert not (await client.call_tool("list_notes", {})).is_error


@pytest.mark.parametrize("generation", ["2026-07-28", "2025-11-25"])
def test_refusal_of_the_new_tool_is_403_naming_its_scope(admin_server: DevServer, generation: str) -> None:
    modern = generation == "2026-07-28"
    response = admin_server.rpc(
        admin_server.token("dev-full"),
        tool_call("rotate_archive", {"reason": "x"}, modern=modern),
        modern_headers("rotate_archive") if modern else LEGACY_HEADERS,
    )
    assert response.status_code == 403
    params = challenge_params(response.headers["www-authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == ADMIN
    assert params["resource_metadata"] == admin_server.metadata_url


def test_new_permission_is_advertised_in_metadata_and_the_401_challenge(admin_server: DevServer) -> None:
    doc = httpx.get(admin_server.metadata_url).json()
    assert set(doc["scopes_supported"]) >= {ADMIN, "api_read_access", "api_write_access"}
    challenge = admin_server.rpc(None, tool_call("whoami", {}, modern=False), LEGACY_HEADERS)
    assert ADMIN in challenge_params(challenge.headers["www-authenticate"])["scope"].split()


def test_registry_is_restored_after_a_test_that_added_a_tool() -> None:
    """Runs after the tests above (file order): their declaration must not leak."""
    assert "rotate_archive" not in REGISTRY.declared()
