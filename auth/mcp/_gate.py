"""Permission gating for MCP servers over streamable HTTP: tools, resources, templates and prompts.

The MCP SDK's hooks can only answer inside HTTP 200, but the MCP specification asks for
HTTP 403 with an ``insufficient_scope`` challenge when a request needs more than the token
grants. `ToolPermissionGate` therefore reads what a request uses before dispatch (the tool or
prompt name, the resource URI: the JSON-RPC body, and the ``Mcp-Name`` header when present)
and replays the body to the SDK. `filter_tools_middleware` hides from ``tools/list``,
``prompts/list``, ``resources/list`` and ``resources/templates/list`` what the caller could not
use. `protect` wires the whole layer into an `MCPServer` app in one call.
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
from .._observe import NO_OBSERVER, Observer
from .._ratelimit import RateLimiter
from .._request import clip, route_path
from .._settings import AuthSettings
from .._token import VerifiedToken
from .._verifier import JWTVerifier, TokenVerifier
from ._ratelimit import RateLimitGate
from ._registry import Registry
from ._tools import _ACTIVE, Kind, Listed, ToolPermissions, Unmarked

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
        observer: told of each refusal (`auth._observe`); none by default.
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
        observer: Observer | None = None,
    ) -> None:
        self.app = app
        self._permissions = permissions
        self._observer = observer or NO_OBSERVER
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
        used = targets(message)
        used += _header_targets(scope, used)
        refused, required, missing = self._permissions.refused(used, token.permissions)
        if refused:
            refused = list(dict.fromkeys(refused))  # Mcp-Name repeats the body's name
            _audit_denial(token, list(dict.fromkeys(used)), missing, round((self._clock() - started) * 1000, 2))
            shown = clip(",".join(n for _, n in refused if n))
            exc = InsufficientScope(required, missing, reason=f"{shown!r} needs {sorted(required)}")
            self._observer.refused([n for _, n in refused], missing)
            exc.description = _refusal_text(refused, missing)  # type: ignore[misc]  # per call, not the class default
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
    """Names in ``Mcp-Name`` headers (decoded; an undecodable one counts as a nameless call)."""
    names = []
    for key, value in scope.get("headers", ()):
        if key == b"mcp-name":
            decoded = _decode_name_header(value.decode("latin-1"))
            names.append(decoded if decoded is not None else "")
    return names


_NAMED: dict[str, tuple[Kind, str]] = {
    "tools/call": ("tool", "name"),
    "prompts/get": ("prompt", "name"),
    "resources/read": ("resource", "uri"),
}
"""Methods whose params name what they use (the SDK's ``NAME_BEARING_METHODS``): kind and params key."""
_REFERENCES: dict[str, Kind] = {"ref/prompt": "prompt", "ref/resource": "reference"}
"""``completion/complete`` reference types: a prompt by name, a template or resource by URI (template)."""
_HEADER_KIND: dict[bytes, Kind] = {method.encode(): kind for method, (kind, _) in _NAMED.items()}
_AUDIT_FIELD: dict[Kind, str] = {"tool": "tool", "prompt": "prompt", "resource": "resource", "template": "resource",
                                 "reference": "resource"}


def targets(message: object) -> list[tuple[Kind, str]]:
    """What a JSON-RPC message (or batch) would use, as ``(kind, name)`` (pure).

    ``tools/call`` and ``prompts/get`` by name, ``resources/read`` by URI, ``completion/complete``
    by its reference (a prompt, or a template or resource); a missing or non-string name gives "".
    """
    items = message if isinstance(message, list) else [message]
    found: list[tuple[Kind, str]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        method = item.get("method")
        params = item.get("params")
        params = params if isinstance(params, dict) else {}
        named = _NAMED.get(method) if isinstance(method, str) else None
        if named is not None:
            value = params.get(named[1])
            found.append((named[0], value if isinstance(value, str) else ""))
        elif method == "completion/complete":
            ref = params.get("ref")
            if isinstance(ref, dict):
                kind = _REFERENCES.get(str(ref.get("type")))
                if kind is not None:
                    value = ref.get("name" if kind == "prompt" else "uri")
                    found.append((kind, value if isinstance(value, str) else ""))
    return found


def _header_targets(scope: dict[str, Any], body: list[tuple[Kind, str]]) -> list[tuple[Kind, str]]:
    """The names in ``Mcp-Name`` headers, as what the body's and the ``Mcp-Method`` header's methods use.

    The SDK dispatches on the body and refuses a header that disagrees with it; the gate does not
    rely on that: each header name is checked as every kind the request could mean (a tool when
    nothing says otherwise).
    """
    names: list[str] = []
    kinds: list[Kind] = []
    for key, value in scope.get("headers", ()):
        if key == b"mcp-name":
            decoded = _decode_name_header(value.decode("latin-1"))
            names.append(decoded if decoded is not None else "")
        elif key == b"mcp-method":
            kind = _HEADER_KIND.get(value)
            if kind is not None and kind not in kinds:
                kinds.append(kind)
    if not names:
        return []
    for kind, _ in body:
        if kind != "reference" and kind not in kinds:
            kinds.append(kind)
    if not kinds:
        kinds.append("tool")
    if len(names) == 1 and len(kinds) == 1:
        return [(kinds[0], names[0])]
    return [(kind, name) for name in names for kind in kinds]


def _audit_denial(token: VerifiedToken, used: list[tuple[Kind, str]], missing: frozenset[str],
                  duration_ms: float) -> None:
    """One audit line per refusal, naming what the request used (``tool``, ``prompt``, ``resource``);
    the names are the caller's, so each field shows a bounded part."""
    grouped: dict[str, dict[str, None]] = {}
    for kind, name in used:
        names = grouped.setdefault(_AUDIT_FIELD[kind], {})
        if name:
            names[name] = None
    fields: dict[str, Any] = {"client_id": clip(token.client_id)}
    fields |= {field: clip(",".join(names)) for field, names in grouped.items()}
    fields |= {"decision": "denied", "missing": sorted(missing), "status": 403, "duration_ms": duration_ms}
    tools_only = all(k == "tool" for k, _ in used)
    audit.info("tool call denied" if tools_only else "request denied", extra={"audit": fields})


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


_LABEL = {"tool": "Tool", "prompt": "Prompt", "resource": "Resource", "template": "Resource template",
          "reference": "Resource"}


def _refusal_text(refused: list[tuple[Kind, str]], missing: frozenset[str]) -> str:
    """Why a request is refused, naming what it uses and the permissions (pure; see `refusal_text`)."""
    if all(kind == "tool" for kind, _ in refused) and missing:
        return refusal_text([name for _, name in refused], missing)
    shown = [f"{_LABEL[kind]} {name}" for kind, name in refused if _SAFE_NAME.fullmatch(name)]
    what = ", ".join(shown) if shown else "This request"
    if not missing:
        return f"{what} is not available to any access token (no permission declared, and the server denies those)"
    perms = [p for p in sorted(missing) if _SAFE_NAME.fullmatch(p)]
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


_LISTS: dict[str, tuple[str, str, Listed]] = {
    "tools/list": ("tools", "name", "tool"),
    "prompts/list": ("prompts", "name", "prompt"),
    "resources/list": ("resources", "uri", "resource"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate", "template"),
}
"""Listing method -> the result's list, each entry's key, and what the entries are."""


def filter_tools_middleware(permissions: ToolPermissions) -> ServerMiddleware[Any]:
    """An MCP ``ServerMiddleware`` that drops from ``tools/list``, ``prompts/list``, ``resources/list``
    and ``resources/templates/list`` what the caller could not use."""

    async def middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        listing = _LISTS.get(ctx.method)
        if listing is None or result is None:
            return result
        field, key, kind = listing
        token = optional_token()
        allowed = permissions.visible(kind, token.permissions if token is not None else frozenset())
        as_dict = result if isinstance(result, dict) else result.model_dump(by_alias=True, exclude_none=True)
        entries = as_dict.get(field)
        if isinstance(entries, list):
            as_dict = dict(as_dict)
            as_dict[field] = [e for e in entries if isinstance(e, dict) and allowed(str(e.get(key, "")))]
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
    stateless: bool = True,
    unmarked: Unmarked | None = None,
    routes: Sequence[BaseRoute] = (),
    max_body: int = 1024 * 1024,
    lifespan: Callable[[], contextlib.AbstractAsyncContextManager[object]] | None = None,
    observer: Observer | None = None,
    rate_limit: RateLimiter | None = None,
) -> ProtectedApp:
    """Wire the auth layer into an `MCPServer`: one call, one ASGI app.

    The result serves the RFC 9728 metadata (path and root form), any extra open ``routes``, and
    the MCP endpoint behind `BearerAuthMiddleware` (401/503) and `ToolPermissionGate` (403); it adds
    `filter_tools_middleware` to ``mcp`` and runs the SDK's session manager in its lifespan.

    The endpoint is the SDK's streamable-HTTP app, stateless with JSON responses (both protocol
    generations; any instance answers any request, no session to carry), unless
    ``stateless=False`` (the SDK's sessions and SSE streams) or ``app=`` says otherwise.

    Tools, resources, resource templates and prompts are gated by the marks `requires` left on
    their functions, read from the server's registry at each request: one registered after this
    call is gated like one registered before. Resources, templates and prompts without `requires`
    follow ``unmarked``: any valid token may use them (``"open"``, the default) or none may
    (``"deny"``); ``scopes_supported`` and the 401 challenge name every permission in use.

    The endpoint app itself fails closed: whatever reaches it (any path it serves) without a
    verified principal gets the 401 challenge. Mounted under a prefix (a Starlette ``Mount`` or
    uvicorn's ``root_path``), every layer decides on the path the router routes on, so
    ``path="/mcp"`` guards ``/notes/mcp``; ``settings.resource_url`` is then the public URL
    (``https://host/notes/mcp``), and the outer app serves `ProtectedApp.metadata_routes` at the
    host root and runs `ProtectedApp.lifespan` (``docs/mounting.md``).

    Args:
        mcp: the server.
        settings: the auth settings (issuers, resource URL, aliases, implication rules).
        permissions: defaults to `ToolPermissions.from_server` with the settings' aliases and rules;
            a table built from a mapping is bound to ``mcp`` (its entries add to the marks).
        verifier: defaults to a `JWTVerifier` over ``settings``, closed when the app shuts down.
        app: the MCP endpoint app; defaults to ``mcp.streamable_http_app(streamable_http_path=path,
            stateless_http=stateless, json_response=stateless, max_request_body_size=max_body)``.
        path: the MCP endpoint's path.
        stateless: serve the SDK's stateless JSON app (the default), or its stateful one (False).
        unmarked: the policy for resources, templates and prompts without `requires`, ``"open"``
            or ``"deny"``; defaults to the table's (``"open"`` for the default table).
        routes: open routes served beside the endpoint (health checks, a dev issuer).
        max_body: request body cap of the gate in bytes (413 beyond it).
        lifespan: an async context the app's lifespan enters around the SDK's session manager
            (open a database, say).
        observer: told of authentications, key fetches, token-cache use, refusals and rate-limit refusals
            (`auth._observe`); passed to the verifier only when this call builds it.
        rate_limit: per-client read and write limits, checked after the 403 gate (429 with
            ``Retry-After``; `RateLimitGate`); None or a limiter with no limit adds nothing.

    Raises:
        ValueError: ``unmarked`` differs from the given table's policy, or the table belongs to
            another server.
    """
    if permissions is None:
        permissions = ToolPermissions.from_server(
            mcp, aliases=settings.permission_aliases, implies=settings.implies, unmarked=unmarked or "open"
        )
    else:
        if unmarked is not None and unmarked != permissions.unmarked:
            raise ValueError(f"unmarked={unmarked!r} differs from the table's {permissions.unmarked!r}: set it on the "
                             "table (ToolPermissions.from_server(mcp, unmarked=...))")
        permissions = permissions.bound_to(mcp)
    table = permissions
    mcp.middleware.append(filter_tools_middleware(table))
    endpoint = app if app is not None else cast(ASGIApp, mcp.streamable_http_app(
        streamable_http_path=path, stateless_http=stateless, json_response=stateless,
        max_request_body_size=max_body,
    ))
    owned = verifier is None
    token_verifier: TokenVerifier = verifier if verifier is not None else JWTVerifier(settings, observer=observer)

    def scopes() -> list[str]:  # read at each use: the registry may grow after this call
        return sorted(table.all_permissions())

    closed: ASGIApp = RequireToken(endpoint, settings=settings, scopes=scopes)  # fail closed, whatever is in front
    if rate_limit is not None and rate_limit.enabled:
        closed = RateLimitGate(closed, limiter=rate_limit, read_only=Registry(mcp).read_only, observer=observer)
    gated = ToolPermissionGate(closed, settings=settings, permissions=table, protect=(path,), max_body=max_body,
                               observer=observer)
    guarded = BearerAuthMiddleware(gated, verifier=token_verifier, settings=settings, protect=[path], scopes=scopes,
                                   observer=observer)

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
