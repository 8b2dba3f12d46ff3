"""The MCP endpoint: stateless streamable HTTP with JSON responses, one exchange per ASGI call.

Both protocol generations are answered inside the request's ASGI task through the SDK's
single-exchange driver (``serve_one``), with the same born-ready ``Connection`` the SDK's own
entries build: tool dispatch, input validation, middleware and result shaping stay the SDK's.

- 2025-11-25: in stateless mode the SDK builds a transport, two memory-stream pairs and a
  server task per request, only to carry one JSON-RPC request in and one response out. A plain
  request (POST, JSON content type, accepting JSON, a single JSON-RPC request) skips all that.
- 2026-07-28: the SDK's ``handle_modern_request`` already answers in the task; a request that
  passes every rung of its ladder (one request, no duplicated routing header, the envelope and
  header checks, ``Mcp-Param-*``) is served here with the SDK's own rung functions, on the body
  and JSON the tool gate already read, and its reply serialized once.

Everything else (notifications, responses, batches, bad JSON, wrong headers, any refused rung,
other paths) is handed to the SDK's own entry unchanged, with the body replayed, so every error
answer is exactly the SDK's (``tests/server/test_transport.py`` compares them). Host, Origin
and Content-Type are checked in front (``HostOriginGuard`` and here), once. Two deliberate
differences on the 2025 path: an unexpected exception outside the tools (tool failures are
already ``isError`` results) is answered with the SDK's modern mapping, a generic
``INTERNAL_ERROR`` with the details only in the log, where the SDK's 2025 dispatcher would send
``code 0`` and the exception's text; and a result holding a lone surrogate is sent escaped
(below), where the SDK's 2025 transport fails to serialize it and answers 500.

The body is read once, capped at ``max_body`` (413 beyond it), and parsed once, with the SDK's
parser for its generation: ``pydantic_core.from_json`` for 2025-11-25, ``json.loads`` for
2026-07-28 (they differ on lone surrogates, UTF-16/UTF-32 and BOM-prefixed bodies, nesting
depth; a body the 2025 parser refuses goes to the SDK, which answers 400 without running a
tool). A layer in front that already read it (the tool gate) may leave it in the scope as
``BODY_KEY`` (bytes) and its JSON, parsed the same way, as ``MESSAGE_KEY``; the endpoint then
neither reads nor parses it again. Replies are serialized as the SDK writes them; a lone
surrogate in one (a 2026-era id, a tool's result) is escaped as the SDK's 2026 entry escapes it,
where pydantic's serializer would raise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic_core
from mcp.server._streamable_http_modern import (
    _mcp_param_rejection,
    _SingleExchangeDispatchContext,
    handle_modern_request,
)
from mcp.server.connection import Connection
from mcp.server.runner import ServerRunner, aclose_shielded, modern_error_data
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import DEFAULT_NEGOTIATED_VERSION, JSONRPCError, JSONRPCRequest, JSONRPCResponse, jsonrpc_message_adapter
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, SchemaSerializer, core_schema
from starlette.requests import Request

from auth._request import route_path

__all__ = ["MCPEndpoint", "read_body", "BodyTooLarge", "BODY_KEY", "MESSAGE_KEY"]

log = logging.getLogger("server")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]

BODY_KEY = "mcp.body"
"""Scope key of the request body, for a layer in front that has read it (bytes, within the cap)."""
MESSAGE_KEY = "mcp.message"
"""Scope key of the body's JSON when that layer parsed it, with the SDK's parser for the request's
generation (``pydantic_core.from_json`` for 2025-era, ``json.loads`` for 2026-era); absent if it does not parse."""


class BodyTooLarge(Exception):
    """The request body exceeds the cap."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (declared or received)."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge
    message = await receive()
    body = message.get("body", b"") if message["type"] == "http.request" else b""
    if not message.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge
        return body
    chunks = bytearray(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks += message.get("body", b"")
        if len(chunks) > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            break
    return bytes(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then whatever the server sends next (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replay


class _Headers:
    """Just enough of a Starlette ``Request`` for the SDK's ``check_accept_headers``."""

    __slots__ = ("headers",)

    def __init__(self, accept: str) -> None:
        self.headers = {"accept": accept}


class MCPEndpoint:
    """ASGI app for the MCP path, in front of the SDK's stateless JSON session manager.

    Args:
        manager: the SDK's session manager (``json_response=True, stateless=True``), running.
        path: the MCP endpoint's path; other paths go to ``fallback``.
        fallback: the SDK's own ASGI app (its Starlette routing), for everything unusual.
        max_body: request body cap in bytes.
    """

    def __init__(
        self,
        manager: StreamableHTTPSessionManager,
        *,
        path: str,
        fallback: Callable[[Scope, Receive, Send], Awaitable[None]],
        max_body: int,
    ) -> None:
        if not (manager.stateless and manager.json_response):
            raise ValueError("MCPEndpoint serves stateless JSON responses only")
        self._manager = manager
        self._server = manager.app
        self._path = path
        self._fallback = fallback
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if scope["type"] != "http" or route_path(scope) != self._path or method != "POST":
            if scope["type"] == "http" and method in ("GET", "DELETE"):
                await _method_not_allowed(send)
            else:
                await self._fallback(scope, receive, send)
            return
        body = scope.get(BODY_KEY)
        if body is None:
            try:
                body = await read_body(scope, receive, self._max_body)
            except BodyTooLarge:
                await _reply(send, 413, b'{"error":"request_too_large"}')
                return
        version = content_type = accept = None
        for key, value in scope["headers"]:  # the first of each, as the SDK reads them (Starlette's .get)
            if key == b"mcp-protocol-version":
                version = value.decode("latin-1") if version is None else version
            elif key == b"content-type":
                content_type = value if content_type is None else content_type
            elif key == b"accept":
                accept = value.decode("latin-1") if accept is None else accept
        replay = _replay(body, receive)
        plain = (
            content_type is not None
            and content_type.lower().startswith(b"application/json")
            and check_accept_headers(_Headers(accept or ""))[0]  # type: ignore[arg-type]
        )
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            # 2026-07-28 and unknown versions: one request passing every rung of the SDK's ladder
            # is served here; anything the SDK would refuse or stream goes to its own entry.
            if not (plain and await self._serve_modern(body, scope, replay, send)):
                await handle_modern_request(
                    self._server, self._manager.security_settings, True, self._lifespan_state(), scope, replay, send
                )
            return
        request = None
        if plain:
            request = _single_request(body, scope.get(MESSAGE_KEY, _UNPARSED))
        if request is None:
            await self._manager.handle_request(scope, replay, send)  # the SDK answers as it always does
            return
        await self._serve(request, version or DEFAULT_NEGOTIATED_VERSION, scope, replay, send)

    async def _serve(self, req: JSONRPCRequest, version: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one 2025-era request as the SDK's stateless transport would, without the transport."""
        request = Request(scope, receive)
        dctx = _SingleExchangeDispatchContext(  # no sink: JSON responses carry no notifications
            transport=TransportContext(kind="streamable-http", can_send_request=False),
            request_id=req.id,
            message_metadata=ServerMessageMetadata(request_context=request, can_send_request=False),
        )
        connection = Connection.from_envelope(version, None, None)
        try:
            result = await _serve_one(
                self._server, dctx, req.method, req.params, connection=connection,
                lifespan_state=self._lifespan_state(),
            )
            message: JSONRPCResponse | JSONRPCError = JSONRPCResponse(jsonrpc="2.0", id=req.id, result=result)
        except Exception as exc:  # the SDK's mapping; an unexpected error is logged, its text not sent
            message = JSONRPCError(jsonrpc="2.0", id=req.id, error=modern_error_data(exc))
        await _reply(send, 200, _json(message, exclude_unset=True))

    async def _serve_modern(self, body: bytes, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve a 2026-07-28 request as ``handle_modern_request`` does in JSON mode; False to leave it to the SDK.

        The same rungs in the same order, with the SDK's own functions: one JSON-RPC request
        (not a notification, batch or ``subscriptions/listen``), no duplicated routing header,
        the envelope and header ladder, the ``Mcp-Param-*`` check. The first rung that fails
        returns False before anything is sent, and the SDK's entry then answers exactly as it
        always does. Host, Origin and Content-Type were checked in front (``HostOriginGuard``,
        the caller); the reply is serialized once, straight from the result dict.
        """
        decoded = scope.get(MESSAGE_KEY, _UNPARSED)
        if decoded is _UNPARSED:
            try:
                decoded = json.loads(body)
            except (ValueError, RecursionError):
                return False
        if not isinstance(decoded, dict) or "id" not in decoded:
            return False
        try:
            req = JSONRPCRequest.model_validate(decoded)
        except ValidationError:
            return False
        if req.method == "subscriptions/listen":
            return False
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        if find_duplicated_routing_header(pairs) is not None:
            return False
        # The first value of each header, as Starlette's mapping gives it (routing headers are single now).
        verdict = classify_inbound_request(decoded, headers=dict(reversed(pairs)))
        if isinstance(verdict, InboundLadderRejection):
            return False
        request = Request(scope, receive)
        headers = request.headers
        state = self._lifespan_state()
        if await _mcp_param_rejection(self._server, request, req, verdict, state) is not None:
            return False
        connection = Connection.from_envelope(verdict.protocol_version, verdict.client_info,
                                              verdict.client_capabilities)
        dctx = _SingleExchangeDispatchContext(
            transport=TransportContext(kind="streamable-http", can_send_request=False, headers=headers),
            request_id=req.id,
            message_metadata=ServerMessageMetadata(request_context=request),
            progress_token=progress_token_from_params(req.params),
        )
        try:
            result = await _serve_one(self._server, dctx, req.method, req.params, connection=connection,
                                     lifespan_state=state)
        except Exception as exc:  # the SDK's mapping and HTTP status table
            error = modern_error_data(exc)
            reply = JSONRPCError(jsonrpc="2.0", id=req.id, error=error)
            await _reply(send, ERROR_CODE_HTTP_STATUS.get(error.code, 200), _json(reply, exclude_none=True))
            return True
        try:
            payload = _to_json({"jsonrpc": "2.0", "id": req.id, "result": result})
        except PydanticSerializationError:  # a lone surrogate: escaped, as the SDK's json.dumps does
            payload = _escaped(JSONRPCResponse(jsonrpc="2.0", id=req.id, result=result), exclude_none=True)
        await _reply(send, 200, payload)
        return True

    def _lifespan_state(self) -> Any:
        if self._manager._task_group is None:  # noqa: SLF001 (the SDK keeps no public handle)
            raise RuntimeError("the session manager is not running (the app's lifespan did not start)")
        return self._manager._lifespan_state  # noqa: SLF001


_UNPARSED = object()

_to_json = SchemaSerializer(core_schema.any_schema(), core_schema.CoreConfig(ser_json_inf_nan="null")).to_json
"""JSON of plain data, NaN and infinities as null as the SDK's ``model_dump(mode="json")`` writes them (built once)."""


async def _serve_one(
    server: Any, dctx: Any, method: str, params: Any, *, connection: Connection, lifespan_state: Any
) -> dict[str, Any]:
    """The SDK's ``serve_one``, minus its shielded teardown when the exchange registered nothing to undo.

    ``serve_one`` always unwinds the connection's exit stack under a shielded, bounded cancel
    scope; for a stateless request whose handlers registered no cleanup that costs more than a
    tool call's validation. A registered callback still gets exactly the SDK's teardown.
    """
    runner = ServerRunner(server, connection, lifespan_state)
    try:
        return await runner.on_request(dctx, method, params)
    finally:
        if getattr(connection.exit_stack, "_exit_callbacks", True):  # a non-empty deque, or unknown
            await aclose_shielded(connection)


def _single_request(body: bytes, parsed: object = _UNPARSED) -> JSONRPCRequest | None:
    """The body as one JSON-RPC request, or None for anything else (left to the SDK to answer)."""
    try:
        decoded = pydantic_core.from_json(body) if parsed is _UNPARSED else parsed
        message = jsonrpc_message_adapter.validate_python(decoded, by_name=False)
    except (ValueError, ValidationError, RecursionError):
        return None
    return message if isinstance(message, JSONRPCRequest) else None


def _json(message: JSONRPCResponse | JSONRPCError, **options: bool) -> bytes:
    """``message`` serialized as the SDK serializes it (``options``: its ``exclude_*`` flags).

    pydantic's serializer refuses a str that is not valid Unicode; a lone surrogate (a 2026-era
    body may carry one in its id, a tool may return one) is escaped instead, never a 500.
    """
    try:
        return message.model_dump_json(by_alias=True, **options).encode()
    except PydanticSerializationError:
        return _escaped(message, **options)


def _escaped(message: JSONRPCResponse | JSONRPCError, **options: bool) -> bytes:
    """``message`` as the SDK's 2026 entry writes it: ``json.dumps`` of its JSON-mode dump (ASCII, escaped)."""
    return json.dumps(message.model_dump(mode="json", by_alias=True, **options), separators=(",", ":")).encode()


async def _reply(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _method_not_allowed(send: Send) -> None:
    """GET and DELETE get 405: stateless serving has no stream to resume and no session to end.

    The transport specification allows 405 for both, and clients then stop reconnecting (the
    SDK's GET stream in stateless mode is dropped at once, which sends mcp-remote into a loop).
    """
    body = b'{"error":"method_not_allowed"}'
    await send({"type": "http.response.start", "status": 405, "headers": [
        (b"allow", b"POST"), *_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
