"""``protect(mcp, settings, rate_limit=...)`` on the user's path.

A user's small app, written the way ``docs/production.md`` shows, lives in a temporary folder outside
the checkout and runs in its own process under uvicorn on 127.0.0.1 (``python -I``: only the installed
``auth`` package is importable). Attacked over real HTTP with tokens from the test IdP: one client
flooding gets 429 (``Retry-After`` in whole seconds, JSON-RPC error -32029, both framings, before any
tool runs) while another client's calls all succeed; reads and writes have separate buckets; requests
refused 401 (no token, forged) or 403 (read-only token on a write) cost the client nothing; the SDK's
client sees the error. In process: the bucket table holds verified callers only.
"""

from __future__ import annotations

import contextlib
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
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from auth.mcp import Rate, RateLimiter, protect
from tests._idp import IdP
from tests._live import free_port, running_server, stop_process

from ._cases import AUDIENCE
from ._support import issuer_config, settings_for

pytestmark = pytest.mark.timeout(90)

READ, WRITE = "api_read_access", "api_write_access"
RATE_LIMITED = -32029
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}

USER_APP = '''
import os
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from auth import load_settings
from auth.mcp import Rate, RateLimiter, protect, requires

mcp = MCPServer("limited", log_level="WARNING")
ran = Path("ran.log")


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
async def look() -> str:
    """A read."""
    with ran.open("a") as f:
        f.write("look\\n")
    return "seen"


@mcp.tool()
@requires("api_write_access")
async def change() -> str:
    """A write."""
    with ran.open("a") as f:
        f.write("change\\n")
    return "changed"


settings = load_settings(os.environ)
limiter = RateLimiter(read=Rate(per_second=0.001, burst=5), write=Rate(per_second=0.001, burst=2))  # no refill
app = protect(mcp, settings, rate_limit=limiter,
              app=mcp.streamable_http_app(streamable_http_path="/mcp", json_response=True, stateless_http=True))
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
'''


class UserApp:
    def __init__(self, folder: Path, url: str) -> None:
        self.folder, self.url = folder, url

    def ran(self, tool: str) -> int:
        path = self.folder / "ran.log"
        return path.read_text().split().count(tool) if path.exists() else 0


@pytest.fixture
def served(idp: IdP, tmp_path: Path) -> Iterator[UserApp]:
    folder = tmp_path / "user-app"
    folder.mkdir()
    (folder / "app.py").write_text(USER_APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MCP_"))}
    env |= {"PORT": str(port), "MCP_AUTH_ISSUER": idp.issuer, "MCP_AUTH_AUDIENCE": AUDIENCE,
            "MCP_RESOURCE_URL": f"http://127.0.0.1:{port}/mcp"}
    with (folder / "server.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-I", "app.py"], cwd=folder, env=env, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (folder / "server.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp").status_code == 200:
                    break
            assert time.monotonic() < deadline, "the user's app did not start"
            time.sleep(0.1)
        yield UserApp(folder, f"http://127.0.0.1:{port}/mcp")
    finally:
        stop_process(proc)
    assert "Traceback" not in (folder / "server.log").read_text()


def _call(url: str, token: str | None, tool: str, *, modern: bool, request_id: int = 1) -> httpx.Response:
    params: dict[str, Any] = {"name": tool, "arguments": {}}
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
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
def test_a_flooding_client_gets_429_while_another_client_is_served(served: UserApp, idp: IdP, modern: bool) -> None:
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
    assert served.ran("look") == 5 + 4  # no tool ran for a refused request


def test_reads_and_writes_have_separate_buckets(served: UserApp, idp: IdP) -> None:
    token = idp.mint(azp="writer", sub="writer")
    assert [_call(served.url, token, "change", modern=False).status_code for _ in range(4)] == [200, 200, 429, 429]
    _assert_rate_limited(_call(served.url, token, "change", modern=True, request_id=9), 9, "write")
    assert [_call(served.url, token, "look", modern=False).status_code for _ in range(6)] == [200] * 5 + [429]
    assert served.ran("change") == 2


def test_requests_refused_401_or_403_cost_the_client_nothing(served: UserApp, idp: IdP) -> None:
    forged = idp.mint(azp="victim", sub="victim")[:-4] + "AAAA"  # claims the victim's client id
    for n in range(10):
        response = _call(served.url, (None, forged, "not-a-jwt")[n % 3], "change", modern=bool(n % 2))
        assert response.status_code == 401
    read_only = idp.mint(azp="victim", sub="victim", ias_apis=[READ])  # the victim itself, without the permission
    for _ in range(5):
        response = _call(served.url, read_only, "change", modern=False)
        assert response.status_code == 403 and response.json()["error"]["data"]["error"] == "insufficient_scope"
    writer = idp.mint(azp="victim", sub="victim")
    assert [_call(served.url, writer, "change", modern=False).status_code for _ in range(3)] == [200, 200, 429]


def test_one_client_is_one_bucket_whatever_token_it_presents(served: UserApp, idp: IdP) -> None:
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
async def test_the_sdk_client_sees_the_rate_limit_error(served: UserApp, idp: IdP, mode: str) -> None:
    token = idp.mint(azp=f"sdk-{mode}", sub="sdk")
    async with sdk_client(served.url, token, mode) as client:
        assert (await client.call_tool("change", {})).is_error is False
        assert (await client.call_tool("change", {})).is_error is False
        with pytest.raises(MCPError) as caught:
            await client.call_tool("change", {})
    assert caught.value.error.code == RATE_LIMITED
    assert "rate_limited (HTTP 429)" in caught.value.error.message


def test_only_verified_callers_get_a_bucket(idp: IdP) -> None:
    limiter = RateLimiter(read=Rate(0.001, 5), write=Rate(0.001, 2))

    def factory(base_url: str) -> Any:
        resource = base_url + "/mcp"
        mcp = MCPServer("limited", log_level="WARNING")

        @mcp.tool()
        async def ping() -> str:
            return "pong"

        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource)
        app = mcp.streamable_http_app(streamable_http_path="/mcp", json_response=True, stateless_http=True)
        return protect(mcp, settings, app=app, rate_limit=limiter)

    with running_server(factory=factory, lifespan="on") as base:
        forged = idp.mint(azp="forged")[:-4] + "AAAA"
        for n in range(30):
            token = (forged, None, f"x{n}")[n % 3]
            assert _call(base + "/mcp", token, "ping", modern=bool(n % 2)).status_code == 401
        assert limiter.size("read") == limiter.size("write") == 0
        assert _call(base + "/mcp", idp.mint(azp="real"), "ping", modern=False).status_code == 200
        assert (limiter.size("read"), limiter.size("write")) == (0, 1)  # a tool not marked read-only: a write
