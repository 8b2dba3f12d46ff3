"""The Notes MCP server: the MCP SDK over streamable HTTP behind the `auth` layer.

    python -m server --dev      # with the embedded local issuer
    python -m server            # production: environment and VCAP_SERVICES
"""

from ._app import ServerApp, build_mcp, create_app
from ._settings import MCP_PATH, ServerSettings, load_server_settings

__all__ = ["create_app", "build_mcp", "ServerApp", "ServerSettings", "load_server_settings", "MCP_PATH"]
