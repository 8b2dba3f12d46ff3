"""The tool gate reads a body with the parser the SDK dispatches it with (issue 15, item 4).

The SDK parses a 2025-11-25 body with pydantic_core and a 2026-07-28 body with ``json.loads``;
the two differ on lone surrogates, UTF-16/UTF-32 and BOM-prefixed bodies, NaN and nesting depth.
A user's app built the documented way, ``protect(mcp, settings, app=...)`` over the SDK's own
stateless JSON app, is sent such bodies next to the same server without ``protect``: a read
token never runs a write tool, and a write token runs it exactly where the bare SDK would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import MCPServer

from auth.mcp import protect, requires
from auth.mcp._gate import FORBIDDEN
from tests._idp import IdP
from tests._live import running_server
from tests._odd_bodies import odd_bodies, outcome

from ._cases import AUDIENCE
from ._support import issuer_config, settings_for

pytestmark = pytest.mark.timeout(60)

READ, WRITE = "api_read_access", "api_write_access"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def bodies(modern: bool) -> dict[str, bytes]:
    params: dict[str, Any] = {"name": "archive", "arguments": {"note_id": 7}}
    if modern:
        params["_meta"] = ENVELOPE
    return odd_bodies({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})


def headers(modern: bool, token: str | None) -> dict[str, str]:
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if modern:
        sent.update({"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "archive"})
    else:
        sent["MCP-Protocol-Version"] = "2025-11-25"
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return sent


def server(ran: list[int], *, gated: bool) -> MCPServer:
    """One ``archive`` tool recording its runs (``@requires(WRITE)`` when gated; the bare SDK has no token)."""
    mcp = MCPServer("gated", log_level="WARNING")

    def archive(note_id: int) -> int:
        ran.append(note_id)
        return note_id

    mcp.tool(name="archive")(requires(WRITE)(archive) if gated else archive)
    return mcp


@pytest.fixture(scope="module")
def served(idp: IdP) -> Iterator[tuple[str, list[int], str, list[int]]]:
    """The protected app and its runs, the bare SDK app and its runs."""
    ours: list[int] = []
    bare: list[int] = []

    def protected(base_url: str) -> Any:
        resource = base_url + "/mcp"
        mcp = server(ours, gated=True)
        app = mcp.streamable_http_app(stateless_http=True, json_response=True)
        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource)
        return protect(mcp, settings, app=app)

    def sdk(base_url: str) -> Any:
        return server(bare, gated=False).streamable_http_app(stateless_http=True, json_response=True)

    with running_server(factory=protected, lifespan="on") as base, \
            running_server(factory=sdk, lifespan="on") as bare_base:
        yield base + "/mcp", ours, bare_base + "/mcp", bare


CASES = [(modern, case) for modern in (False, True) for case in bodies(modern)]


@pytest.mark.parametrize(("modern", "case"), CASES)
def test_a_read_token_never_runs_the_write_tool_whatever_the_body(
    served: tuple[str, list[int], str, list[int]], idp: IdP, modern: bool, case: str
) -> None:
    url, ours, sdk_url, bare = served
    raw = bodies(modern)[case]
    runs = len(bare)
    sdk = outcome(httpx.post(sdk_url, content=raw, headers=headers(modern, None), timeout=10))
    assert len(bare) == runs + (sdk[1] == "result")
    before = len(ours)
    answer = outcome(httpx.post(url, content=raw, headers=headers(modern, idp.mint(ias_apis=[READ])), timeout=10))
    assert len(ours) == before
    # Where the SDK runs the tool the gate saw the very name it dispatches and refused it;
    # elsewhere a refusal: the gate's (it saw archive) or the SDK's own.
    assert answer == (403, FORBIDDEN) if sdk[1] == "result" else answer in ((403, FORBIDDEN), sdk)


@pytest.mark.parametrize(("modern", "case"), CASES)
def test_a_write_token_runs_the_tool_exactly_where_the_bare_sdk_does(
    served: tuple[str, list[int], str, list[int]], idp: IdP, modern: bool, case: str
) -> None:
    url, ours, sdk_url, _ = served
    raw = bodies(modern)[case]
    sdk = outcome(httpx.post(sdk_url, content=raw, headers=headers(modern, None), timeout=10))
    before = len(ours)
    answer = outcome(httpx.post(url, content=raw, headers=headers(modern, idp.mint()), timeout=10))
    assert answer == sdk
    assert len(ours) == before + (sdk[1] == "result")
