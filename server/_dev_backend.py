"""The example downstream API: a small protected API, validated with this very layer.

``python -m server --dev`` mounts it at ``/dev-backend``; the example tool ``downstream_whoami``
calls it through each configured downstream. It trusts the same issuer as the MCP server but
only tokens addressed to *it* (its own audience, ``dev-backend``), and its one route needs its
own permission group, ``backend_read``::

    GET /dev-backend/caller      200 {"subject", "client_id", "actor", "audience", "permissions"}
                                 401 without a token or with one not addressed to dev-backend
                                 403 insufficient_scope without backend_read

A token the MCP server was given (audience ``mcp-dev-server``) is refused here: the server must
obtain a token of the backend's own, as itself (client credentials) or for its caller (exchange).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auth import AuthSettings, BearerAuthMiddleware, IssuerConfig, JWTVerifier, TokenVerifier, VerifiedToken

__all__ = ["BACKEND_CLIENT_ID", "BACKEND_NAME", "BACKEND_PATH", "BACKEND_READ", "backend_app", "backend_settings"]

BACKEND_CLIENT_ID = "dev-backend"
"""The backend application's client id at the issuer: the audience it accepts."""
BACKEND_NAME = "notes-backend"
"""Its IAS application name: ``resource=urn:sap:identity:application:provider:name:notes-backend``."""
BACKEND_PATH = "/dev-backend"
BACKEND_READ = "backend_read"
"""The permission group its route needs."""


def backend_settings(issuer_url: str, base_url: str, **options: Any) -> AuthSettings:
    """The backend's own `AuthSettings`: the issuer it trusts, and only its own audience."""
    return AuthSettings(
        issuers=(IssuerConfig(issuer=issuer_url, audiences=(BACKEND_CLIENT_ID,)),),
        resource_url=base_url.rstrip("/") + BACKEND_PATH,
        resource_name="Example downstream API (dev)",
        **options,
    )


def _actor(token: VerifiedToken) -> str | None:
    act = token.claims.get("act")  # RFC 8693 §4.1: who acts on behalf of the subject
    if isinstance(act, dict) and isinstance(act.get("sub"), str):
        return str(act["sub"])
    return None


async def _caller(request: Request) -> JSONResponse:
    token: VerifiedToken = request.state.token
    if not token.has(BACKEND_READ):
        challenge = f'Bearer error="insufficient_scope", scope="{BACKEND_READ}"'
        return JSONResponse(
            {"error": "insufficient_scope"}, status_code=403, headers={"WWW-Authenticate": challenge}
        )
    return JSONResponse(
        {
            "subject": token.subject,
            "client_id": token.client_id,
            "actor": _actor(token),
            "audience": list(token.audience),
            "permissions": sorted(token.permissions),
        }
    )


def backend_app(settings: AuthSettings, *, verifier: TokenVerifier | None = None) -> Any:
    """The backend as an ASGI app (mount it at `BACKEND_PATH`); every route needs a token for it."""
    app = Starlette(routes=[Route("/caller", _caller, methods=["GET"])])
    return BearerAuthMiddleware(
        app, verifier=verifier or JWTVerifier(settings), settings=settings, protect=["/"], scopes=(BACKEND_READ,)
    )
