"""``@requires`` and ``current_token()`` on every documented way to protect an MCP server (issue 16, item 1).

A user's small app, written the README's way ("Three ways to protect an MCP server"), lives in a
temporary folder outside the checkout and runs in its own process under uvicorn on 127.0.0.1;
only the installed ``auth`` package is importable there. Each is called over real HTTP with a full
and a read-only token from the test IdP, with the mcp SDK's client:

1. ``protect(mcp, settings)``: the gate answers HTTP 403 before dispatch;
2. ``MCPServer(token_verifier=JWTVerifier(settings), auth=...)``: no gate, so ``@requires`` is the
   check, and a refused call is a tool error (``isError``) naming the permission;
3. FastMCP with ``fastmcp_auth``, ``permission_check`` and ``fastmcp_refusals``.

On main the second and third answered every call of a tool that reads the principal with
"Error executing tool ..." (``MissingToken``): only our middleware's principal was seen.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from fastmcp import Client as FastMCPClient
from fastmcp.exceptions import ToolError
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.shared.exceptions import MCPError

from auth import MissingToken, current_token, optional_token
from auth.mcp import requires
from auth.mcp._tools import NoVerifiedToken
from tests._idp import IdP
from tests._live import free_port, stop_process

pytestmark = pytest.mark.timeout(120)

READ, WRITE, ADMIN = "api_read_access", "api_write_access", "notes.admin"
FULL, READ_ONLY = [READ, WRITE], [READ]

COMMON = '''
import os

import uvicorn

from auth import current_token, load_settings
from auth.mcp import requires

settings = load_settings(os.environ)  # MCP_AUTH_ISSUER, MCP_AUTH_AUDIENCE, MCP_RESOURCE_URL, aliases


def whoami() -> dict[str, object]:
    """The caller, as the auth layer verified it."""
    token = current_token()
    return {"client_id": token.client_id, "permissions": sorted(token.permissions)}


@requires("api_write_access")
def archive(note_id: int) -> dict[str, object]:
    """Archive a note (writers)."""
    return {"archived": note_id, "by": current_token().client_id}


@requires("api_admin")  # MCP_AUTH_PERMISSION_ALIASES=api_admin=notes.admin
def rotate() -> str:
    """Rotate the keys (administrators)."""
    return "rotated"
'''

APPS = {
    "protect": COMMON + '''
from mcp.server.mcpserver import MCPServer

from auth.mcp import protect

mcp = MCPServer("notes")
for tool in (whoami, archive, rotate):
    mcp.tool()(tool)
app = protect(mcp, settings)
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
''',
    "sdk": COMMON + '''
from mcp.server.auth.settings import AuthSettings as SdkAuthSettings
from mcp.server.mcpserver import MCPServer

from auth import JWTVerifier

mcp = MCPServer("notes", token_verifier=JWTVerifier(settings),
                auth=SdkAuthSettings(issuer_url=settings.issuer_urls[0], resource_server_url=settings.resource_url,
                                     validate_token_resource=True))
for tool in (whoami, archive, rotate):
    mcp.tool()(tool)
uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
''',
    "fastmcp": COMMON + '''
from fastmcp import FastMCP

from auth.mcp import fastmcp_auth, fastmcp_refusals, permission_check

fast = FastMCP("notes", auth=fastmcp_auth(settings), middleware=[fastmcp_refusals()])
fast.tool()(whoami)
fast.tool()(archive)  # @requires inside FastMCP: listed, refused at call time
fast.tool()(rotate)


@fast.tool(auth=permission_check("api_write_access", settings=settings))
def purge(note_id: int) -> dict[str, object]:
    """Purge a note (writers; FastMCP hides it from others)."""
    return {"purged": note_id, "by": current_token().client_id}


uvicorn.run(fast.http_app(path="/mcp"), host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
''',
}
APPS["fastmcp_plain"] = APPS["fastmcp"].replace(", middleware=[fastmcp_refusals()]", "")  # FastMCP on its own
WAYS = ["protect", "sdk", "fastmcp"]  # the three documented ways


def refused_on_sdk(tool: str, permission: str) -> str:
    return (f"Error executing tool {tool}: insufficient_scope: this tool needs permission {permission}, "
            "which the access token does not grant")


def refused_on_fastmcp(tool: str, permission: str) -> str:
    return f"insufficient_scope: tool {tool} needs permission {permission}, which the access token does not grant"


@contextlib.contextmanager
def user_apps(root: Path, idp: IdP) -> Iterator[dict[str, str]]:
    """Run every app of `APPS` from its own folder under ``root`` (outside the checkout); yield their MCP URLs."""
    running: dict[str, tuple[subprocess.Popen[bytes], Path, str]] = {}
    try:
        for name, source in APPS.items():  # started together, then waited for
            folder = root / name
            folder.mkdir()
            (folder / "app.py").write_text(source)
            port = free_port()
            resource = f"http://127.0.0.1:{port}/mcp"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MCP_"))}
            env |= {"PORT": str(port), "MCP_AUTH_ISSUER": idp.issuer, "MCP_AUTH_AUDIENCE": resource,
                    "MCP_RESOURCE_URL": resource, "MCP_AUTH_PERMISSION_ALIASES": "api_admin=notes.admin"}
            with (folder / "server.log").open("w") as log:
                proc = subprocess.Popen([sys.executable, "-I", "app.py"], cwd=folder, env=env, stdout=log,
                                        stderr=log, stdin=subprocess.DEVNULL)
            running[name] = (proc, folder, resource)
        deadline = time.monotonic() + 90
        for proc, folder, resource in running.values():
            metadata = resource.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
            while True:
                assert proc.poll() is None, (folder / "server.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(metadata).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"{folder.name} did not start"
                time.sleep(0.1)
        yield {name: resource for name, (_, _, resource) in running.items()}
    finally:
        for proc, _, _ in running.values():
            stop_process(proc)


@pytest.fixture(scope="module")
def apps(idp: IdP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with user_apps(tmp_path_factory.mktemp("user-apps"), idp) as urls:
        yield urls


@contextlib.asynccontextmanager
async def client(url: str, token: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(20.0)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
            yield c


def text(result: Any) -> str:
    return str(result.content[0].text)


# -- the principal in a tool: every way, both tokens ---------------------------------------------------------


@pytest.mark.parametrize("permissions", [FULL, READ_ONLY], ids=["full", "read-only"])
@pytest.mark.parametrize("way", WAYS)
async def test_current_token_in_a_tool_on_every_way(apps: dict[str, str], idp: IdP, way: str,
                                                    permissions: list[str]) -> None:
    url = apps[way]
    async with client(url, idp.mint(aud=url, ias_apis=permissions)) as c:
        result = await c.call_tool("whoami", {})
    assert not result.is_error, text(result)
    assert result.structured_content == {"client_id": "consumer-client", "permissions": permissions}


@pytest.mark.parametrize("way", WAYS)
async def test_requires_lets_a_full_token_run_the_tool_on_every_way(apps: dict[str, str], idp: IdP,
                                                                     way: str) -> None:
    url = apps[way]
    async with client(url, idp.mint(aud=url, ias_apis=FULL)) as c:
        result = await c.call_tool("archive", {"note_id": 3})
    assert not result.is_error, text(result)
    assert result.structured_content == {"archived": 3, "by": "consumer-client"}


@pytest.mark.parametrize("way", WAYS)
async def test_the_principal_is_the_current_requests_within_one_session(apps: dict[str, str], idp: IdP,
                                                                        way: str) -> None:
    """A client that steps up (a new token, same session) is seen with the new token, never a stale one."""
    url = apps[way]
    read_only, full = idp.mint(aud=url, ias_apis=READ_ONLY), idp.mint(aud=url, ias_apis=FULL)
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {read_only}"},
                                  timeout=httpx2.Timeout(20.0)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
            before = await c.call_tool("whoami", {})
            http.headers["Authorization"] = f"Bearer {full}"
            after = await c.call_tool("whoami", {})
            written = await c.call_tool("archive", {"note_id": 9})
    assert before.structured_content == {"client_id": "consumer-client", "permissions": READ_ONLY}
    assert after.structured_content == {"client_id": "consumer-client", "permissions": FULL}
    assert not written.is_error and written.structured_content == {"archived": 9, "by": "consumer-client"}


# -- a read-only token on a write tool ---------------------------------------------------------------------


async def test_protect_refuses_a_read_only_token_with_http_403(apps: dict[str, str], idp: IdP) -> None:
    url = apps["protect"]
    token = idp.mint(aud=url, ias_apis=READ_ONLY)
    async with client(url, token) as c:
        assert {t.name for t in (await c.list_tools()).tools} == {"whoami"}
        with pytest.raises(MCPError, match="insufficient_scope"):
            await c.call_tool("archive", {"note_id": 3})
    response = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                     "params": {"name": "archive", "arguments": {"note_id": 3}}},
                          headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"})
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


async def test_sdk_route_refuses_a_read_only_token_with_a_tool_error_naming_the_permission(
    apps: dict[str, str], idp: IdP
) -> None:
    url = apps["sdk"]
    async with client(url, idp.mint(aud=url, ias_apis=READ_ONLY)) as c:
        listed = {t.name for t in (await c.list_tools()).tools}
        result = await c.call_tool("archive", {"note_id": 3})
    assert listed == {"whoami", "archive", "rotate"}  # the SDK's route has no list filter
    assert result.is_error
    assert text(result) == refused_on_sdk("archive", WRITE)


async def test_sdk_route_call_is_http_200_not_403(apps: dict[str, str], idp: IdP) -> None:
    """What the README says of way 2: the refusal travels inside HTTP 200, without a challenge."""
    url = apps["sdk"]
    headers = {"Authorization": f"Bearer {idp.mint(aud=url, ias_apis=READ_ONLY)}",
               "Accept": "application/json, text/event-stream", "Mcp-Protocol-Version": "2025-11-25"}
    with httpx.Client(headers=headers, timeout=10) as http:
        init = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}})
        session = {"mcp-session-id": init.headers["mcp-session-id"]}
        http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        call = http.post(url, headers=session, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                                     "params": {"name": "archive", "arguments": {"note_id": 1}}})
    assert call.status_code == 200
    assert "www-authenticate" not in call.headers
    payload = json.loads(call.text.split("data: ", 1)[1]) if "data: " in call.text else call.json()
    assert payload["result"]["isError"] is True
    assert payload["result"]["content"][0]["text"] == refused_on_sdk("archive", WRITE)


async def test_fastmcp_hides_the_checked_tool_and_names_the_permission_when_called(
    apps: dict[str, str], idp: IdP
) -> None:
    url = apps["fastmcp"]
    async with client(url, idp.mint(aud=url, ias_apis=READ_ONLY)) as c:
        listed = {t.name for t in (await c.list_tools()).tools}
        hidden = await c.call_tool("purge", {"note_id": 3})
        checked = await c.call_tool("archive", {"note_id": 3})
        unknown = await c.call_tool("no_such_tool", {})
    assert listed == {"whoami", "archive", "rotate"}  # permission_check hides purge
    assert hidden.is_error and text(hidden) == refused_on_fastmcp("purge", WRITE)  # not "Unknown tool: 'purge'"
    assert checked.is_error and text(checked) == refused_on_fastmcp("archive", WRITE)
    assert unknown.is_error and text(unknown) == "Unknown tool: 'no_such_tool'"  # a real unknown stays unknown


async def test_fastmcp_full_token_runs_the_permission_checked_tool(apps: dict[str, str], idp: IdP) -> None:
    url = apps["fastmcp"]
    async with client(url, idp.mint(aud=url, ias_apis=FULL)) as c:
        assert {t.name for t in (await c.list_tools()).tools} == {"whoami", "archive", "rotate", "purge"}
        result = await c.call_tool("purge", {"note_id": 5})
    assert not result.is_error, text(result)
    assert result.structured_content == {"purged": 5, "by": "consumer-client"}


# -- the deployment's permission aliases apply on every way -------------------------------------------------


@pytest.mark.parametrize("way", WAYS)
async def test_aliased_permission_is_what_requires_checks_on_every_way(apps: dict[str, str], idp: IdP,
                                                                       way: str) -> None:
    url = apps[way]
    async with client(url, idp.mint(aud=url, ias_apis=[READ, ADMIN])) as c:
        granted = await c.call_tool("rotate", {})
    assert not granted.is_error, text(granted)
    assert granted.structured_content == {"result": "rotated"}
    async with client(url, idp.mint(aud=url, ias_apis=[READ, "api_admin"])) as c:  # the logical name is not granted
        if way == "protect":
            with pytest.raises(MCPError, match="insufficient_scope"):
                await c.call_tool("rotate", {})
            return
        refused = await c.call_tool("rotate", {})
    assert refused.is_error
    expected = refused_on_sdk("rotate", ADMIN) if way == "sdk" else refused_on_fastmcp("rotate", ADMIN)
    assert text(refused) == expected


# -- in process: what another verifier's AccessToken carries is never taken for verified ---------------------


@contextlib.contextmanager
def sdk_principal_of(token: AccessToken) -> Iterator[None]:
    handle = auth_context_var.set(AuthenticatedUser(token))
    try:
        yield
    finally:
        auth_context_var.reset(handle)


def test_an_access_token_from_another_verifier_is_not_a_verified_principal() -> None:
    foreign = AccessToken(token="t", client_id="mallory", scopes=[READ, WRITE], expires_at=2_000_000_000,
                          claims={"iss": "https://issuer.example", "sub": "mallory"})

    @requires(WRITE)
    def write() -> str:
        return "written"

    with sdk_principal_of(foreign):
        assert optional_token() is None
        with pytest.raises(MissingToken):
            current_token()
        with pytest.raises(NoVerifiedToken):
            write()


def test_outside_any_request_there_is_no_principal() -> None:
    assert optional_token() is None
    with pytest.raises(MissingToken):
        current_token()



# -- what each client shows on a refused call (the per-client table of docs/integrations.md) ------------------

PROTECT_403 = ("insufficient_scope (HTTP 403): Tool archive needs permission api_write_access, "
               "which the access token does not grant")


@pytest.mark.parametrize(("way", "tool", "shown"), [
    ("sdk", "archive", refused_on_sdk("archive", WRITE)),
    ("fastmcp", "purge", refused_on_fastmcp("purge", WRITE)),
    ("fastmcp", "archive", refused_on_fastmcp("archive", WRITE)),
    ("fastmcp_plain", "purge", "Unknown tool: 'purge'"),
    ("fastmcp_plain", "archive", "Error calling tool 'archive': insufficient_scope: this tool needs permission "
                                 "api_write_access, which the access token does not grant"),
])
async def test_what_the_two_python_clients_show_on_a_refused_call(apps: dict[str, str], idp: IdP, way: str,
                                                                  tool: str, shown: str) -> None:
    url = apps[way]
    token = idp.mint(aud=url, ias_apis=READ_ONLY)
    async with client(url, token) as c:
        result = await c.call_tool(tool, {"note_id": 1})
    assert result.is_error and text(result) == shown
    async with FastMCPClient(url, auth=token) as fast:
        with pytest.raises(ToolError) as info:
            await fast.call_tool(tool, {"note_id": 1})
    assert str(info.value) == shown


async def test_what_the_two_python_clients_show_on_a_call_refused_by_protect(apps: dict[str, str],
                                                                             idp: IdP) -> None:
    url = apps["protect"]
    token = idp.mint(aud=url, ias_apis=READ_ONLY)
    async with client(url, token) as c:
        with pytest.raises(MCPError) as sdk:
            await c.call_tool("archive", {"note_id": 1})
    async with FastMCPClient(url, auth=token) as fast:
        with pytest.raises(MCPError) as fastmcp:
            await fast.call_tool("archive", {"note_id": 1})
    assert str(sdk.value) == str(fastmcp.value) == PROTECT_403


