"""OAuth 2.0 resource-server core for ASGI apps and MCP servers.

Validate bearer tokens from SAP Cloud Identity Services (and XSUAA, Entra ID or any JWT
issuer), answer with RFC 6750 challenges and publish RFC 9728 metadata. The package has
three parts, each with its own short public API:

* ``auth``         the resource-server core: settings, the verifier, the middleware, errors;
* ``auth.mcp``     the MCP integration: per-tool permissions, the 403 gate, ``protect(mcp, ...)``;
* ``auth.client``  the calling side: client-credentials tokens, httpx/httpx2 auth, the CLI.

It imports nothing from ``server`` or ``tools``::

    settings = load_settings(os.environ)
    app = auth.mcp.protect(mcp, settings)     # an MCPServer: metadata, 401/503, 403 gate, tools/list filter

    # any other ASGI app:
    app = BearerAuthMiddleware(app, verifier=JWTVerifier(settings), settings=settings, protect=["/api"])
"""

from ._binding import certificate_thumbprint
from ._context import current_token, optional_token
from ._errors import AuthError, ConfigError, InsufficientScope, InvalidToken, KeysUnavailable, MissingToken
from ._metadata import metadata_routes
from ._middleware import BearerAuthMiddleware
from ._settings import AuthSettings, IssuerConfig, load_settings
from ._token import VerifiedToken
from ._verifier import JWTVerifier, TokenVerifier

__all__ = [
    # configuration
    "AuthSettings",
    "IssuerConfig",
    "load_settings",
    # verification
    "TokenVerifier",
    "JWTVerifier",
    "VerifiedToken",
    "certificate_thumbprint",
    # HTTP
    "BearerAuthMiddleware",
    "metadata_routes",
    # the principal of the current request
    "current_token",
    "optional_token",
    # errors
    "AuthError",
    "MissingToken",
    "InvalidToken",
    "InsufficientScope",
    "KeysUnavailable",
    "ConfigError",
]
