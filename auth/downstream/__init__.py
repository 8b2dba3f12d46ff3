"""Onward calls: a tool calls a downstream API with a token of the downstream's own, never the caller's.

    settings = load_downstreams(os.environ)       # MCP_DOWNSTREAMS, VCAP_SERVICES (identity, destination)
    downstreams = Downstreams(settings)           # once at start; await downstreams.aclose() at the end

    @mcp.tool()
    async def orders() -> dict[str, object]:
        response = await downstreams.request("backend", "GET", "/orders")    # for the current caller
        return response.json()

Each downstream's mode is configuration: ``as-server`` (client credentials for its ``resource``),
``on-behalf-of`` (the caller's token exchanged: RFC 7523 JWT bearer or RFC 8693 token exchange),
or ``destination`` (a BTP Destination: the Destination service supplies URL and token). Failures
are `DownstreamError`, an MCP ``ToolError`` with a stable ``code``, within a deadline; each call
writes an audit line without tokens.
"""

from ._calls import DownstreamError, Downstreams
from ._destination import Destination, DestinationError, DestinationService
from ._settings import DestinationBinding, Downstream, DownstreamSettings, load_downstreams

__all__ = [
    "Downstreams",
    "DownstreamError",
    "Downstream",
    "DownstreamSettings",
    "load_downstreams",
    # the BTP Destination service
    "DestinationService",
    "DestinationBinding",
    "Destination",
    "DestinationError",
]
