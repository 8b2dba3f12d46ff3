"""The pytest plugin on the user's path: a user's own test suite, outside the checkout, run by pytest.

The user's project (an MCP server module, a ``conftest.py`` enabling ``auth.testing.pytest_plugin``,
a test file attacking the app with the minted faults) is written into a temporary folder and run
with ``python -m pytest`` in a subprocess; the issuer serves its keys over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]

INVENTORY = '''\
from mcp.server.mcpserver import MCPServer

from auth import AuthSettings, current_token
from auth.mcp import protect, requires


def create_app(settings: AuthSettings):
    mcp = MCPServer("inventory")

    @mcp.tool()
    @requires("api_read_access")
    async def whoami() -> dict[str, object]:
        return {"client_id": current_token().client_id}

    @mcp.tool()
    @requires("api_write_access")
    async def restock(item: str) -> dict[str, str]:
        return {"restocked": item}

    return protect(mcp, settings, app=mcp.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True))
'''

CONFTEST = '''\
import pytest
from starlette.testclient import TestClient

from auth.testing import Audience, RegisteredClient
from inventory import create_app

pytest_plugins = ["auth.testing.pytest_plugin"]

BASE_URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="session")
def local_issuer_options():
    return {"audiences": [Audience("inventory", resources=(BASE_URL + "/mcp",))],
            "clients": [RegisteredClient("agent", "agent-pw", ("api_read_access",))]}


@pytest.fixture
def client(local_issuer):
    app = create_app(local_issuer.settings(resource_url=BASE_URL + "/mcp"))
    with TestClient(app, base_url=BASE_URL) as client:
        yield client
'''

TESTS = '''\
import httpx
import pytest

HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


def call(client, token, tool, arguments=None):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments or {}}}
    return client.post("/mcp", json=body, headers={**HEADERS, "Authorization": f"Bearer {token}"})


def test_a_read_token_calls_whoami(client, local_issuer):
    response = call(client, local_issuer.mint("agent"), "whoami")
    assert response.status_code == 200
    assert response.json()["result"]["structuredContent"] == {"client_id": "agent"}


@pytest.mark.parametrize("fault", [
    {"expired": True},
    {"audience": "someone-else"},
    {"foreign_key": True},
    {"claims": {"iss": "http://127.0.0.1:1"}},
])
def test_bad_tokens_are_401_invalid_token(client, local_issuer, fault):
    response = call(client, local_issuer.mint("agent", **fault), "whoami")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_read_token_cannot_restock(client, local_issuer):
    response = call(client, local_issuer.mint("agent"), "restock", {"item": "bolts"})
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_a_write_permission_can(client, local_issuer):
    token = local_issuer.mint("agent", permissions=["api_read_access", "api_write_access"])
    assert call(client, token, "restock", {"item": "bolts"}).json()["result"]["structuredContent"] == {
        "restocked": "bolts"}


def test_a_token_from_the_endpoint_with_resource(client, local_issuer):
    response = httpx.post(local_issuer.token_endpoint, auth=("agent", "agent-pw"),
                          data={"grant_type": "client_credentials", "resource": "http://127.0.0.1:8000/mcp"})
    assert response.status_code == 200
    assert call(client, response.json()["access_token"], "whoami").status_code == 200
    refused = httpx.post(local_issuer.token_endpoint, auth=("agent", "agent-pw"),
                         data={"grant_type": "client_credentials", "resource": "http://127.0.0.1:9/mcp"})
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_target")
'''


def run_user_suite(folder: Path, tests: str) -> subprocess.CompletedProcess[str]:
    (folder / "inventory.py").write_text(INVENTORY)
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_inventory.py").write_text(tests)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_", "PYTEST_")) and k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=150)


def test_a_users_suite_uses_the_fixture_and_its_faults(tmp_path: Path) -> None:
    assert not tmp_path.resolve().is_relative_to(REPO)
    done = run_user_suite(tmp_path, TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b8 passed\b", done.stdout), done.stdout


def test_the_users_suite_would_notice_a_token_the_server_wrongly_accepts(tmp_path: Path) -> None:
    """The user's negative test fails when the fault is not one: the fixture's tokens are really checked."""
    lenient = TESTS.replace('{"audience": "someone-else"}', '{"audience": "inventory"}')
    done = run_user_suite(tmp_path, lenient)
    assert done.returncode == 1
    assert re.search(r"\b1 failed, 7 passed\b", done.stdout), done.stdout
