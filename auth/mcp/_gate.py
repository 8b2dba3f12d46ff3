"""Per-tool permission gating for MCP servers over streamable HTTP.

The MCP SDK's hooks can only answer inside HTTP 200, but the MCP specification asks for
HTTP 403 with an ``insufficient_scope`` challenge when a call needs more than the token
grants. `ToolPermissionGate` therefore reads the tool name before dispatch (the JSON-RPC
body, checked against the ``Mcp-Name`` header when present) and replays the body to the
SDK. `filter_tools_middleware` hides from ``tools/list`` what the caller could not call.
`protect` wires the whole layer into an `MCPServer` app in one call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import pydantic_core
from mcp.shared.inbound import decode_header_value
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp as StarletteApp

from .._context import optional_token
from .._errors import InsufficientScope
from .._metadata import metadata_routes, resource_metadata_url
from .._middleware import SCOPE_KEY, BearerAuthMiddleware, RequireToken, send_auth_error
from .._request import clip, route_path
from .._settings import AuthSettings
from .._token import VerifiedToken
from .._verifier import JWTVerifier, TokenVerifier
from ._tools import _ACTIVE, ToolPermissions

if TYPE_CHECKING:
    from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
    from mcp.server.mcpserver import MCPServer

__all__ = [
    "ProtectedApp",
    "ToolPermissionGate",
    "filter_tools_middleware",
    "protect",
    "tool_names",
    "BodyTooLarge",
    "FORBIDDEN",
]

audit = logging.getLogger("audit")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body exceeds the configured cap (answered 413)."""


def tool_names(message: object) -> list[str]:
    """Names of the tools a JSON-RPC message (or batch) calls; a call without a name gives "" (pure)."""
    items = message if isinstance(message, list) else [message]
    names = []
    for item in items:
        if isinstance(item, dict) and item.get("method") == "tools/call":
            params = item.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            names.append(name if isinstance(name, str) else "")
    return names


def _decode_name_header(value: str) -> str | None:
    # The SDK wraps unsafe names as =?base64?...?=; compare the decoded form with the body.
    return decode_header_value(value)


class ToolPermissionGate:
    """Answer ``tools/call`` with HTTP 403 before dispatch when the token lacks the tool's permissions.

    Runs inside `BearerAuthMiddleware` (it reads the verified token from the ASGI scope).

    Args:
        app: the MCP streamable-HTTP app.
        settings: the resource URL (for ``resource_metadata``).
        permissions: the server's table (tool -> permissions, aliases, implication rules);
            also made the table the call-time check of `requires` reads during the request.
        protect: path prefixes of MCP endpoints, as the app's router sees them (without ``root_path``).
        max_body: request body cap in bytes (413 beyond it).
        clock: for the audit line's duration.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: AuthSettings,
        permissions: ToolPermissions,
        protect: tuple[str, ...] = ("/mcp",),
        max_body: int = 1024 * 1024,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self._permissions = permissions
        self._protect = tuple(p.rstrip("/") for p in protect)
        self._metadata_url = resource_metadata_url(settings.resource_url)
        self._max_body = max_body
        self._clock = clock

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        handle = _ACTIVE.set(self._permissions)  # what `requires` checks at call time, for this request
        try:
            await self._gate(scope, receive, send)
        finally:
            _ACTIVE.reset(handle)

    def _protected(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self._protect)

    async def _gate(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        token: VerifiedToken | None = scope.get(SCOPE_KEY)
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or token is None
            or not self._protected(route_path(scope))  # the path the endpoint's router routes on
        ):
            await self.app(scope, receive, send)
            return
        started = self._clock()
        try:
            body = await self._read_body(scope, receive)
        except BodyTooLarge:
            await _plain(send, 413, b'{"error":"request_too_large"}')
            return
        message = _parse(body, _modern(scope))
        names = [*_header_names(scope), *tool_names(message)]
        required, missing = self._permissions.missing(names, token.permissions)
        if missing:
            # Mcp-Name repeats the body name; names are the caller's, so the line shows a bounded part.
            tool = clip(",".join(dict.fromkeys(n for n in names if n)))
            audit.info(
                "tool call denied",
                extra={
                    "audit": {
                        "client_id": clip(token.client_id),
                        "tool": tool,
                        "decision": "denied",
                        "missing": sorted(missing),
                        "status": 403,
                        "duration_ms": round((self._clock() - started) * 1000, 2),
                    }
                },
            )
            exc = InsufficientScope(required, missing, reason=f"tool {tool!r} needs {sorted(required)}")
            refused = [n for n in dict.fromkeys(names) if not self._permissions.allows(n, token.permissions)]
            exc.description = refusal_text(refused, missing)  # type: ignore[misc]  # per call, not the class default
            await send_auth_error(send, exc, resource_metadata=self._metadata_url, body=_jsonrpc_denial(message, exc))
            return
        # Hand the body and its JSON on (the server's endpoint reads them from the scope instead of
        # reading and parsing again); the replay serves any app that reads the body itself.
        scope[BODY_KEY] = body
        if message is not None:
            scope[MESSAGE_KEY] = message
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, scope: dict[str, Any], receive: Receive) -> bytes:
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > self._max_body:
                raise BodyTooLarge
        chunks = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks += message.get("body", b"")
            if len(chunks) > self._max_body:
                raise BodyTooLarge
            if not message.get("more_body", False):
                break
        return bytes(chunks)


BODY_KEY = "mcp.body"
"""ASGI scope key under which the gate leaves the request body it read (bytes, within the cap)."""
MESSAGE_KEY = "mcp.message"
"""ASGI scope key of the body's JSON-RPC message, parsed as the SDK parses it for the request's protocol
generation (`_parse`); absent when the body does not parse (or is ``null``)."""

FORBIDDEN = -32003
"""JSON-RPC error code of a refused tool call (server-defined range, JSON-RPC 2.0 §5.1)."""


def _parse(body: bytes, modern: bool) -> object:
    """The JSON-RPC message exactly as the SDK will parse it, or None when the SDK will refuse it (pure).

    The SDK parses a 2025-era body with ``pydantic_core.from_json`` and a 2026-era body with
    ``json.loads``. They disagree: ``json.loads`` takes lone surrogates (``"\\ud800"``, or
    UTF-8-encoded), UTF-16/UTF-32 and BOM-prefixed bodies and deeper nesting, which pydantic_core
    refuses. Reading the tool name with the parser that dispatches it means the name checked is
    always the name that runs, and a body the SDK refuses is never taken for a harmless one.
    """
    if not body:
        return None
    try:
        return json.loads(body) if modern else pydantic_core.from_json(body)
    except (ValueError, RecursionError):  # deep nesting raises RecursionError in json.loads
        return None


_VERSION_HEADER = b"mcp-protocol-version"


def _modern(scope: dict[str, Any]) -> bool:
    """Whether the SDK serves the request as 2026-era: its first ``MCP-Protocol-Version`` is not a
    handshake version (the SDK's own routing rule; no header means 2025-era) (pure)."""
    for key, value in scope.get("headers", ()):
        if key == _VERSION_HEADER:
            return value.decode("latin-1") not in HANDSHAKE_PROTOCOL_VERSIONS
    return False


def _header_names(scope: dict[str, Any]) -> list[str]:
    """Tool names in ``Mcp-Name`` headers (decoded; an undecodable one counts as a nameless call)."""
    names = []
    for key, value in scope.get("headers", ()):
        if key == b"mcp-name":
            decoded = _decode_name_header(value.decode("latin-1"))
            names.append(decoded if decoded is not None else "")
    return names


_SAFE_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


def refusal_text(tools: list[str], missing: frozenset[str]) -> str:
    """Why a tool call is refused, e.g. "Tool create_note needs permission api_write_access, ..." (pure).

    Goes into ``error_description`` (RFC 6750 §3: printable ASCII without ``"`` and ``\\``), so
    names outside a conservative character set are left out rather than escaped.
    """
    shown = [t for t in tools if _SAFE_NAME.fullmatch(t)]
    perms = [p for p in sorted(missing) if _SAFE_NAME.fullmatch(p)]
    what = f"Tool {', '.join(shown)}" if shown else "This tool"
    need = f"permission {' and '.join(perms)}" if perms else "a permission"
    return f"{what} needs {need}, which the access token does not grant"


def _jsonrpc_denial(message: object, exc: InsufficientScope) -> bytes | None:
    """A JSON-RPC error answering the refused request, so MCP clients show why (None for batches).

    The HTTP 403 and its ``WWW-Authenticate`` challenge stay as the MCP specification asks;
    the body only replaces the SDK client's generic "Server returned an error response".
    """
    if not isinstance(message, dict) or "id" not in message:
        return None
    scope = " ".join(sorted(exc.required))
    request_id = message["id"]  # echoed when it is a JSON-RPC id MCP accepts (NaN would make the body invalid JSON)
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id if isinstance(request_id, (str, int)) and not isinstance(request_id, bool) else None,
            "error": {
                "code": FORBIDDEN,
                "message": f"insufficient_scope (HTTP 403): {exc.description}",
                "data": {
                    "error": "insufficient_scope",
                    "scope": scope,
                    "missing": sorted(exc.missing),
                    "status": 403,
                },
            },
        }
    ).encode()


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def filter_tools_middleware(permissions: ToolPermissions) -> ServerMiddleware[Any]:
    """An MCP ``ServerMiddleware`` that drops from ``tools/list`` the tools the caller cannot call."""

    async def middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "tools/list" or result is None:
            return result
        token = optional_token()
        granted = token.permissions if token is not None else frozenset()
        as_dict = result if isinstance(result, dict) else result.model_dump(by_alias=True, exclude_none=True)
        tools = as_dict.get("tools")
        if isinstance(tools, list):
            as_dict = dict(as_dict)
            as_dict["tools"] = [
                t for t in tools if isinstance(t, dict) and permissions.allows(str(t.get("name", "")), granted)
            ]
        return as_dict

    return middleware


def protect(
    mcp: MCPServer,
    settings: AuthSettings,
    permissions: ToolPermissions | None = None,
    *,
    verifier: TokenVerifier | None = None,
    app: ASGIApp | None = None,
    path: str = "/mcp",
    routes: Sequence[BaseRoute] = (),
    max_body: int = 1024 * 1024,
    lifespan: Callable[[], contextlib.AbstractAsyncContextManager[object]] | None = None,
) -> ProtectedApp:
    """Wire the auth layer into an `MCPServer`: one call, one ASGI app.

    The result serves the RFC 9728 metadata (path and root form), any extra open ``routes``, and
    the MCP endpoint behind `BearerAuthMiddleware` (401/503) and `ToolPermissionGate` (403); it adds
    `filter_tools_middleware` to ``mcp`` and runs the SDK's session manager in its lifespan. Call it
    after every tool is registered: the permission table is read from the registered tools once.

    The endpoint app itself fails closed: whatever reaches it (any path it serves) without a
    verified principal gets the 401 challenge. Mounted under a prefix (a Starlette ``Mount`` or
    uvicorn's ``root_path``), every layer decides on the path the router routes on, so
    ``path="/mcp"`` guards ``/notes/mcp``; ``settings.resource_url`` is then the public URL
    (``https://host/notes/mcp``), and the outer app serves `ProtectedApp.metadata_routes` at the
    host root and runs `ProtectedApp.lifespan` (``docs/mounting.md``).

    Args:
        mcp: the server, with its tools registered.
        settings: the auth settings (issuers, resource URL, aliases, implication rules).
        permissions: defaults to `ToolPermissions.from_server` with the settings' aliases and rules.
        verifier: defaults to a `JWTVerifier` over ``settings``, closed when the app shuts down.
        app: the MCP endpoint app; defaults to ``mcp.streamable_http_app(streamable_http_path=path)``.
        path: the MCP endpoint's path.
        routes: open routes served beside the endpoint (health checks, a dev issuer).
        max_body: request body cap of the gate in bytes (413 beyond it).
        lifespan: an async context the app's lifespan enters around the SDK's session manager
            (open a database, say).
    """
    if permissions is None:
        permissions = ToolPermissions.from_server(mcp, aliases=settings.permission_aliases, implies=settings.implies)
    mcp.middleware.append(filter_tools_middleware(permissions))
    endpoint = app if app is not None else cast(ASGIApp, mcp.streamable_http_app(streamable_http_path=path))
    owned = verifier is None
    token_verifier: TokenVerifier = verifier if verifier is not None else JWTVerifier(settings)
    scopes = sorted(permissions.all_permissions())
    closed = RequireToken(endpoint, settings=settings, scopes=scopes)  # fail closed, whatever is in front
    gated = ToolPermissionGate(closed, settings=settings, permissions=permissions, protect=(path,), max_body=max_body)
    guarded = BearerAuthMiddleware(gated, verifier=token_verifier, settings=settings, protect=[path], scopes=scopes)

    @contextlib.asynccontextmanager
    async def app_lifespan(_: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if lifespan is not None:
                await stack.enter_async_context(lifespan())
            await stack.enter_async_context(mcp.session_manager.run())
            try:
                yield
            finally:
                if owned and isinstance(token_verifier, JWTVerifier):
                    await token_verifier.aclose()

    # The metadata at its RFC 9728 paths (right at the host root) and at the endpoint's own path
    # form, which a mounted app serves under its prefix (/notes/.well-known/oauth-protected-resource/mcp).
    documents = metadata_routes(settings, scopes, endpoint_path=path)
    others = Starlette(
        routes=[*documents, *routes, Mount("/", app=cast(StarletteApp, guarded))],
        lifespan=app_lifespan,
    )
    return ProtectedApp(path, guarded, others, metadata=metadata_routes(settings, scopes))


class ProtectedApp:
    """What `protect` returns: the MCP path goes straight to its guarded stack; every other path,
    and the lifespan, through a Starlette router (``.router``).

    The one path that carries the load needs none of the router's pattern matching. Mounted in
    an outer app, the outer app serves ``metadata_routes`` (the RFC 9728 document at the host
    root, where clients look for it) and runs ``lifespan`` (a ``Mount`` does not run it).

    Attributes:
        path: the MCP endpoint's path, as the router sees it (without a mount prefix).
        endpoint: the guarded stack of the endpoint.
        router: the Starlette app serving every other path, and the lifespan.
        metadata_routes: the metadata document's routes for the host root of an outer app.
    """

    def __init__(
        self, path: str, endpoint: ASGIApp, router: Starlette, *, metadata: Sequence[BaseRoute] = ()
    ) -> None:
        self.path = path
        self.endpoint = endpoint
        self.router = router
        self.metadata_routes = list(metadata)
        self._route = cast(ASGIApp, router)  # Starlette types send's message as a MutableMapping

    @property
    def lifespan(self) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
        """The app's lifespan (the SDK's session manager, the verifier), for an outer app's ``lifespan=``."""
        return self.router.router.lifespan_context

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) == self.path:
            await self.endpoint(scope, receive, send)
        else:
            await self._route(scope, receive, send)
