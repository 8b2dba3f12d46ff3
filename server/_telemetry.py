"""The SDK's OpenTelemetry middleware, skipped for a request where its span could have no effect.

Every ``MCPServer`` wraps each request in an OpenTelemetry span (``mcp.server._otel``). With no
tracer provider configured, the span comes from the API's no-op tracer: nothing is recorded,
and unless the request's ``_meta`` carries trace context (``traceparent``, ``baggage``, ...)
it is just the span already current. Building it still costs about a tenth of a tool call.
`QuietTelemetry` asks the SDK's own tracer which tracer a span would come from, and when that
is the no-op tracer and the request carries none of the propagator's fields it calls the next
handler directly; otherwise the SDK's middleware runs exactly as before.

A malformed trace context is ignored, never an error: the SDK's extraction raises on a
propagator field that is not a string (``"baggage": 5`` gives ``INTERNAL_ERROR`` and a traceback
per request), and the W3C baggage propagator logs a too-long value whole. Such fields (anything
but an ASCII string of at most 8192 characters: W3C trace headers are ASCII, and 8192 bytes is
the baggage limit) are dropped from the carrier the SDK's middleware extracts from; the handler
still sees the request's own ``_meta``.
Should the middleware fail anyway before the handler runs (another propagator), the request is
served without its span. None of this runs while tracing is off and ``_meta`` has no trace fields.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.mcpserver import MCPServer
from mcp.shared import _otel as sdk_otel
from opentelemetry import propagate
from opentelemetry.trace import NoOpTracer

__all__ = ["QuietTelemetry", "quiet_telemetry"]

log = logging.getLogger("server")

MAX_FIELD = 8192
"""Longest propagator field kept (the W3C baggage limit in bytes; fields are ASCII, so characters)."""


class QuietTelemetry:
    """Wraps the SDK's ``OpenTelemetryMiddleware``; passes straight through while tracing is off."""

    def __init__(self, inner: Any, tracer: Any = None) -> None:
        self._inner = inner
        self._tracer = tracer if tracer is not None else sdk_otel._tracer  # noqa: SLF001 (the SDK's own tracer)
        self._propagator: object = None  # the global propagator whose fields are in _fields
        self._fields: frozenset[str] = frozenset()

    def _carrier_fields(self) -> frozenset[str]:
        # A composite propagator builds its field set on every read; read it again only when the
        # global propagator was replaced.
        propagator = propagate.get_global_textmap()
        if propagator is not self._propagator:
            self._fields, self._propagator = frozenset(propagator.fields), propagator
        return self._fields

    def _tracing(self, meta: object) -> bool:
        # The SDK's tracer is an API ProxyTracer: ``_tracer`` is what it would start a span with.
        if not isinstance(getattr(self._tracer, "_tracer", None), NoOpTracer):
            return True  # a provider is configured (or the tracer is not what we know): trace
        if meta is None:
            return False
        if not isinstance(meta, Mapping):
            return True
        return any(field in meta for field in self._carrier_fields())

    def _malformed(self, meta: Mapping[str, Any]) -> list[str]:
        """The propagator fields of ``meta`` the SDK's extraction must not see."""
        bad = []
        for field in self._carrier_fields():
            value = meta.get(field)
            if value is not None and not (isinstance(value, str) and len(value) <= MAX_FIELD and value.isascii()):
                bad.append(field)
        return bad

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        meta = ctx.meta
        if not self._tracing(meta):
            return await call_next(ctx)
        traced = ctx
        if isinstance(meta, Mapping) and (bad := self._malformed(meta)):
            traced = copy.copy(ctx)  # the span's view: the handler gets ``ctx`` itself
            traced.meta = {k: v for k, v in meta.items() if k not in bad}
        reached = False

        async def handler(_: Any) -> Any:
            nonlocal reached
            reached = True
            return await call_next(ctx)

        try:
            return await self._inner(traced, handler)
        except Exception as exc:
            if reached:
                raise  # the handler's own failure, as the SDK maps it
            log.debug("trace context ignored: %s before the handler ran", type(exc).__name__)
            return await call_next(ctx)


def quiet_telemetry(mcp: MCPServer) -> None:
    """Replace the SDK's OpenTelemetry middleware in ``mcp`` by `QuietTelemetry` around it."""
    chain = mcp.middleware
    for i, middleware in enumerate(chain):
        if isinstance(middleware, OpenTelemetryMiddleware):
            chain[i] = QuietTelemetry(middleware)
