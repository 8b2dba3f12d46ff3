"""MCP integration: per-tool permissions with the specification's HTTP 403, for the mcp SDK and FastMCP.

    @mcp.tool(name="archive")
    @requires("api_write_access")          # the mark travels with the function, whatever its tool name
    async def archive_note(note_id: int) -> dict[str, object]: ...

    app = protect(mcp, settings)           # metadata, 401/503, 403 gate, tools/list filter, one call
"""

from ._fastmcp import fastmcp_auth, fastmcp_refusals, permission_check
from ._gate import ToolPermissionGate, filter_tools_middleware, protect
from ._tools import ToolPermissions, requires

__all__ = [
    "requires",
    "ToolPermissions",
    "protect",
    "ToolPermissionGate",
    "filter_tools_middleware",
    # FastMCP (imports fastmcp only when called)
    "fastmcp_auth",
    "permission_check",
    "fastmcp_refusals",
]
