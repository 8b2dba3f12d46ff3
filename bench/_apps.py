"""The two apps bench_server.py compares, each started in its own process by uvicorn --factory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings


def bare() -> Any:
    """The MCP SDK alone: stateless JSON, no auth, one trivial tool (the peer)."""
    mcp = MCPServer("bare", log_level="WARNING")

    @mcp.tool()
    async def whoami() -> dict[str, str]:
        return {"client_id": "anonymous"}

    inner = mcp.streamable_http_app(
        json_response=True, stateless_http=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return inner


def full() -> Any:
    """This project: Host/Origin guard, bearer auth, tool gate, audit, the same kind of tool."""
    import logging

    from server._app import create_app
    from server._dev_issuer import DevIssuer
    from server._main import dev_settings

    base = os.environ["BENCH_BASE_URL"]
    issuer = DevIssuer(base)
    settings = dev_settings({"MCP_NOTES_DB": str(Path(os.environ["BENCH_DIR"]) / "notes.db")}, base, issuer)
    logging.getLogger("audit").setLevel(logging.INFO)
    logging.getLogger("audit").addHandler(logging.NullHandler())
    logging.getLogger("audit").propagate = False
    return create_app(settings, extra_routes=[*issuer.well_known_routes(), issuer.mount()])


