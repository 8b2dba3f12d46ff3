"""What users of mcp-remote and the MCP Inspector CLI see on a bad token, and mcp-remote's token cache.

(`tests/server/test_node_clients.py` covers discovery, reads, writes and the refusal itself.)
mcp-remote stores tokens per server URL in ``$MCP_REMOTE_CONFIG_DIR`` (default ``~/.mcp-auth``),
not per client id: after switching its configuration from ``dev-full`` to ``dev-read`` it keeps
using the ``dev-full`` token until that expires. One config directory per identity (or clearing
the directory) avoids it; both are shown here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._node import McpRpcError, NodeTools, StdioMcp, ensure_node_tools, inspector_cli, inspector_error
from tests.server.conftest import DevServer

from .conftest import titles_in_store, unique

pytestmark = pytest.mark.timeout(90, func_only=True)

CLIENT_TIMEOUT = 30.0
SECRET_ENV = "MCP_CLIENT_SECRET"


@pytest.fixture(scope="module")
def node_tools() -> NodeTools:
    return ensure_node_tools()


def mcp_remote(tools: NodeTools, srv: DevServer, config_dir: Path, client_id: str, secret: str) -> StdioMcp:
    info = json.dumps({"client_id": client_id, "client_secret": "${" + SECRET_ENV + "}"})
    cmd = tools.mcp_remote_cmd(srv.mcp_url, "--client-credentials", "--static-oauth-client-info", info)
    env = tools.isolated_env(config_dir.parent / f"home-{client_id}", {SECRET_ENV: secret,
                                                                       "MCP_REMOTE_CONFIG_DIR": str(config_dir)})
    return StdioMcp(cmd, env=env, timeout=CLIENT_TIMEOUT)


def inspector(srv: DevServer, state: Path, *args: str):  # type: ignore[no-untyped-def]
    env = NodeTools.isolated_env(state)
    return inspector_cli([srv.mcp_url, "--transport", "http", "--format", "json", *args],
                         timeout=CLIENT_TIMEOUT, env=env, retries=0)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "shared-mcp-auth"


def test_inspector_bad_token_exits_3_auth_required(node_tools: NodeTools, served: DevServer, tmp_path: Path) -> None:
    proc = inspector(served, tmp_path, "--header", "Authorization: Bearer not.a.token", "--method", "tools/list")
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    error = inspector_error(proc.stderr)
    assert error is not None and error["code"] == "auth_required", proc.stderr


def test_mcp_remote_wrong_secret_exits_naming_the_failed_token_request(
    node_tools: NodeTools, served: DevServer, tmp_path: Path
) -> None:
    with mcp_remote(node_tools, served, tmp_path / "mcp-auth", "dev-read", "wrong-secret") as m:
        with pytest.raises(EOFError):
            m.initialize()
        assert m.wait_exit() == 1
    assert "token request failed (HTTP 401): client authentication failed" in m.stderr_text
    assert "wrong-secret" not in m.stderr_text


def test_mcp_remote_keeps_the_previous_identitys_token_per_server_url(
    node_tools: NodeTools, served: DevServer, cache_dir: Path
) -> None:
    with mcp_remote(node_tools, served, cache_dir, "dev-full", "dev-full-secret") as m:
        m.initialize()
        assert m.call_tool("whoami")["structuredContent"]["client_id"] == "dev-full"
    with mcp_remote(node_tools, served, cache_dir, "dev-read", "dev-read-secret") as m:
        m.initialize()
        who = m.call_tool("whoami")["structuredContent"]["client_id"]
    assert who == "dev-full"  # the cached token wins: the pitfall the README warns about

    for stored in cache_dir.glob("mcp-remote-*"):  # the README's fix: clear the store
        shutil.rmtree(stored)
    with mcp_remote(node_tools, served, cache_dir, "dev-read", "dev-read-secret") as m:
        m.initialize()
        assert m.call_tool("whoami")["structuredContent"]["client_id"] == "dev-read"


def test_mcp_remote_with_one_config_dir_per_identity_is_refused_a_write(
    node_tools: NodeTools, served: DevServer, tmp_path: Path
) -> None:
    title = unique("per-identity")
    with mcp_remote(node_tools, served, tmp_path / "full", "dev-full", "dev-full-secret") as m:
        m.initialize()
        m.call_tool("whoami")
    with mcp_remote(node_tools, served, tmp_path / "read", "dev-read", "dev-read-secret") as m:
        m.initialize()
        assert m.call_tool("whoami")["structuredContent"]["client_id"] == "dev-read"
        with pytest.raises(McpRpcError) as denied:
            m.call_tool("create_note", {"title": title, "body": "b"})
    assert (denied.value.code, denied.value.message) == (-32001, "mcp-remote: Unauthorized")
    assert titles_in_store(served, title) == []
