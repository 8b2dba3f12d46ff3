"""One id per request, on every log line of that request and in the response's ``X-Request-Id``.

The id comes from the request when it carries a usable one, in this order: the trace id of a
W3C ``traceparent`` header (so log lines and traces share it), ``X-Request-Id``, Cloud Foundry's
``X-Vcap-Request-Id``; otherwise it is made up (32 hex digits, like a trace id). A supplied id
is used only when it is short and made of safe characters (`request_id_of`), so it can neither
break a log line nor grow one; anything else is replaced, never echoed.

`CorrelationLayer` (the outermost ASGI layer) holds the id in a context variable for the
request's task; `RequestIdFilter`, installed on the log handler, puts it on every record as
``request_id`` (the auth layer's denials, the audit line, the store's warnings, the SDK's
errors), so no package needs to know about it. A client can choose its own id: it correlates,
it does not authenticate.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any

__all__ = ["CorrelationLayer", "RequestIdFilter", "current_request_id", "request_id_of", "new_request_id",
           "REQUEST_ID_HEADER"]

REQUEST_ID_HEADER = b"x-request-id"

_REQUEST_ID: ContextVar[str | None] = ContextVar("server_request_id", default=None)

_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_SUPPLIED = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ZERO_TRACE = b"0" * 32

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def current_request_id() -> str | None:
    """The id of the request being served in this context, or None outside one."""
    return _REQUEST_ID.get()


def new_request_id() -> str:
    """A made-up id: 32 random hex digits, like a trace id (and made the way OpenTelemetry makes those)."""
    return f"{random.getrandbits(128):032x}"  # noqa: S311 - an id correlates requests, it guards nothing


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The id a request carries, or None when it carries no usable one (pure).

    A valid ``traceparent``'s trace id first (not the all-zero one), then ``X-Request-Id``, then
    ``X-Vcap-Request-Id``; a supplied id is 1 to 128 characters of ``A-Z a-z 0-9 . _ : -``,
    starting with a letter or digit. The first header of each name counts.
    """
    trace: bytes | None = None
    request: bytes | None = None
    vcap: bytes | None = None
    for key, value in headers:
        if key == b"traceparent":
            trace = value if trace is None else trace
        elif key == b"x-request-id":
            request = value if request is None else request
        elif key == b"x-vcap-request-id":
            vcap = value if vcap is None else vcap
    if trace is not None:
        match = _TRACEPARENT.fullmatch(trace.strip())
        if match is not None and match[1] != _ZERO_TRACE and not trace.startswith(b"ff"):
            return match[1].decode()
    for value in (request, vcap):
        if value is not None and _SUPPLIED.fullmatch(value):
            return value.decode()
    return None


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the current request's id, or None) to every record it sees; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _REQUEST_ID.get()
        return True


class CorrelationLayer:
    """The outermost ASGI layer: binds the request's id for its task and returns it as ``X-Request-Id``.

    Args:
        app: the app to serve.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope["headers"]) or new_request_id()
        handle = _REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, _with_header(send, rid))
        finally:
            _REQUEST_ID.reset(handle)

    @staticmethod
    def bind(rid: str) -> Any:
        """Make ``rid`` the current request's id (for a layer that finds it elsewhere); returns the reset handle."""
        return _REQUEST_ID.set(rid)

    @staticmethod
    def unbind(handle: Any) -> None:
        """Undo `bind`."""
        _REQUEST_ID.reset(handle)


def _with_header(send: Send, rid: str) -> Send:
    """``send`` adding ``X-Request-Id: rid`` to the response's headers."""
    header = (REQUEST_ID_HEADER, rid.encode())

    async def send_with_id(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return send_with_id
