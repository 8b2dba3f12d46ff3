"""The example tools: ``whoami`` and notes kept in a `NotesStore`.

Each tool is one function: ``@mcp.tool()`` on top (name = function name; the docstring is
the description the model reads), ``@requires(...)`` under it (marks the function with the
permission, which the server's `auth.mcp.ToolPermissions` reads, and checks it when the tool runs). The tools
are closures over the store, so two servers in one process (tests) keep separate stores.

Every note tool works on the caller's tenant only (`tenant_of`): in a multi-tenant deployment
the issuer and tenant of the token, else the one `SINGLE_TENANT`.

The store is async (`NotesStore`; SQLite runs on worker threads, PostgreSQL on a pool). A
`NoteError` becomes a `ToolError` carrying the store's message, and so does
`StoreUnavailable` ("the notes store is unavailable; try again shortly"): the SDK reports any
other exception to the model only as "Error executing tool <name>", which gives it nothing
to correct or retry.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before 3.12

from auth import VerifiedToken, current_token
from auth.mcp import requires

from ._store import SINGLE_TENANT, Note, NoteError, NotesStore, StoreUnavailable, TenantKey

__all__ = ["register_whoami", "register_notes", "tenant_of", "NoteView", "NoteList", "Identity", "READ", "WRITE"]

READ = "api_read_access"
"""Permission the read tools declare."""
WRITE = "api_write_access"
"""Permission the write tools declare."""

T = TypeVar("T")

_READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
_DELETES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


class NoteView(TypedDict):
    """A note as a tool returns it (a TypedDict, so the SDK publishes an output schema)."""

    id: int
    title: str
    body: str
    created_by: str
    updated_by: str
    created_at: str
    updated_at: str


class NoteList(TypedDict):
    """Several notes, newest first; wrapped in an object because structured content must be one."""

    notes: list[NoteView]


class Identity(TypedDict):
    """What ``whoami`` reports about the caller's token."""

    client_id: str
    subject: str
    tenant: str | None
    permissions: list[str]
    expires_at: str


def tenant_of(token: VerifiedToken, *, multi_tenant: bool) -> TenantKey:
    """Whose notes ``token``'s caller reads and writes.

    Args:
        token: the verified principal.
        multi_tenant: the deployment trusts several tenants (IAS multi-tenant mode).

    Returns:
        ``TenantKey(issuer, tenant)`` of the token in a multi-tenant deployment (a token without a
        tenant claim: the issuer with an empty tenant); `SINGLE_TENANT` otherwise, whatever the
        token says, so a single-tenant deployment keeps one shared set of notes.
    """
    if not multi_tenant:
        return SINGLE_TENANT
    return TenantKey(token.issuer, token.tenant or "")


def _view(note: Note) -> NoteView:
    return NoteView(**asdict(note))  # type: ignore[typeddict-item]


async def _run(call: Awaitable[T]) -> T:
    """Await a store call, turning its input errors and outages into tool errors.

    Raises:
        ToolError: the store refused the input, the note does not exist, or the store is unavailable.
    """
    try:
        return await call
    except (NoteError, StoreUnavailable) as exc:
        raise ToolError(str(exc)) from exc


def register_whoami(mcp: MCPServer) -> None:
    """Register ``whoami``, which needs a valid token and no particular permission."""

    @mcp.tool(annotations=_READ_ONLY)
    async def whoami() -> Identity:
        """Describe the caller: OAuth client id, subject, tenant, granted permissions and token expiry."""
        token = current_token()
        return Identity(
            client_id=token.client_id,
            subject=token.subject,
            tenant=token.tenant,
            permissions=sorted(token.permissions),
            expires_at=datetime.fromtimestamp(token.expires_at, UTC).isoformat(),
        )


def register_notes(mcp: MCPServer, store: NotesStore, *, multi_tenant: bool = False) -> None:
    """Register the note tools on ``mcp``, all backed by ``store``.

    ``multi_tenant``: keep each (issuer, tenant)'s notes apart (`tenant_of`); off, all callers share one set.
    """

    def mine() -> TenantKey:
        return tenant_of(current_token(), multi_tenant=multi_tenant)

    @mcp.tool(annotations=_READ_ONLY)
    @requires(READ)
    async def list_notes(limit: int = 20) -> NoteList:
        """List the most recent notes, newest first (limit 1 to 100)."""
        return NoteList(notes=[_view(n) for n in await _run(store.list(mine(), limit))])

    @mcp.tool(annotations=_READ_ONLY)
    @requires(READ)
    async def search_notes(query: str, limit: int = 20) -> NoteList:
        """Find notes whose title or body contains the query (case-insensitive), newest first."""
        return NoteList(notes=[_view(n) for n in await _run(store.search(mine(), query, limit))])

    @mcp.tool(annotations=_READ_ONLY)
    @requires(READ)
    async def get_note(note_id: int) -> NoteView:
        """Fetch one note by its id."""
        return _view(await _run(store.get(mine(), note_id)))

    @mcp.tool(annotations=_WRITES)
    @requires(WRITE)
    async def create_note(title: str, body: str = "") -> NoteView:
        """Create a note (title 1 to 200 characters, body up to 10000) and return it with its id."""
        return _view(await _run(store.create(mine(), title, body, current_token().client_id)))

    @mcp.tool(annotations=_WRITES)
    @requires(WRITE)
    async def update_note(note_id: int, title: str, body: str) -> NoteView:
        """Replace the title and body of an existing note and return the updated note."""
        return _view(await _run(store.update(mine(), note_id, title, body, current_token().client_id)))

    @mcp.tool(annotations=_DELETES)
    @requires(WRITE)
    async def delete_note(note_id: int) -> NoteView:
        """Delete a note and return what it held; fails when no such note exists."""
        note = await _run(store.delete(mine(), note_id, current_token().client_id))
        if note is None:
            # The store treats a repeated delete as harmless; the model should still hear the id was wrong.
            raise ToolError(f"note {note_id} does not exist")
        return _view(note)
