"""The SDK's OpenTelemetry span is skipped only where it could have no effect (server/_telemetry.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from opentelemetry.trace import NoOpTracer, get_current_span

from auth.mcp import requires
from server._telemetry import QuietTelemetry

from .conftest import ENVELOPE, LEGACY_HEADERS, DevServer, dev_server, modern_headers, tool_call

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class _Spy:
    """Stands in for the SDK's middleware and for the rest of the chain, recording which ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def inner(self, ctx: Any, call_next: Any) -> Any:
        self.ran.append("span")
        return await call_next(ctx)

    async def next(self, ctx: Any) -> str:
        self.ran.append("handler")
        return "result"


class _Ctx:
    def __init__(self, meta: object) -> None:
        self.meta = meta


class _ProxyLike:
    """A tracer whose ``_tracer`` is what a span would come from, as on the API's ProxyTracer."""

    def __init__(self, real: object) -> None:
        self._tracer = real


def _run(tracer: object, meta: object) -> list[str]:
    spy = _Spy()
    assert asyncio.run(QuietTelemetry(spy.inner, tracer)(_Ctx(meta), spy.next)) == "result"
    return spy.ran


def test_no_tracer_and_no_trace_context_skips_the_span() -> None:
    assert _run(_ProxyLike(NoOpTracer()), None) == ["handler"]
    assert _run(_ProxyLike(NoOpTracer()), {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}) == ["handler"]


@pytest.mark.parametrize("field", ["traceparent", "tracestate", "baggage"])
def test_trace_context_in_meta_keeps_the_span(field: str) -> None:
    assert _run(_ProxyLike(NoOpTracer()), {field: "x"}) == ["span", "handler"]


def test_configured_tracer_keeps_the_span() -> None:
    assert _run(_ProxyLike(object()), None) == ["span", "handler"]


def test_unknown_tracer_shape_keeps_the_span() -> None:
    assert _run(object(), None) == ["span", "handler"]  # no ``_tracer``: never guess that tracing is off


def test_meta_that_is_not_a_mapping_keeps_the_span() -> None:
    assert _run(_ProxyLike(NoOpTracer()), ["traceparent"]) == ["span", "handler"]


def test_the_server_wraps_the_sdks_telemetry_middleware(tmp_path: Path) -> None:
    from mcp.server._otel import OpenTelemetryMiddleware

    with traced_server(tmp_path) as srv:
        chain = srv.app.mcp.middleware
        assert not any(isinstance(m, OpenTelemetryMiddleware) for m in chain)
        (quiet,) = [m for m in chain if isinstance(m, QuietTelemetry)]
        assert isinstance(quiet._inner, OpenTelemetryMiddleware)


def _add_trace_tool(mcp: MCPServer) -> None:
    @mcp.tool()
    @requires("api_read_access")
    async def trace_id() -> dict[str, str]:
        """The trace id current while this tool runs (zeros without one)."""
        return {"trace_id": format(get_current_span().get_span_context().trace_id, "032x")}


def traced_server(tmp_path: Path) -> Any:
    return dev_server(tmp_path / "notes.db", customize=_add_trace_tool)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with traced_server(tmp_path_factory.mktemp("telemetry")) as server:
        yield server


@pytest.mark.parametrize("modern", [False, True])
def test_incoming_trace_context_still_reaches_the_tool(srv: DevServer, modern: bool) -> None:
    body = tool_call("trace_id", {}, modern=modern)
    body["params"]["_meta"] = {**(ENVELOPE if modern else {}), "traceparent": TRACEPARENT}
    response = srv.rpc(srv.token("dev-read"), body, modern_headers("trace_id") if modern else LEGACY_HEADERS)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["structuredContent"] == {"trace_id": TRACE_ID}


def test_call_without_trace_context_runs_in_no_trace(srv: DevServer) -> None:
    response = srv.rpc(srv.token("dev-read"), tool_call("trace_id", {}, modern=True), modern_headers("trace_id"))
    assert response.status_code == 200, response.text
    assert response.json()["result"]["structuredContent"] == {"trace_id": "0" * 32}
