"""Reusable OAuth 2.0 resource-server layer for ASGI apps and MCP servers.

Validate bearer tokens from SAP Cloud Identity Services (and XSUAA, Entra ID or any
JWT issuer), answer with RFC 6750 challenges, publish RFC 9728 metadata, and gate
individual operations on permissions. This package imports nothing from ``server``
or ``tools``.

    settings = load_settings(os.environ)
    app = protect(mcp, settings)    # an MCPServer: metadata, 401/503, 403 gate, tools/list filter

    # any other ASGI app:
    app = BearerAuthMiddleware(app, verifier=JWTVerifier(settings), settings=settings, protect=["/api"])
"""

from ._binding import certificate_thumbprint, check_certificate_binding, parse_forwarded_client_cert
from ._challenge import challenge
from ._claims import check_claims, check_times, extract_permissions, match_issuer
from ._client import TokenProvider
from ._client_auth import Httpx2BearerAuth, HttpxBearerAuth, TokenSource
from ._context import bind_token, current_token, optional_token, reset_token
from ._credentials import (
    ClientCredentials,
    DiscoveryError,
    InvalidClient,
    IssuedToken,
    RetryPolicy,
    TokenEndpointUnreachable,
    TokenRequestError,
    TokenRequestRejected,
    TokenResponseError,
    credentials_from_env,
    ias_resource,
)
from ._errors import (
    AuthError,
    ConfigError,
    InsufficientScope,
    InvalidToken,
    KeysUnavailable,
    MissingToken,
)
from ._fastmcp import fastmcp_auth, permission_check
from ._jwks import JWKSCache
from ._mcp import ToolPermissionGate, filter_tools_middleware, protect
from ._metadata import metadata_routes, protected_resource_metadata, resource_metadata_url
from ._middleware import BearerAuthMiddleware, bearer_token
from ._scopes import ToolPermissions, expand_permissions, missing_permissions, requires
from ._settings import AuthSettings, CertBinding, IssuerConfig, Profile, load_settings
from ._token import VerifiedToken
from ._verifier import JWTVerifier, TokenVerifier

__all__ = [
    # configuration
    "AuthSettings",
    "IssuerConfig",
    "Profile",
    "CertBinding",
    "load_settings",
    # verification
    "TokenVerifier",
    "JWTVerifier",
    "JWKSCache",
    "VerifiedToken",
    "check_claims",
    "check_times",
    "match_issuer",
    "extract_permissions",
    # HTTP
    "BearerAuthMiddleware",
    "bearer_token",
    "challenge",
    "metadata_routes",
    "protected_resource_metadata",
    "resource_metadata_url",
    # permissions
    "requires",
    "ToolPermissions",
    "protect",
    "missing_permissions",
    "expand_permissions",
    "ToolPermissionGate",
    "filter_tools_middleware",
    # FastMCP (imports fastmcp only when called)
    "fastmcp_auth",
    "permission_check",
    # certificate-bound tokens (RFC 8705)
    "certificate_thumbprint",
    "parse_forwarded_client_cert",
    "check_certificate_binding",
    # calling side: client-credentials tokens
    "ClientCredentials",
    "TokenProvider",
    "IssuedToken",
    "RetryPolicy",
    "TokenSource",
    "HttpxBearerAuth",
    "Httpx2BearerAuth",
    "credentials_from_env",
    "ias_resource",
    "TokenRequestError",
    "TokenRequestRejected",
    "InvalidClient",
    "TokenEndpointUnreachable",
    "TokenResponseError",
    "DiscoveryError",
    # the current principal
    "current_token",
    "optional_token",
    "bind_token",
    "reset_token",
    # errors
    "AuthError",
    "MissingToken",
    "InvalidToken",
    "InsufficientScope",
    "KeysUnavailable",
    "ConfigError",
]
