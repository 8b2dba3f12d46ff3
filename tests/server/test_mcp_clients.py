"""The real MCP SDK client, both protocol generations, against the dev server over HTTP.

How the SDK client (mcp 2.3.0) surfaces the gate's HTTP 403: the 403 body is a JSON-RPC error
for the refused request (code -32003, naming the missing permission), which the transport
passes on, so ``call_tool`` raises ``MCPError`` with that message in both generations. The
connection stays usable afterwards.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime

import pytest
from mcp.shared.exceptions import MCPError

from auth.mcp._gate import FORBIDDEN

from .conftest import (
    ALL_TOOLS,
    LEGACY_HEADERS,
    MODES,
    READ_TOOLS,
    DevServer,
    challenge_params,
    jwt_claims,
    mcp_client,
    modern_headers,
    tool_call,
)

pytestmark = pytest.mark.timeout(60)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def titles_matching(srv: DevServer, marker: str) -> list[str]:
    """Titles of notes containing ``marker``, read through a full-access client."""
    async with mcp_client(srv.mcp_url, srv.token("dev-full"), "legacy") as client:
        result = await client.call_tool("search_notes", {"query": marker, "limit": 100})
    assert not result.is_error, result
    return [n["title"] for n in result.structured_content["notes"]]


# --- the SDK client -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_full_access_client_lists_all_tools_and_runs_each_one(
    shared_server: DevServer, mode: str
) -> None:
    title = unique("full")
    async with mcp_client(shared_server.mcp_url, shared_server.token("dev-full"), mode) as client:
        listed = await client.list_tools()
        assert {t.name for t in listed.tools} == ALL_TOOLS

        created = await client.call_tool("create_note", {"title": title, "body": "first body"})
        assert not created.is_error, created
        note = created.structured_content
        assert note["title"] == title and note["created_by"] == "dev-full"

        got = await client.call_tool("get_note", {"note_id": note["id"]})
        assert not got.is_error and got.structured_content["body"] == "first body"

        found = await client.call_tool("search_notes", {"query": title})
        assert [n["id"] for n in found.structured_content["notes"]] == [note["id"]]

        updated = await client.call_tool(
            "update_note", {"note_id": note["id"], "title": title, "body": "second"}
        )
        assert not updated.is_error and updated.structured_content["body"] == "second"

        listed_notes = await client.call_tool("list_notes", {"limit": 100})
        assert note["id"] in [n["id"] for n in listed_notes.structured_content["notes"]]

        deleted = await client.call_tool("delete_note", {"note_id": note["id"]})
        assert not deleted.is_error and deleted.structured_content["id"] == note["id"]

        gone = await client.call_tool("get_note", {"note_id": note["id"]})
        assert gone.is_error  # a tool error the model can read, not a transport failure

        me = await client.call_tool("whoami", {})
        assert me.structured_content["client_id"] == "dev-full"


@pytest.mark.parametrize("mode", MODES)
async def test_read_only_client_sees_read_tools_and_is_refused_create_then_keeps_working(
    shared_server: DevServer, mode: str
) -> None:
    title = unique("refused")
    async with mcp_client(shared_server.mcp_url, shared_server.token("dev-read"), mode) as client:
        listed = await client.list_tools()
        assert {t.name for t in listed.tools} == READ_TOOLS

        with pytest.raises(MCPError) as refused:
            await client.call_tool("create_note", {"title": title})
        # The gate's 403 carries a JSON-RPC error, which the SDK passes on as it is.
        assert refused.value.error.code == FORBIDDEN
        assert "insufficient_scope" in refused.value.error.message
        assert "api_write_access" in refused.value.error.message

        # Same client, same connection: reading still works after the refusal.
        after = await client.call_tool("list_notes", {"limit": 5})
        assert not after.is_error and isinstance(after.structured_content["notes"], list)
        searched = await client.call_tool("search_notes", {"query": title})
        assert searched.structured_content["notes"] == []

    assert await titles_matching(shared_server, title) == []  # the refused call never ran


@pytest.mark.parametrize("mode", MODES)
async def test_client_without_permissions_sees_only_whoami_and_cannot_read(
    shared_server: DevServer, mode: str
) -> None:
    async with mcp_client(shared_server.mcp_url, shared_server.token("dev-none"), mode) as client:
        listed = await client.list_tools()
        assert [t.name for t in listed.tools] == ["whoami"]
        with pytest.raises(MCPError):
            await client.call_tool("list_notes", {})
        me = await client.call_tool("whoami", {})
        assert me.structured_content["client_id"] == "dev-none"
        assert me.structured_content["permissions"] == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("client_id", "permissions"), [
    ("dev-full", ["api_read_access", "api_write_access"]),
    ("dev-read", ["api_read_access"]),
])
async def test_whoami_reports_the_callers_client_id_permissions_and_expiry(
    shared_server: DevServer, mode: str, client_id: str, permissions: list[str]
) -> None:
    token = shared_server.token(client_id)
    claims = jwt_claims(token)
    async with mcp_client(shared_server.mcp_url, token, mode) as client:
        me = (await client.call_tool("whoami", {})).structured_content
    assert me["client_id"] == client_id
    assert me["subject"] == client_id
    assert me["tenant"] == shared_server.issuer.app_tid
    assert me["permissions"] == permissions
    assert datetime.fromisoformat(me["expires_at"]).timestamp() == claims["exp"]
    assert claims["exp"] > time.time()


# --- raw HTTP: the 403 challenge --------------------------------------------------------------


@pytest.mark.parametrize("generation", ["2026-07-28", "2025-11-25"])
def test_denied_tool_call_is_403_with_insufficient_scope_challenge(
    shared_server: DevServer, generation: str
) -> None:
    title = unique("raw403")
    modern = generation == "2026-07-28"
    headers = modern_headers("create_note") if modern else LEGACY_HEADERS
    response = shared_server.rpc(
        shared_server.token("dev-read"), tool_call("create_note", {"title": title}, modern=modern), headers
    )
    assert response.status_code == 403
    params = challenge_params(response.headers["www-authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "api_write_access"
    assert params["resource_metadata"] == shared_server.base_url + "/.well-known/oauth-protected-resource/mcp"
    assert response.json()["error"]["data"]["error"] == "insufficient_scope"  # JSON-RPC error body
    assert response.headers["cache-control"] == "no-store"

    allowed = shared_server.rpc(
        shared_server.token("dev-read"),
        tool_call("list_notes", {}, modern=modern),
        modern_headers("list_notes") if modern else LEGACY_HEADERS,
    )
    assert allowed.status_code == 200 and "result" in allowed.json()


def test_name_header_saying_list_notes_cannot_smuggle_a_create_note_body(shared_server: DevServer) -> None:
    title = unique("smuggled")
    body = tool_call("create_note", {"title": title}, modern=True)
    for headers in (modern_headers("list_notes"), {**LEGACY_HEADERS, "Mcp-Name": "list_notes"}):
        response = shared_server.rpc(shared_server.token("dev-read"), body, headers)
        assert response.status_code in (400, 403), response.text
    legacy_body = tool_call("create_note", {"title": title}, modern=False)
    response = shared_server.rpc(shared_server.token("dev-read"), legacy_body,
                                 {**LEGACY_HEADERS, "Mcp-Name": "list_notes"})
    assert response.status_code in (400, 403), response.text
    assert titles_are_absent(shared_server, title)


def test_name_header_saying_create_note_over_a_list_notes_body_is_refused_too(
    shared_server: DevServer,
) -> None:
    response = shared_server.rpc(shared_server.token("dev-read"), tool_call("list_notes", {}, modern=True),
                                 modern_headers("create_note"))
    assert response.status_code in (400, 403)


def test_full_access_mismatched_name_header_is_rejected_by_the_sdk_not_executed(
    shared_server: DevServer,
) -> None:
    title = unique("mismatch")
    body = tool_call("create_note", {"title": title}, modern=True)
    response = shared_server.rpc(shared_server.token("dev-full"), body, modern_headers("list_notes"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020  # HEADER_MISMATCH
    assert titles_are_absent(shared_server, title)


@pytest.mark.parametrize("order", ["denied-last", "denied-first"])
def test_batch_containing_a_denied_call_is_refused_whole(shared_server: DevServer, order: str) -> None:
    title = unique("batch")
    calls = [tool_call("list_notes", {}, modern=False, id=1),
             tool_call("create_note", {"title": title}, modern=False, id=2)]
    if order == "denied-first":
        calls.reverse()
    response = shared_server.rpc(shared_server.token("dev-read"), calls, LEGACY_HEADERS)
    assert response.status_code == 403
    assert challenge_params(response.headers["www-authenticate"])["error"] == "insufficient_scope"
    assert titles_are_absent(shared_server, title)


def test_duplicate_name_keys_resolve_the_same_way_in_gate_and_sdk(shared_server: DevServer) -> None:
    """JSON with two "name" keys: the last wins in both parsers, so the gate checks what would run."""
    title = unique("dupkey")
    raw = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_notes","name":"create_note",'
           f'"arguments":{{"title":"{title}"}}}}}}').encode()
    response = shared_server.rpc(shared_server.token("dev-read"), None, LEGACY_HEADERS, raw=raw)
    assert response.status_code == 403
    assert titles_are_absent(shared_server, title)


def test_deeply_nested_body_is_a_client_error_not_a_server_crash(shared_server: DevServer) -> None:
    depth = 5000
    raw = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_notes","arguments":{"x":'
           + "[" * depth + "]" * depth + "}}}").encode()
    response = shared_server.rpc(shared_server.token("dev-read"), None, LEGACY_HEADERS, raw=raw)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == -32700  # parse error


def titles_are_absent(srv: DevServer, title: str) -> bool:
    search = tool_call("search_notes", {"query": title, "limit": 100}, modern=False)
    response = srv.rpc(srv.token("dev-full"), search, LEGACY_HEADERS)
    assert response.status_code == 200, response.text
    notes = json.loads(response.json()["result"]["content"][0]["text"])["notes"]
    return notes == []
