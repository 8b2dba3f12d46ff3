"""`requires` marks the tool function; `ToolPermissions` is the server-owned table built from the marks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from mcp.server.mcpserver import MCPServer

from auth import InsufficientScope, MissingToken, VerifiedToken
from auth._context import bind_token, reset_token
from auth.mcp import ToolPermissions, requires
from auth.mcp._tools import PERMISSIONS_ATTR, active_permissions, declared_permissions, using_permissions

WRITE = "api_write_access"
READ = "api_read_access"


def token(*permissions: str) -> VerifiedToken:
    return VerifiedToken(subject="s", client_id="c", issuer="https://issuer.example", audience=("https://rs",),
                         permissions=frozenset(permissions), expires_at=2_000_000_000)


@contextmanager
def acting_as(tok: VerifiedToken) -> Iterator[None]:
    handle = bind_token(tok)
    try:
        yield
    finally:
        reset_token(handle)


@requires(WRITE)
async def write_async(x: int) -> int:
    return x + 1


@requires(WRITE)
def write_sync(x: int) -> int:
    return x * 2


# -- marking -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [write_async, write_sync])
def test_requires_marks_the_function_object(fn: object) -> None:
    assert getattr(fn, PERMISSIONS_ATTR) == {WRITE}
    assert declared_permissions(fn) == {WRITE}


def test_requires_keeps_the_signature_and_the_kind_of_function() -> None:
    import inspect

    assert inspect.iscoroutinefunction(write_async)
    assert not inspect.iscoroutinefunction(write_sync)
    assert list(inspect.signature(write_sync).parameters) == ["x"]
    assert write_sync.__name__ == "write_sync"


def test_stacked_requires_add_up() -> None:
    @requires(READ)
    @requires(WRITE)
    async def both() -> None: ...

    assert declared_permissions(both) == {READ, WRITE}


def test_unmarked_function_declares_nothing() -> None:
    def plain() -> None: ...

    assert declared_permissions(plain) == frozenset()


@pytest.mark.parametrize("bad", [(), ("",), ("two words",), ('q"uote',), ("caf\u00e9",)])
def test_requires_rejects_missing_or_malformed_names(bad: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        requires(*bad)


# -- the call-time check (defence in depth) --------------------------------------------------------


def test_sync_tool_runs_with_the_permission_and_refuses_without() -> None:
    with acting_as(token(WRITE)):
        assert write_sync(3) == 6
    with acting_as(token(READ)), pytest.raises(InsufficientScope) as info:
        write_sync(3)
    assert info.value.missing == {WRITE}


async def test_async_tool_runs_with_the_permission_and_refuses_without() -> None:
    with acting_as(token(WRITE)):
        assert await write_async(1) == 2
    with acting_as(token(READ)), pytest.raises(InsufficientScope):
        await write_async(1)


def test_call_without_a_token_is_refused() -> None:
    with pytest.raises(MissingToken):
        write_sync(1)


def test_call_time_check_reads_the_active_servers_aliases() -> None:
    aliased = ToolPermissions(aliases={WRITE: "notes.write"})
    with acting_as(token("notes.write")):
        with pytest.raises(InsufficientScope):
            write_sync(1)  # no table: logical names
        with using_permissions(aliased):
            assert write_sync(1) == 2
    with acting_as(token(WRITE)), using_permissions(aliased), pytest.raises(InsufficientScope) as info:
        write_sync(1)
    assert info.value.missing == {"notes.write"}
    assert active_permissions() is None


def test_call_time_check_applies_the_active_servers_implication_rules() -> None:
    table = ToolPermissions(implies={"api_admin": frozenset({WRITE})})
    with acting_as(token("api_admin")), using_permissions(table):
        assert write_sync(2) == 4


async def test_concurrent_requests_see_their_own_servers_table() -> None:
    a = ToolPermissions(aliases={WRITE: "a.write"})
    b = ToolPermissions(aliases={WRITE: "b.write"})

    async def call(table: ToolPermissions, granted: str) -> bool:
        with acting_as(token(granted)), using_permissions(table):
            await asyncio.sleep(0)
            try:
                await write_async(0)
            except InsufficientScope:
                return False
            return True

    results = await asyncio.gather(call(a, "a.write"), call(b, "a.write"), call(b, "b.write"), call(a, "b.write"))
    assert results == [True, False, True, False]


# -- the table ---------------------------------------------------------------------------------------


def test_table_resolves_aliases_once_and_answers_per_tool() -> None:
    table = ToolPermissions({"archive": [WRITE], "whoami": []}, aliases={WRITE: "notes.write"})
    assert table.required("archive") == {"notes.write"}
    assert table.required("whoami") == frozenset()
    assert table.required("unknown") == frozenset()
    assert table.all_permissions() == {"notes.write"}
    assert table.declared()["archive"] == {WRITE}


def test_table_allows_and_reports_what_is_missing() -> None:
    table = ToolPermissions({"archive": [WRITE], "read": [READ]}, implies={WRITE: frozenset({READ})})
    assert table.allows("read", frozenset({WRITE}))
    assert not table.allows("archive", frozenset({READ}))
    assert table.allows("open", frozenset())
    assert table.missing(["archive", "read"], frozenset()) == ({WRITE, READ}, {WRITE, READ})
    assert table.missing(["archive"], frozenset({WRITE})) == ({WRITE}, frozenset())
    assert table.missing([], frozenset()) == (frozenset(), frozenset())


def test_table_is_read_only() -> None:
    table = ToolPermissions({"archive": [WRITE]}, aliases={WRITE: "x"})
    with pytest.raises(TypeError):
        table.aliases["y"] = "z"  # type: ignore[index]
    with pytest.raises(AttributeError):
        table.extra = 1  # type: ignore[attr-defined]


def test_table_rejects_malformed_names() -> None:
    with pytest.raises(ValueError):
        ToolPermissions({"archive": ["not valid"]})


def test_from_server_reads_tools_under_their_registered_names() -> None:
    mcp = MCPServer("t")

    @mcp.tool(name="archive")
    @requires(WRITE)
    async def archive_note(note_id: int) -> int:
        return note_id

    @mcp.tool()
    @requires(READ)
    def peek() -> str:
        return "x"

    @mcp.tool()
    async def whoami() -> str:
        return "me"

    table = ToolPermissions.from_server(mcp, aliases={READ: "notes.read"})
    assert table.required("archive") == {WRITE}
    assert table.required("archive_note") == frozenset()
    assert table.required("peek") == {"notes.read"}
    assert table.required("whoami") == frozenset()


def test_two_tables_from_one_server_do_not_share_aliases() -> None:
    mcp = MCPServer("t")

    @mcp.tool()
    @requires(WRITE)
    async def archive() -> None: ...

    a = ToolPermissions.from_server(mcp, aliases={WRITE: "a"})
    b = ToolPermissions.from_server(mcp, aliases={WRITE: "b"})
    assert (a.required("archive"), b.required("archive")) == ({"a"}, {"b"})


# -- the server's table reads its registry: late registrations, resources, templates, prompts --------


def notes_server() -> MCPServer:
    mcp = MCPServer("t")

    @mcp.resource("notes://readme")
    def readme() -> str:
        return "open"

    @mcp.resource("notes://secret")
    @requires(WRITE)
    def secret() -> str:
        return "s"

    @mcp.resource("notes://note/{note_id}")
    @requires(READ)
    def note(note_id: str) -> str:
        return note_id

    @mcp.prompt()
    def greet(name: str) -> str:
        return name

    @mcp.prompt(name="rewrite")
    @requires(WRITE)
    def rewrite_text(text: str) -> str:
        return text

    return mcp


def test_a_tool_registered_after_the_table_is_built_is_in_it() -> None:
    mcp = MCPServer("t")
    table = ToolPermissions.from_server(mcp, aliases={WRITE: "notes.write"})
    assert table.required("purge") == frozenset() and "purge" not in table.declared()

    @mcp.tool()
    @requires(WRITE)
    def purge() -> str:
        return "gone"

    assert table.required("purge") == {"notes.write"}
    assert table.declared()["purge"] == {WRITE}
    assert table.all_permissions() == {"notes.write"}
    assert not table.allows("purge", frozenset({WRITE}))  # the alias is what is granted
    assert table.allows("purge", frozenset({"notes.write"}))
    mcp.remove_tool("purge")
    assert table.required("purge") == frozenset() and table.all_permissions() == frozenset()


def test_resources_templates_and_prompts_are_looked_up_as_the_sdk_dispatches() -> None:
    table = ToolPermissions.from_server(notes_server())
    assert table.needs("resource", "notes://secret") == {WRITE}
    assert table.needs("resource", "notes://note/7") == {READ}  # a template instance
    assert table.needs("template", "notes://note/{note_id}") == {READ}
    assert table.needs("reference", "notes://note/{note_id}") == {READ}
    assert table.needs("prompt", "rewrite") == {WRITE}
    assert table.needs("prompt", "rewrite_text") == frozenset()  # not registered under the function's name
    assert table.needs("resource", "notes://readme") == frozenset()  # unmarked, open
    assert table.needs("resource", "notes://nothing/here") == frozenset()  # unknown: the SDK answers it
    assert table.all_permissions() == {READ, WRITE}


def test_unmarked_deny_refuses_unmarked_resources_and_prompts_but_not_tools() -> None:
    mcp = notes_server()

    @mcp.tool()
    def whoami() -> str:
        return "me"

    table = ToolPermissions.from_server(mcp, unmarked="deny")
    assert table.needs("resource", "notes://readme") is None
    assert table.needs("prompt", "greet") is None
    assert table.needs("tool", "whoami") == frozenset()
    refused, required, missing = table.refused([("resource", "notes://readme")], frozenset({READ, WRITE}))
    assert refused == [("resource", "notes://readme")] and required == missing == frozenset()
    assert not table.visible("resource", frozenset({READ, WRITE}))("notes://readme")
    assert table.visible("resource", frozenset({READ, WRITE}))("notes://secret")
    assert not table.visible("prompt", frozenset({WRITE}))("greet")


def test_refused_names_what_is_missing_and_applies_the_implication_rules() -> None:
    table = ToolPermissions.from_server(notes_server(), implies={WRITE: frozenset({READ})})
    used = [("resource", "notes://note/1"), ("prompt", "rewrite")]
    assert table.refused(used, frozenset({WRITE})) == ([], frozenset(), frozenset())
    refused, required, missing = table.refused(used, frozenset({READ}))
    assert refused == [("prompt", "rewrite")] and required == {WRITE} and missing == {WRITE}
    assert table.visible("template", frozenset({WRITE}))("notes://note/{note_id}")


def test_unmarked_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="unmarked"):
        ToolPermissions(unmarked="closed")  # type: ignore[arg-type]


def test_a_mapping_table_binds_to_one_server_only() -> None:
    a, b = MCPServer("a"), MCPServer("b")
    explicit = ToolPermissions({"archive": [WRITE]})
    bound = explicit.bound_to(a)
    assert bound.bound_to(a) is bound
    with pytest.raises(ValueError, match="another server"):
        bound.bound_to(b)

    @a.tool()
    @requires(READ)
    def archive() -> str:
        return "x"

    assert bound.required("archive") == {READ, WRITE}  # the mapping adds to the mark
    assert explicit.required("archive") == {WRITE}  # the unbound table is unchanged


def test_protect_refuses_a_policy_that_contradicts_the_table() -> None:
    from auth import AuthSettings, IssuerConfig
    from auth.mcp import protect

    mcp = MCPServer("t")
    settings = AuthSettings(issuers=(IssuerConfig(issuer="https://issuer.example", audiences=("a",)),),
                            resource_url="https://rs.example/mcp")
    with pytest.raises(ValueError, match="unmarked"):
        protect(mcp, settings, ToolPermissions.from_server(mcp), unmarked="deny")
    with pytest.raises(ValueError, match="another server"):
        protect(MCPServer("other"), settings, ToolPermissions.from_server(mcp))


async def test_a_refused_resource_read_is_an_anticipated_resource_error() -> None:
    """Without the gate (the SDK's own token_verifier= path), the call-time check refuses the read
    as the SDK's ResourceError: its text reaches the client, no crash is logged."""
    from mcp.server.mcpserver.exceptions import ResourceError, UnexpectedResourceError

    mcp = notes_server()
    with acting_as(token(READ)), pytest.raises(ResourceError) as info:
        await mcp.read_resource("notes://secret")
    assert not isinstance(info.value, UnexpectedResourceError)
    assert WRITE in str(info.value)
    with acting_as(token(WRITE)):
        assert [c.content for c in await mcp.read_resource("notes://secret")] == ["s"]  # type: ignore[union-attr]
