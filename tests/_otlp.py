"""A real OTLP/HTTP receiver for tests: ``POST /v1/traces`` and ``POST /v1/metrics`` with protobuf bodies.

    with otlp_receiver() as receiver:                      # on 127.0.0.1, a free port
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        ...
        receiver.spans()                                    # every span received so far, decoded
        receiver.metrics()                                  # name -> [(attributes, point)], latest export

Decoded with ``opentelemetry-proto`` (what the exporters encode with), served by uvicorn on
127.0.0.1 like every test server (`tests._live.running_server`).
"""

from __future__ import annotations

import contextlib
import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests._live import running_server

__all__ = ["otlp_receiver", "Receiver", "Span", "value_of"]


def value_of(value: AnyValue) -> Any:
    """The Python value of an OTLP ``AnyValue``."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in items}


@dataclass(frozen=True)
class Span:
    """One received span, decoded."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any]


@dataclass
class Receiver:
    url: str = ""
    trace_requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    metric_requests: list[ExportMetricsServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[Span]:
        with self.lock:
            requests = list(self.trace_requests)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for s in scope_spans.spans:
                        found.append(Span(s.name, s.kind, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                          _attributes(s.attributes), s.status.code, resource))
        return found

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Each metric's data points in the latest export that has it (cumulative: the totals)."""
        with self.lock:
            requests = list(self.metric_requests)
        latest: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for request in requests:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        points = getattr(metric, kind).data_points
                        latest[metric.name] = [(_attributes(p.attributes), p) for p in points]
        return latest


@contextlib.contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    """Serve the receiver on 127.0.0.1 for the block."""
    receiver = Receiver()

    async def body(request: Request) -> bytes:
        raw = await request.body()
        return gzip.decompress(raw) if request.headers.get("content-encoding") == "gzip" else raw

    async def traces(request: Request) -> Response:
        message = ExportTraceServiceRequest.FromString(await body(request))
        with receiver.lock:
            receiver.trace_requests.append(message)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    async def metrics(request: Request) -> Response:
        message = ExportMetricsServiceRequest.FromString(await body(request))
        with receiver.lock:
            receiver.metric_requests.append(message)
        return Response(ExportMetricsServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]),
                            Route("/v1/metrics", metrics, methods=["POST"])])
    with running_server(app) as url:
        receiver.url = url
        yield receiver
