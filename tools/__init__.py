"""The MCP tools this server offers, and the store behind them (public API).

The server calls `register` once at start-up, after building its `MCPServer`::

    store = open_store(settings.notes_db, timeout=settings.notes_db_timeout_s)  # SQLite path or PostgresConfig
    register(mcp, store, multi_tenant=False)      # True in IAS multi-tenant mode: notes apart per (issuer, tenant)
    await store.open()                            # in the app's lifespan; store.aclose() at shutdown

Adding a tool is one decorated function inside `tools.notes.register_notes` (or a new
``register_*`` called from `register`). ``@mcp.tool()`` goes on top, ``@requires`` under
it; the permission is marked on the registered function, whatever the tool's name, and
the server's `auth.mcp.ToolPermissions` (read from the registered tools) feeds the HTTP gate
and ``tools/list`` filtering. Sync and async tools alike. The docstring is what the model is told::

    @mcp.tool(annotations=_READ_ONLY)
    @requires(READ)
    async def count_notes() -> int:
        \"\"\"Count the caller's most recent notes (at most 100).\"\"\"
        return len(await _run(store.list(mine(), 100)))

Every store call names the caller's `TenantKey` first (``mine()`` there: `tenant_of` the current
token); a store never reads or writes across tenants.

Leave out ``@requires`` only for a tool any valid token may call (like ``whoami``).
Raise `mcp.server.mcpserver.exceptions.ToolError` for a problem the model can fix; the SDK
hides the text of any other exception from the client.
"""

from __future__ import annotations

from pathlib import Path

from mcp.server.mcpserver import MCPServer

from auth.downstream import Downstreams

from ._postgres import DEFAULT_TIMEOUT_S, PostgresConfig, PostgresStore, system_ca_file
from ._rate_leases import PostgresLeases
from ._store import (
    SINGLE_TENANT,
    Note,
    NoteError,
    NotesStore,
    Readiness,
    SQLiteStore,
    StoreUnavailable,
    TenantKey,
)
from .downstream import register_downstream_tools
from .notes import READ, WRITE, register_notes, register_whoami, tenant_of

__all__ = [
    "register",
    "open_store",
    "NotesStore",
    "SQLiteStore",
    "PostgresStore",
    "PostgresConfig",
    "PostgresLeases",
    "system_ca_file",
    "Note",
    "NoteError",
    "TenantKey",
    "SINGLE_TENANT",
    "tenant_of",
    "StoreUnavailable",
    "Readiness",
    "DEFAULT_TIMEOUT_S",
    "READ",
    "WRITE",
]


def open_store(where: Path | PostgresConfig, *, timeout: float = DEFAULT_TIMEOUT_S) -> NotesStore:
    """The store for ``where``: a SQLite file (set up now) or a PostgreSQL database (connect in ``open()``)."""
    if isinstance(where, PostgresConfig):
        return PostgresStore(where, timeout=timeout)
    return SQLiteStore(Path(where))


def register(
    mcp: MCPServer, store: NotesStore, *, multi_tenant: bool = False, downstreams: Downstreams | None = None
) -> None:
    """Register every tool on ``mcp``: ``whoami`` and the note tools backed by ``store``.

    Call it once per server; each tool carries its permission declaration, so two servers
    in one process share nothing. ``multi_tenant``: each (issuer, tenant) of the callers' tokens
    sees only its own notes (the server turns it on with IAS multi-tenant mode); off, every
    caller shares the one `SINGLE_TENANT`. With configured ``downstreams``, the example onward
    call ``downstream_whoami`` is registered too (`tools.downstream`).
    """
    register_whoami(mcp)
    register_notes(mcp, store, multi_tenant=multi_tenant)
    if downstreams is not None and downstreams.names:
        register_downstream_tools(mcp, downstreams)
