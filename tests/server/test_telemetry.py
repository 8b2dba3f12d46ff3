"""The SDK's OpenTelemetry span is skipped only where it could have no effect (server/_telemetry.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared import _otel as sdk_otel
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracer,
    Span,
    SpanContext,
    TraceFlags,
    Tracer,
    get_current_span,
    use_span,
)

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


class _Recorder:
    """Stands in for the SDK's middleware, recording the ``_meta`` it was given to extract from."""

    def __init__(self) -> None:
        self.extracted: list[object] = []
        self.handled: list[object] = []

    async def inner(self, ctx: Any, call_next: Any) -> Any:
        self.extracted.append(ctx.meta)
        return await call_next(ctx)

    async def next(self, ctx: Any) -> str:
        self.handled.append(ctx.meta)
        return "result"


@pytest.mark.parametrize("value", [5, [1], True, {"k": 1}, 1.5, "k=" + "v" * 8191, "k=\u00e9" * 2000, "k=\ud800"])
def test_a_malformed_propagator_field_is_kept_from_the_extraction_not_from_the_handler(value: object) -> None:
    recorder = _Recorder()
    meta = {"traceparent": TRACEPARENT, "baggage": value, "other": 1}
    assert asyncio.run(QuietTelemetry(recorder.inner, _ProxyLike(NoOpTracer()))(_Ctx(meta), recorder.next)) == "result"
    assert recorder.extracted == [{"traceparent": TRACEPARENT, "other": 1}]
    assert recorder.handled == [meta]


def test_a_well_formed_carrier_is_extracted_as_it_came() -> None:
    recorder = _Recorder()
    meta = {"traceparent": TRACEPARENT, "tracestate": "k=v", "baggage": "k=" + "v" * 8190}
    assert asyncio.run(QuietTelemetry(recorder.inner, _ProxyLike(NoOpTracer()))(_Ctx(meta), recorder.next)) == "result"
    assert recorder.extracted == [meta] and recorder.handled == [meta]


def test_a_middleware_failing_before_the_handler_leaves_the_request_served() -> None:
    async def failing(ctx: Any, call_next: Any) -> Any:
        raise AttributeError("a propagator choked")

    spy = _Spy()
    assert asyncio.run(QuietTelemetry(failing, _ProxyLike(object()))(_Ctx(None), spy.next)) == "result"
    assert spy.ran == ["handler"]


def test_a_handler_failure_is_not_run_again() -> None:
    calls: list[str] = []

    async def handler(ctx: Any) -> Any:
        calls.append("handler")
        raise RuntimeError("the tool failed")

    with pytest.raises(RuntimeError):
        asyncio.run(QuietTelemetry(_Spy().inner, _ProxyLike(object()))(_Ctx(None), handler))
    assert calls == ["handler"]


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


# --- a malformed trace context is ignored, the request served (issue 15, item 8) ----------------------

class _Tracer(Tracer):
    """What a configured tracer provider hands the SDK, built on the API alone (no opentelemetry-sdk here):
    each span gets real ids, a child of the extracted context when there is one."""

    def __init__(self) -> None:
        self.parents: list[int] = []  # the parent trace id of each span started (0: none)

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> Span:
        parent = get_current_span(context).get_span_context()
        self.parents.append(parent.trace_id if parent.is_valid else 0)
        trace_id = parent.trace_id if parent.is_valid else random.getrandbits(128) or 1
        return NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False,
                                            trace_flags=TraceFlags(TraceFlags.SAMPLED)))

    @contextlib.contextmanager  # type: ignore[override]
    def start_as_current_span(self, name: str, context: Any = None, *args: Any, end_on_exit: bool = True,
                              **kwargs: Any) -> Iterator[Span]:
        with use_span(self.start_span(name, context), end_on_exit=end_on_exit) as span:
            yield span


@pytest.fixture(params=["off", "on"])
def tracing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> _Tracer | None:
    """Tracing off (the API's no-op tracer), or on: the SDK's ProxyTracer delegating to a real tracer,
    as it does once ``trace.set_tracer_provider`` was called (undone after the test)."""
    if request.param == "off":
        return None
    tracer = _Tracer()
    monkeypatch.setattr(sdk_otel._tracer, "_real_tracer", tracer)
    return tracer


MALFORMED: dict[str, dict[str, object]] = {
    "baggage_number": {"baggage": 5},
    "baggage_list_of_numbers": {"baggage": [1]},
    "baggage_boolean": {"baggage": True},
    "baggage_object": {"baggage": {"k": 1}},
    "baggage_too_long": {"baggage": "k=" + "v" * 20000},
    "baggage_not_ascii": {"baggage": "k=\u00e9" * 3000},
    "baggage_lone_surrogate": {"baggage": "k=\ud800"},
    "traceparent_number": {"traceparent": 5},
    "traceparent_object": {"traceparent": {"version": "00"}},
    "tracestate_list": {"tracestate": [1]},
    "baggage_number_beside_a_traceparent": {"traceparent": TRACEPARENT, "baggage": 5},
    "tracestate_list_beside_a_traceparent": {"traceparent": TRACEPARENT, "tracestate": [1]},
}


@pytest.mark.parametrize("modern", [False, True])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_trace_context_is_ignored_and_the_tool_runs(
    srv: DevServer, tracing: _Tracer | None, caplog: pytest.LogCaptureFixture, case: str, modern: bool
) -> None:
    token = srv.token("dev-read")
    body = tool_call("trace_id", {}, modern=modern)
    body["params"]["_meta"] = {**(ENVELOPE if modern else {}), **MALFORMED[case]}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        response = srv.rpc(token, body, modern_headers("trace_id") if modern else LEGACY_HEADERS)
    if case == "baggage_lone_surrogate" and not modern:  # the SDK's 2025 parser refuses the body itself
        assert (response.status_code, response.json()["error"]["code"]) == (400, -32700)
        return
    assert response.status_code == 200, response.text
    assert "error" not in response.json(), response.text
    result = response.json()["result"]
    assert result["isError"] is False, result
    trace_id = result["structuredContent"]["trace_id"]
    parented = MALFORMED[case].get("traceparent") == TRACEPARENT
    if parented:
        assert trace_id == TRACE_ID  # the well-formed part of the context still counts
    elif tracing is None:
        assert trace_id == "0" * 32
    else:
        assert trace_id not in ("0" * 32, TRACE_ID)  # a span of its own, with no parent
    if tracing is not None:
        assert tracing.parents == [int(TRACE_ID, 16) if parented else 0]
    assert [r.getMessage()[:200] for r in caplog.records] == []  # no traceback, no warning quoting the value
