"""Assemble the product: the MCP SDK's streamable-HTTP app behind the auth layer.

Request path, outermost first::

    HostOriginGuard        421 foreign Host, 403 foreign Origin
    _Dispatch              the MCP path goes straight on; every other path to Starlette routes:
                           /health, RFC 9728 metadata, the dev issuer (dev mode only)
    BearerAuthMiddleware   401/503 challenges; binds the principal
    ToolPermissionGate     403 insufficient_scope before a tool is dispatched
    MCPEndpoint            one exchange per ASGI call, through the MCP SDK (stateless, JSON
                           responses: any instance can serve any request)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from auth import (
    REGISTRY,
    BearerAuthMiddleware,
    JWTVerifier,
    PermissionRegistry,
    TokenVerifier,
    ToolPermissionGate,
    filter_tools_middleware,
    metadata_routes,
    set_permission_aliases,
)
from tools import NotesStore, register

from ._guard import HostOriginGuard
from ._logging import audit_middleware
from ._settings import MCP_PATH, ServerSettings
from ._transport import MCPEndpoint

__all__ = ["create_app", "build_mcp", "ServerApp"]

log = logging.getLogger("server")

INSTRUCTIONS = (
    "Notes for agents. whoami shows who you are and what you may do; list_notes, search_notes and "
    "get_note read; create_note, update_note and delete_note write."
)


def build_mcp(settings: ServerSettings, store: NotesStore, registry: PermissionRegistry = REGISTRY) -> MCPServer:
    """The `MCPServer` with every tool registered and ``tools/list`` filtered per caller."""
    mcp = MCPServer(
        "btp-notes",
        instructions=INSTRUCTIONS,
        log_level="WARNING",  # the SDK's per-request INFO line through rich costs ~40 % throughput
        middleware=[audit_middleware(), filter_tools_middleware(settings.auth, registry)],
    )
    register(mcp, store)
    return mcp


def create_app(
    settings: ServerSettings,
    *,
    verifier: TokenVerifier | None = None,
    extra_routes: list[BaseRoute] | None = None,
    registry: PermissionRegistry = REGISTRY,
    customize: Callable[[MCPServer], None] | None = None,
) -> ServerApp:
    """Build the ASGI app for ``settings``.

    Args:
        settings: the one settings object.
        verifier: defaults to a `JWTVerifier` over ``settings.auth`` (closed on shutdown).
        extra_routes: open routes served beside the MCP endpoint (the dev issuer's).
        registry: where tools declare their permissions.
        customize: called with the `MCPServer` after the built-in tools are registered
            (tests and users add their own tools here).
    """
    set_permission_aliases(settings.auth.permission_aliases)
    store = NotesStore(settings.notes_db)
    mcp = build_mcp(settings, store, registry)
    if customize is not None:
        customize(mcp)
    own_verifier = verifier is None
    token_verifier: TokenVerifier = verifier if verifier is not None else JWTVerifier(settings.auth)
    sdk_app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=True,  # SSE costs ~40 % throughput and buys nothing for request/response tools
        stateless_http=True,  # no session affinity needed behind the Cloud Foundry router
        max_request_body_size=settings.max_body_bytes,
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=list(settings.allowed_hosts) or ["*"],
            allowed_origins=list(settings.allowed_origins),
        ),
    )
    scopes = sorted(registry.all_permissions(settings.auth.permission_aliases))
    endpoint = MCPEndpoint(mcp.session_manager, path=MCP_PATH, fallback=sdk_app, max_body=settings.max_body_bytes)
    gated = ToolPermissionGate(endpoint, settings=settings.auth, registry=registry, max_body=settings.max_body_bytes)
    protected = BearerAuthMiddleware(
        gated, verifier=token_verifier, settings=settings.auth, protect=[MCP_PATH], scopes=scopes
    )

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with mcp.session_manager.run():
            log.info("serving %s", settings.auth.resource_url)
            try:
                yield
            finally:
                if own_verifier and isinstance(token_verifier, JWTVerifier):
                    await token_verifier.aclose()

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        *metadata_routes(settings.auth, scopes),
        *(extra_routes or []),
        Mount("/", app=protected),  # /mcp/... and unknown paths: as the MCP endpoint's neighbours
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    dispatch = _Dispatch(MCP_PATH, protected, app)
    guard = HostOriginGuard(dispatch, allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins)
    return ServerApp(guard, mcp=mcp, store=store)


class _Dispatch:
    """Send the MCP path straight to its stack, everything else (and the lifespan) through Starlette.

    Starlette's router tries each route's pattern in turn; the one path that carries the load
    needs none of that.
    """

    def __init__(self, path: str, mcp_app: Callable[..., Awaitable[None]], other: Callable[..., Awaitable[None]]):
        self._path = path
        self._mcp_app = mcp_app
        self._other = other

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http" and scope["path"] == self._path:
            await self._mcp_app(scope, receive, send)
        else:
            await self._other(scope, receive, send)


class ServerApp:
    """The ASGI app, with handles on the MCP server and the store it serves (for embedding and tests)."""

    def __init__(self, asgi: Callable[..., Awaitable[None]], *, mcp: MCPServer, store: NotesStore) -> None:
        self.asgi = asgi
        self.mcp = mcp
        self.store = store

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        await self.asgi(scope, receive, send)
