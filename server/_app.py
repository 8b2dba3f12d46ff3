"""Assemble the product: the MCP SDK's streamable-HTTP app behind the auth layer.

Request path, outermost first::

    CorrelationLayer       the request's id (X-Request-Id) on every log line; with tracing on,
                           TracingLayer: also the HTTP server span of the MCP endpoint
    HostOriginGuard        421 foreign Host, 403 foreign Origin
    auth.mcp.protect(...): the MCP path goes straight on; every other path to Starlette routes:
                           /health (liveness), /ready (the store answers), RFC 9728 metadata, the dev issuer
    BearerAuthMiddleware   401/503 challenges; binds the principal
    ToolPermissionGate     403 insufficient_scope before a tool is dispatched
    RateLimitGate          429 + Retry-After over the caller's read or write limit (only when configured)
    RequireToken           401 for whatever arrives without a verified principal (fail closed)
    MCPEndpoint            one exchange per ASGI call, through the MCP SDK (stateless, JSON
                           responses: any instance can serve any request)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import EmptyResult, SetLevelRequestParams
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from auth import TokenVerifier
from auth._observe import NO_OBSERVER, Observer
from auth.downstream import Downstreams
from auth.mcp import LeaseSource, ToolPermissions, protect
from tools import NotesStore, Readiness, open_store, register

from ._correlation import CorrelationLayer
from ._guard import HostOriginGuard
from ._limits import rate_limiter
from ._logging import OperationRecord, audit_middleware, write_audit
from ._settings import MCP_PATH, ServerSettings
from ._telemetry import quiet_telemetry
from ._transport import MCPEndpoint

if TYPE_CHECKING:
    from ._otel import Telemetry

__all__ = ["create_app", "build_mcp", "ServerApp"]

AuditWrite = Callable[[str, Mapping[str, Any]], None]

log = logging.getLogger("server")

INSTRUCTIONS = (
    "Notes for agents. whoami shows who you are and what you may do; list_notes, search_notes and "
    "get_note read; create_note, update_note and delete_note write."
)


def build_mcp(
    settings: ServerSettings,
    store: NotesStore,
    audit: AuditWrite | None = None,
    record: OperationRecord | None = None,
    downstreams: Downstreams | None = None,
) -> MCPServer:
    """The `MCPServer` with every tool registered (`auth.mcp.protect` adds the per-caller ``tools/list`` filter).

    ``audit`` writes the audit line (`write_audit`, through ``logging``, by default); ``record``,
    if given, is told of every operation (the ``mcp.server.operation.duration`` metric); with
    ``downstreams``, the example onward call is registered too.
    """
    mcp = MCPServer(
        "btp-notes",
        instructions=INSTRUCTIONS,
        log_level="WARNING",  # the SDK's per-request INFO line through rich costs ~40 % throughput
        middleware=[audit_middleware(audit, record=record)],
    )
    quiet_telemetry(mcp)  # the SDK's span, only where it can have an effect
    # Multi-tenant IAS (trusted domains): each (issuer, tenant) of a token sees only its own notes.
    register(mcp, store, multi_tenant=any(issuer.domains for issuer in settings.auth.issuers), downstreams=downstreams)
    # The conformance suite's tools-only scenarios call logging/setLevel (2025-11-25 §logging):
    # accept it; the server sends no log notifications, so there is nothing to filter.
    mcp._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, _accept_log_level)
    return mcp


async def _accept_log_level(_ctx: Any, _params: SetLevelRequestParams) -> EmptyResult:
    return EmptyResult()


def create_app(
    settings: ServerSettings,
    *,
    verifier: TokenVerifier | None = None,
    extra_routes: list[BaseRoute] | None = None,
    customize: Callable[[MCPServer], None] | None = None,
    audit: AuditWrite | None = None,
    telemetry: Telemetry | None = None,
    downstreams: Downstreams | None = None,
    rate_leases: LeaseSource | None = None,
) -> ServerApp:
    """Build the ASGI app for ``settings``.

    Args:
        settings: the one settings object.
        verifier: defaults to a `JWTVerifier` over ``settings.auth`` (closed on shutdown).
        extra_routes: open routes served beside the MCP endpoint (the dev issuer's).
        customize: called with the `MCPServer` after the built-in tools are registered
            (tests and users add their own tools here).
        audit: writes the per-call audit line; `write_audit` (through ``logging``) by default,
            the `AuditWriter` from `configure_logging` when the server owns its stderr.
        telemetry: traces and metrics (`server._otel.open_telemetry` over ``settings.telemetry``);
            none by default, whatever the settings say: the one who builds it starts and stops it
            (``python -m server`` does). A ``verifier`` passed in reports to it only if it was
            built with ``observer=telemetry.observer``.
        downstreams: the APIs tools call onward; by default those ``settings.downstreams`` names
            (none: no onward calls), closed on shutdown. Each call writes an audit line too.
        rate_leases: the rate-limit buckets the worker processes share (made before they fork).
    """
    store = open_store(settings.notes_db, timeout=settings.notes_db_timeout_s)
    observer: Observer = NO_OBSERVER
    record: OperationRecord | None = None
    served: NotesStore = store
    if telemetry is not None:
        observer, record, served = telemetry.observer, telemetry.observer.operation, telemetry.observe_store(store)
    if downstreams is None and settings.downstreams:
        downstreams = Downstreams(settings.downstreams, audit=audit or write_audit, observer=observer)
    mcp = build_mcp(settings, served, audit, record, downstreams)
    if customize is not None:
        customize(mcp)
    # The server owns its permission table, read from the tools as registered (whatever their names).
    permissions = ToolPermissions.from_server(
        mcp, aliases=settings.auth.permission_aliases, implies=settings.auth.implies
    )
    if telemetry is not None:
        telemetry.observer.tools = frozenset(permissions.declared())  # labels: these names, else "other"
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
    endpoint = MCPEndpoint(mcp.session_manager, path=MCP_PATH, fallback=sdk_app, max_body=settings.max_body_bytes)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    readiness = Readiness(store)  # one store ping per second at most, however many probes arrive

    async def ready(_: Request) -> JSONResponse:
        # Readiness, not liveness: a restart does not bring a database back, so /health stays 200.
        if await readiness():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "unavailable", "reason": "notes store unreachable"}, status_code=503)

    @contextlib.asynccontextmanager
    async def store_open() -> AsyncIterator[None]:
        await store.open()
        try:
            log.info("serving %s", settings.auth.resource_url)
            yield
        finally:
            await store.aclose()
            if downstreams is not None:
                await downstreams.aclose()

    app = protect(
        mcp,
        settings.auth,
        permissions,
        verifier=verifier,
        app=endpoint,
        path=MCP_PATH,
        routes=[Route("/health", health, methods=["GET"]), Route("/ready", ready, methods=["GET"]),
                *(extra_routes or [])],
        max_body=settings.max_body_bytes,
        lifespan=store_open,
        observer=observer,
        rate_limit=rate_limiter(settings.rate_limits, store, leases=rate_leases),  # None unless MCP_RATE_LIMIT_*
    )
    guard = HostOriginGuard(app, allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins,
                            exempt=("/health", "/ready"))  # platform probes use the instance address
    outer = telemetry.layer(guard, MCP_PATH) if telemetry is not None else CorrelationLayer(guard)
    return ServerApp(outer, mcp=mcp, store=store, observer=observer, downstreams=downstreams)


class ServerApp:
    """The ASGI app, with handles on the MCP server, the store it serves and the observer (for embedding and tests).

    ``observer`` is what the server reports to (`auth._observe.NO_OBSERVER` with telemetry off);
    a layer added later reports through it too, e.g. ``observer.rate_limited("write")`` per 429.
    """

    def __init__(
        self,
        asgi: Callable[..., Awaitable[None]],
        *,
        mcp: MCPServer,
        store: NotesStore,
        observer: Observer = NO_OBSERVER,
        downstreams: Downstreams | None = None,
    ) -> None:
        self.asgi = asgi
        self.mcp = mcp
        self.store = store
        self.observer = observer
        self.downstreams = downstreams

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        await self.asgi(scope, receive, send)
