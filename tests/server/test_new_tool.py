"""A tool added the documented way (``@mcp.tool()`` over ``@requires(...)``) is gated and listed correctly.

The requirement travels with the registered function: a tool registered under another name
and a sync tool are gated like the rest, and each server owns its table, so two servers in
one process with different aliases do not interfere.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from auth import current_token
from auth.mcp import ToolPermissions, requires
from server import create_app
from server._dev_issuer import DevIssuer
from server._main import dev_settings
from tests._live import running_server

from .conftest import (
    ALL_TOOLS,
    LEGACY_HEADERS,
    MODES,
    READ_TOOLS,
    DevServer,
    challenge_params,
    dev_server,
    mcp_client,
    modern_headers,
    tool_call,
)

pytestmark = pytest.mark.timeout(60)

ADMIN = "api_admin"
WRITE = "api_write_access"
GENERATIONS = ["2026-07-28", "2025-11-25"]


def add_admin_tool(mcp: MCPServer) -> None:
    @mcp.tool()
    @requires(ADMIN)
    async def rotate_archive(reason: str) -> dict[str, str]:
        """Rotate the notes archive (administrators only)."""
        return {"rotated_by": current_token().client_id, "reason": reason}


def add_renamed_and_sync_tools(mcp: MCPServer) -> None:
    @mcp.tool(name="archive")
    @requires(WRITE)
    async def archive_note(note_id: int) -> dict[str, int]:
        """Archive a note (registered under a name other than the function's)."""
        return {"archived": note_id}

    @mcp.tool()
    @requires(WRITE)
    def purge_cache(scope: str) -> dict[str, str]:
        """Purge a cache (a sync tool: the SDK runs it on a worker thread)."""
        return {"purged": scope, "by": current_token().client_id}


@pytest.fixture
def admin_server(tmp_path: Path) -> Iterator[DevServer]:
    with dev_server(
        tmp_path / "notes.db",
        extra_clients={
            "dev-admin": ("dev-admin-secret", [ADMIN]),
            "dev-everything": ("dev-everything-secret", ["api_read_access", WRITE, ADMIN]),
        },
        customize=add_admin_tool,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def extra_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with dev_server(tmp_path_factory.mktemp("notes") / "notes.db", customize=add_renamed_and_sync_tools) as srv:
        yield srv


def test_new_tool_declares_its_permission_on_the_registered_function(admin_server: DevServer) -> None:
    assert ToolPermissions.from_server(admin_server.app.mcp).required("rotate_archive") == {ADMIN}


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


@pytest.mark.parametrize("generation", GENERATIONS)
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
    assert set(doc["scopes_supported"]) >= {ADMIN, "api_read_access", WRITE}
    challenge = admin_server.rpc(None, tool_call("whoami", {}, modern=False), LEGACY_HEADERS)
    assert ADMIN in challenge_params(challenge.headers["www-authenticate"])["scope"].split()


def test_a_server_built_without_the_tool_knows_nothing_of_its_permission(tmp_path: Path) -> None:
    """Runs after the tests above (file order): a table belongs to its server, nothing leaks."""
    with dev_server(tmp_path / "notes.db") as srv:
        assert "rotate_archive" not in ToolPermissions.from_server(srv.app.mcp).declared()
        assert ADMIN not in httpx.get(srv.metadata_url).json()["scopes_supported"]


# -- a tool under another name, and a sync tool -------------------------------------------------


def test_renamed_and_sync_tools_are_found_under_their_registered_names(extra_server: DevServer) -> None:
    permissions = ToolPermissions.from_server(extra_server.app.mcp)
    assert permissions.required("archive") == {WRITE}
    assert permissions.required("purge_cache") == {WRITE}
    assert "archive_note" not in permissions.declared()


@pytest.mark.parametrize("mode", MODES)
async def test_renamed_and_sync_tools_are_hidden_from_and_refused_to_a_reader(
    extra_server: DevServer, mode: str
) -> None:
    async with mcp_client(extra_server.mcp_url, extra_server.token("dev-read"), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS
        for name, arguments in (("archive", {"note_id": 1}), ("purge_cache", {"scope": "all"})):
            with pytest.raises(MCPError):
                await client.call_tool(name, arguments)


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize(("name", "arguments"), [("archive", {"note_id": 1}), ("purge_cache", {"scope": "all"})])
def test_renamed_and_sync_tools_refuse_a_reader_with_403_insufficient_scope(
    extra_server: DevServer, generation: str, name: str, arguments: dict[str, object]
) -> None:
    modern = generation == "2026-07-28"
    response = extra_server.rpc(
        extra_server.token("dev-read"),
        tool_call(name, arguments, modern=modern),
        modern_headers(name) if modern else LEGACY_HEADERS,
    )
    assert response.status_code == 403
    params = challenge_params(response.headers["www-authenticate"])
    assert (params["error"], params["scope"]) == ("insufficient_scope", WRITE)


@pytest.mark.parametrize("mode", MODES)
async def test_renamed_and_sync_tools_run_for_a_writer(extra_server: DevServer, mode: str) -> None:
    async with mcp_client(extra_server.mcp_url, extra_server.token("dev-full"), mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} >= {"archive", "purge_cache"}
        archived = await client.call_tool("archive", {"note_id": 7})
        assert not archived.is_error and archived.structured_content == {"archived": 7}
        purged = await client.call_tool("purge_cache", {"scope": "all"})
        assert not purged.is_error and purged.structured_content == {"purged": "all", "by": "dev-full"}


# -- two servers in one process, different aliases ------------------------------------------------

ALIASED_CLIENTS = {
    "alias-admin": ("alias-admin-secret", ["notes.admin"]),
    "plain-admin": ("plain-admin-secret", [ADMIN]),
}


@contextlib.contextmanager
def admin_server_with_aliases(db: Path, aliases: dict[str, str]) -> Iterator[DevServer]:
    built: list[DevServer] = []

    def factory(base_url: str) -> object:
        issuer = DevIssuer(base_url, extra_clients=ALIASED_CLIENTS)
        settings = dev_settings({"MCP_NOTES_DB": str(db)}, base_url, issuer)
        auth = dataclasses.replace(settings.auth, permission_aliases=MappingProxyType(aliases))
        settings = dataclasses.replace(settings, auth=auth)
        app = create_app(settings, extra_routes=[*issuer.well_known_routes(), issuer.mount()],
                         customize=add_admin_tool)
        built.append(DevServer(base_url, issuer, settings, app, {k: v[0] for k, v in ALIASED_CLIENTS.items()}))
        return app

    with running_server(factory=factory, lifespan="on"):
        yield built[0]


@pytest.mark.parametrize("mode", MODES)
async def test_two_servers_in_one_process_keep_their_own_aliases(tmp_path: Path, mode: str) -> None:
    with (
        admin_server_with_aliases(tmp_path / "a.db", {ADMIN: "notes.admin"}) as aliased,
        admin_server_with_aliases(tmp_path / "b.db", {}) as plain,
    ):
        for srv, allowed, refused in ((aliased, "alias-admin", "plain-admin"), (plain, "plain-admin", "alias-admin")):
            async with mcp_client(srv.mcp_url, srv.token(allowed), mode) as client:
                assert "rotate_archive" in {t.name for t in (await client.list_tools()).tools}
                result = await client.call_tool("rotate_archive", {"reason": "ok"})
                assert not result.is_error, result
            async with mcp_client(srv.mcp_url, srv.token(refused), mode) as client:
                assert "rotate_archive" not in {t.name for t in (await client.list_tools()).tools}
                with pytest.raises(MCPError):
                    await client.call_tool("rotate_archive", {"reason": "no"})
        denied = aliased.rpc(aliased.token("plain-admin"), tool_call("rotate_archive", {"reason": "x"}, modern=False),
                             LEGACY_HEADERS)
        assert denied.status_code == 403
        assert challenge_params(denied.headers["www-authenticate"])["scope"] == "notes.admin"
        assert "notes.admin" in httpx.get(aliased.metadata_url).json()["scopes_supported"]
        assert "notes.admin" not in httpx.get(plain.metadata_url).json()["scopes_supported"]
