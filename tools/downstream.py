"""The example onward call: a tool that calls a downstream API with a token of the downstream's own.

``downstream_whoami`` asks the example downstream API (``GET <downstream URL>/caller``) who it
sees calling, through a downstream named in configuration. Which token that is, is the
downstream's *mode*, set in configuration and never in the tool: ``as-server`` (the backend sees
this server), ``on-behalf-of`` (the backend sees the caller, with this server as the RFC 8693
``act``or) or ``destination`` (a BTP Destination decides). The tool itself is one line::

    response = await downstreams.request(name, "GET", "/caller")

A refused exchange, an unreachable issuer, the backend's 401 or 403 and a timeout all come back
as a tool error naming the downstream (`auth.downstream.DownstreamError`), never as a bare error.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from typing_extensions import TypedDict

from auth.downstream import Downstreams
from auth.mcp import requires

from .notes import READ

__all__ = ["register_downstream_tools", "DownstreamAnswer"]

_CALLS_OUT = ToolAnnotations(read_only_hint=True, open_world_hint=True)


class DownstreamAnswer(TypedDict):
    """What ``downstream_whoami`` reports: the downstream, its mode, and what the API answered."""

    downstream: str
    mode: str
    status: int
    seen: dict[str, Any]


def register_downstream_tools(mcp: MCPServer, downstreams: Downstreams) -> None:
    """Register ``downstream_whoami`` on ``mcp``, calling through ``downstreams``."""
    names = ", ".join(downstreams.names)

    @mcp.tool(annotations=_CALLS_OUT, description=(
        "Ask the example downstream API who it sees calling, through a configured downstream "
        f"({names}); each downstream's configuration decides whether it calls as this server or "
        "on behalf of you."
    ))
    @requires(READ)
    async def downstream_whoami(downstream: str) -> DownstreamAnswer:
        response = await downstreams.request(downstream, "GET", "/caller")
        try:
            body = response.json()
        except ValueError:  # not JSON: report the status alone
            body = {}
        return DownstreamAnswer(
            downstream=downstream,
            mode=downstreams.downstream(downstream).mode,
            status=response.status_code,
            seen=body if isinstance(body, dict) else {},
        )
