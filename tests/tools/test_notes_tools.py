"""The MCP tools, driven in-process through the real `mcp.Client` with a token bound in the contextvar.

The in-process client carries the caller's contextvars to the tool (the SDK snapshots the
sender's context per message), so binding a token with `bind_token` is enough; the first
test checks that, so the permission tests below cannot pass by accident.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError

import tools
from auth._context import bind_token, reset_token
from auth._errors import InsufficientScope, MissingToken
from auth._token import VerifiedToken
from auth.mcp._tools import ToolPermissions
from tools import SINGLE_TENANT, PostgresConfig, PostgresStore, SQLiteStore, TenantKey, tenant_of

READ_TOOLS = {"list_notes", "search_notes", "get_note"}
WRITE_TOOLS = {"create_note", "update_note", "delete_note"}
EXPIRES_AT = 1_767_225_600  # 2026-01-01T00:00:00Z


def make_token(client_id: str = "writer-app", *permissions: str, issuer: str = "https://tenant.accounts.ondemand.com",
               tenant: str | None = "tenant-1") -> VerifiedToken:
    return VerifiedToken(
        subject=f"sub-{client_id}",
        client_id=client_id,
        issuer=issuer,
        audience=("https://notes.example",),
        permissions=frozenset(permissions or ("api_read_access", "api_write_access")),
        expires_at=EXPIRES_AT,
        tenant=tenant,
    )


@contextmanager
def acting_as(token: VerifiedToken | None) -> Iterator[None]:
    handle = bind_token(token)
    try:
        yield
    finally:
        reset_token(handle)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "notes.db")  # tests look underneath through its synchronous `.sync`


@pytest.fixture
def server(store: SQLiteStore) -> MCPServer:
    mcp = MCPServer("notes-test")
    tools.register(mcp, store)
    return mcp


# -- registration --------------------------------------------------------------------------


def test_write_tools_declare_write_permission(server: MCPServer) -> None:
    permissions = ToolPermissions.from_server(server)
    assert permissions.required("create_note") == {"api_write_access"}
    for name in WRITE_TOOLS:
        assert permissions.required(name) == {"api_write_access"}, name


def test_read_tools_declare_read_permission(server: MCPServer) -> None:
    permissions = ToolPermissions.from_server(server)
    for name in READ_TOOLS:
        assert permissions.required(name) == {"api_read_access"}, name


def test_whoami_declares_no_permission(server: MCPServer) -> None:
    assert ToolPermissions.from_server(server).required("whoami") == frozenset()


async def test_server_lists_every_tool_with_read_only_hints(server: MCPServer) -> None:
    with acting_as(make_token()):
        async with Client(server) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == READ_TOOLS | WRITE_TOOLS | {"whoami"}
    assert all(listed[n].annotations.read_only_hint for n in READ_TOOLS | {"whoami"})
    assert not any(listed[n].annotations.read_only_hint for n in WRITE_TOOLS)
    assert listed["delete_note"].annotations.destructive_hint is True


# -- the token reaches the tool ------------------------------------------------------------


async def test_whoami_reports_the_token_bound_by_the_caller(server: MCPServer) -> None:
    token = make_token("reader-app", "api_read_access", "zz_other", "aa_other")
    with acting_as(token):
        async with Client(server) as client:
            result = await client.call_tool("whoami", {})
    assert not result.is_error
    assert result.structured_content == {
        "client_id": "reader-app",
        "subject": "sub-reader-app",
        "tenant": "tenant-1",
        "permissions": ["aa_other", "api_read_access", "zz_other"],
        "expires_at": "2026-01-01T00:00:00+00:00",
    }


async def test_token_bound_after_connecting_still_reaches_the_tool(server: MCPServer) -> None:
    async with Client(server) as client:
        with acting_as(make_token("late-app")):
            result = await client.call_tool("whoami", {})
    assert result.structured_content is not None
    assert result.structured_content["client_id"] == "late-app"


async def test_whoami_without_a_token_fails(server: MCPServer) -> None:
    with acting_as(None):
        with pytest.raises(UnexpectedToolError) as caught:
            await server.call_tool("whoami", {})
    assert isinstance(caught.value.__cause__, MissingToken)


# -- permissions ---------------------------------------------------------------------------


async def test_write_without_write_permission_is_refused_and_stores_nothing(
    server: MCPServer, store: SQLiteStore
) -> None:
    with acting_as(make_token("reader-app", "api_read_access")):
        async with Client(server) as client:
            result = await client.call_tool("create_note", {"title": "sneaky"})
    assert result.is_error
    # The refusal names the permission, never the arguments; the HTTP gate gives the 403 challenge.
    assert "sneaky" not in str(result.content)
    assert store.sync.list(SINGLE_TENANT, 100) == []


async def test_refused_write_raises_insufficient_scope_naming_the_missing_permission(server: MCPServer) -> None:
    with acting_as(make_token("reader-app", "api_read_access")):
        with pytest.raises(ToolError) as caught:
            await server.call_tool("delete_note", {"note_id": 1})
    assert not isinstance(caught.value, UnexpectedToolError)  # a refusal, not a crash
    cause = caught.value.__cause__
    assert isinstance(cause, InsufficientScope)
    assert cause.missing == {"api_write_access"}
    assert str(caught.value) == ("Error executing tool delete_note: insufficient_scope: this tool needs permission "
                                 "api_write_access, which the access token does not grant")


async def test_read_without_read_permission_is_refused(server: MCPServer, store: SQLiteStore) -> None:
    store.sync.create(SINGLE_TENANT, "secret", "", "someone")
    with acting_as(make_token("writer-only", "api_write_access")):
        async with Client(server) as client:
            result = await client.call_tool("list_notes", {})
    assert result.is_error
    assert "secret" not in str(result.content)


# -- behaviour -----------------------------------------------------------------------------


async def test_created_note_records_the_client_id_of_the_token(server: MCPServer, store: SQLiteStore) -> None:
    with acting_as(make_token("writer-app")):
        async with Client(server) as client:
            result = await client.call_tool("create_note", {"title": "Groceries", "body": "milk"})
    assert not result.is_error and result.structured_content is not None
    note_id = result.structured_content["id"]
    assert result.structured_content["created_by"] == "writer-app"
    assert store.sync.get(SINGLE_TENANT, note_id).created_by == "writer-app"


async def test_update_and_delete_record_the_acting_client(server: MCPServer, store: SQLiteStore) -> None:
    note = store.sync.create(SINGLE_TENANT, "draft", "", "writer-app")
    with acting_as(make_token("editor-app")):
        async with Client(server) as client:
            updated = await client.call_tool("update_note", {"note_id": note.id, "title": "final", "body": "done"})
            deleted = await client.call_tool("delete_note", {"note_id": note.id})
    assert updated.structured_content is not None
    assert (updated.structured_content["created_by"], updated.structured_content["updated_by"]) == (
        "writer-app",
        "editor-app",
    )
    assert deleted.structured_content is not None and deleted.structured_content["title"] == "final"
    assert store.sync.list(SINGLE_TENANT, 100) == []


async def test_read_tools_return_notes_newest_first(server: MCPServer, store: SQLiteStore) -> None:
    first = store.sync.create(SINGLE_TENANT, "apple pie", "", "app")
    second = store.sync.create(SINGLE_TENANT, "apple cake", "", "app")
    store.sync.create(SINGLE_TENANT, "banana", "", "app")
    with acting_as(make_token("reader-app", "api_read_access")):
        async with Client(server) as client:
            searched = await client.call_tool("search_notes", {"query": "APPLE"})
            listed = await client.call_tool("list_notes", {"limit": 2})
            got = await client.call_tool("get_note", {"note_id": first.id})
    assert searched.structured_content is not None and listed.structured_content is not None
    assert [n["id"] for n in searched.structured_content["notes"]] == [second.id, first.id]
    assert [n["title"] for n in listed.structured_content["notes"]] == ["banana", "apple cake"]
    assert got.structured_content is not None and got.structured_content["title"] == "apple pie"


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("create_note", {"title": "   "}, "title must not be empty"),
        ("create_note", {"title": "x" * 201}, "title is longer than 200 characters"),
        ("get_note", {"note_id": 42}, "note 42 does not exist"),
        ("update_note", {"note_id": 42, "title": "t", "body": "b"}, "note 42 does not exist"),
        ("delete_note", {"note_id": 42}, "note 42 does not exist"),
        ("list_notes", {"limit": 0}, "limit must be an integer from 1 to 100"),
        ("search_notes", {"query": ""}, "query must not be empty"),
    ],
)
async def test_input_problems_reach_the_client_as_tool_errors_with_the_reason(
    server: MCPServer, tool: str, arguments: dict[str, object], message: str
) -> None:
    with acting_as(make_token()):
        async with Client(server) as client:
            result = await client.call_tool(tool, arguments)
    assert result.is_error
    assert message in result.content[0].text  # type: ignore[union-attr]


async def test_input_problem_is_a_deliberate_tool_error_not_a_crash(server: MCPServer) -> None:
    with acting_as(make_token()):
        with pytest.raises(ToolError) as caught:
            await server.call_tool("get_note", {"note_id": 42})
    assert not isinstance(caught.value, UnexpectedToolError)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


async def test_an_unreachable_store_is_a_tool_error_saying_so_within_the_timeout() -> None:
    import time

    down = PostgresStore(PostgresConfig(host="127.0.0.1", port=_closed_port(), user="u", password="pw-secret"),
                         timeout=1.0)
    await down.open()
    mcp = MCPServer("notes-down")
    tools.register(mcp, down)
    try:
        with acting_as(make_token()):
            async with Client(mcp) as client:
                started = time.monotonic()
                result = await client.call_tool("create_note", {"title": "lost"})
                elapsed = time.monotonic() - started
                listed = await client.call_tool("list_notes", {})
    finally:
        await down.aclose()
    assert result.is_error and listed.is_error
    assert "the notes store is unavailable; try again shortly" in result.content[0].text  # type: ignore[union-attr]
    assert "pw-secret" not in str(result.content)
    assert elapsed < 15  # bounded by the 1 s store timeout (generous margin for a loaded machine)


# -- tenants -------------------------------------------------------------------------------


def test_tenant_of_is_the_issuer_and_tenant_only_in_multi_tenant_mode() -> None:
    token = make_token(issuer="https://a.accounts.example", tenant="tid-1")
    assert tenant_of(token, multi_tenant=True) == TenantKey("https://a.accounts.example", "tid-1")
    assert tenant_of(make_token(issuer="https://a.accounts.example", tenant=None), multi_tenant=True) == TenantKey(
        "https://a.accounts.example", "")
    assert tenant_of(token, multi_tenant=False) == SINGLE_TENANT == TenantKey("", "")


async def test_registered_multi_tenant_the_tools_work_on_the_callers_tenant(store: SQLiteStore) -> None:
    mcp = MCPServer("notes-multi")
    tools.register(mcp, store, multi_tenant=True)
    alpha = make_token("a", issuer="https://alpha.example", tenant="t")
    beta = make_token("b", issuer="https://beta.example", tenant="t")
    legacy = store.sync.create(SINGLE_TENANT, "from before", "", "old")
    with acting_as(alpha):
        async with Client(mcp) as client:
            created = await client.call_tool("create_note", {"title": "alpha's"})
            listed = await client.call_tool("list_notes", {})
            foreign = await client.call_tool("get_note", {"note_id": legacy.id})
    assert created.structured_content is not None and listed.structured_content is not None
    assert [n["title"] for n in listed.structured_content["notes"]] == ["alpha's"]
    assert foreign.is_error and f"note {legacy.id} does not exist" in foreign.content[0].text  # type: ignore[union-attr]
    assert [n.title for n in store.sync.list(TenantKey("https://alpha.example", "t"), 10)] == ["alpha's"]
    with acting_as(beta):
        async with Client(mcp) as client:
            gone = await client.call_tool("delete_note", {"note_id": created.structured_content["id"]})
    assert gone.is_error
    assert store.sync.list(TenantKey("https://beta.example", "t"), 10) == []
    assert [n.title for n in store.sync.list(SINGLE_TENANT, 10)] == ["from before"]
