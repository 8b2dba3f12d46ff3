"""MCP integration: permissions on tools, resources and prompts with the specification's HTTP 403 (mcp SDK, FastMCP).

    @mcp.tool(name="archive")
    @requires("api_write_access")          # the mark travels with the function, whatever its tool name
    async def archive_note(note_id: int) -> dict[str, object]: ...

    @mcp.resource("notes://note/{note_id}")
    @requires("api_read_access")           # resources, templates and prompts the same way
    def note(note_id: str) -> str: ...

    app = protect(mcp, settings)           # metadata, 401/503, 403 gate, list filters, stateless JSON, one call
    app = protect(mcp, settings, rate_limit=RateLimiter(read=Rate(20, 40), write=Rate(2, 10)))  # and 429
"""

from .._ratelimit import Lease, LeaseSource, Rate, RateLimiter
from ._fastmcp import fastmcp_auth, fastmcp_refusals, permission_check
from ._gate import ToolPermissionGate, filter_tools_middleware, protect
from ._ratelimit import RateLimitGate
from ._tools import ToolPermissions, requires

__all__ = [
    "requires",
    "ToolPermissions",
    "protect",
    "ToolPermissionGate",
    "filter_tools_middleware",
    # per-client rate limits (429 with Retry-After)
    "Rate",
    "RateLimiter",
    "RateLimitGate",
    "LeaseSource",
    "Lease",
    # FastMCP (imports fastmcp only when called)
    "fastmcp_auth",
    "permission_check",
    "fastmcp_refusals",
]
