"""Traces and metrics by the OpenTelemetry conventions for MCP, when ``OTEL_*`` settings ask for them.

Imported only when telemetry is on (`open_telemetry`): with it off, the server loads no
OpenTelemetry SDK and every hook is the auth layer's no-op `NO_OBSERVER`.

Spans, per MCP request on the endpoint's path::

    POST /mcp                    SERVER  (TracingLayer; parent: the HTTP ``traceparent``, if any)
     ├── auth.verify             INTERNAL outcome and reason category of the token's verification
     │    └── auth.key_fetch     CLIENT   a key-set fetch the verification needed
     └── tools/call create_note  SERVER   the SDK's own span (mcp.server._otel; parent: ``params._meta``
          │                               trace context when present, else the HTTP span)
          └── create notes       CLIENT   the store call (db.system.name, db.operation.name)

A refused call (401, 403, 429) ends at the HTTP span, with ``http.response.status_code`` and
``error.type``. Downstream calls get a CLIENT span through ``Observer.downstream``.

Metrics (`METRICS` lists them with their attributes): ``mcp.server.operation.duration`` and the
auth layer's counters, the store's ``db.client.operation.duration``, rate-limit rejections.
Every attribute value is bounded: methods, tools and protocol versions outside the known sets
become ``other``; reasons and results are fixed sets; an issuer named by a token (multi-tenant)
is ``token-named``. No token, subject, client id or argument value is recorded anywhere (the
audit line in the log has the client id; its ``request_id`` links it to the trace).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricReader,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from auth._observe import DownstreamCall, fetch_result, verification_outcome
from auth._request import route_path

from ._correlation import CorrelationLayer, _with_header, request_id_of
from ._otel_settings import TelemetrySettings

__all__ = ["Telemetry", "OTelObserver", "TracingLayer", "ObservedStore", "open_telemetry", "METRICS"]

log = logging.getLogger("server")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
    "resources/templates/list", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel", "server/discover", "subscriptions/listen", "tasks/get",
    "tasks/list", "tasks/result", "tasks/cancel",
})
VERSIONS = frozenset({*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS})
OTHER = "other"
TOKEN_NAMED = "token-named"  # noqa: S105 - a label, not a credential
MAX_SPAN_NAME = 128

# Seconds; the OpenTelemetry default buckets are made for milliseconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

METRICS: Mapping[str, tuple[str, str, tuple[str, ...]]] = {
    # name: (instrument, unit, attributes)
    "mcp.server.operation.duration": (
        "histogram", "s", ("mcp.method.name", "gen_ai.tool.name", "gen_ai.operation.name", "mcp.protocol.version",
                           "error.type")),
    "mcp.auth.token.verifications": ("counter", "{verification}", ("outcome", "reason")),
    "mcp.auth.token.verification.duration": ("histogram", "s", ("outcome",)),
    "mcp.auth.token_cache.lookups": ("counter", "{lookup}", ("result",)),
    "mcp.auth.key.fetches": ("counter", "{fetch}", ("issuer", "result")),
    "mcp.auth.key.last_success": ("gauge", "s", ("issuer",)),
    "mcp.auth.refusals": ("counter", "{refusal}", ("gen_ai.tool.name", "permission")),
    "mcp.server.rate_limit.rejections": ("counter", "{request}", ("kind",)),
    "db.client.operation.duration": ("histogram", "s", ("db.system.name", "db.operation.name", "error.type")),
    "mcp.server.downstream.duration": ("histogram", "s", ("downstream.name", "error.type")),
}
"""Every metric the server records: instrument, unit and attribute names."""


def _bounded(value: object, known: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in known else OTHER


class _Timed:
    """A span (when tracing) made current for a block, and the block's duration; subclasses record."""

    __slots__ = ("_observer", "_name", "_kind", "_attributes", "_span", "_token", "_started")

    def __init__(self, observer: OTelObserver, name: str, kind: SpanKind, attributes: Mapping[str, Any]) -> None:
        self._observer = observer
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._span: Any = None
        self._token: Any = None
        self._started = 0.0

    def __enter__(self) -> Any:
        tracer = self._observer.tracer
        if tracer is not None:
            self._span = tracer.start_span(self._name, kind=self._kind, attributes=self._attributes)
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        seconds = time.perf_counter() - self._started
        try:
            self.record(exc, seconds)
        except Exception:  # telemetry never fails a request
            log.debug("recording %s failed", self._name, exc_info=True)
        finally:
            if self._span is not None:
                otel_context.detach(self._token)
                self._span.end()

    def record(self, exc: BaseException | None, seconds: float) -> None:
        raise NotImplementedError

    def fail(self, error_type: str, message: str | None = None) -> None:
        if self._span is not None:
            self._span.set_attribute("error.type", error_type)
            self._span.set_status(StatusCode.ERROR, message)


class _Verification(_Timed):
    __slots__ = ()

    def record(self, exc: BaseException | None, seconds: float) -> None:
        outcome, reason = verification_outcome(exc)
        observer = self._observer
        observer._verifications.add(1, observer._attrs(("outcome", outcome), ("reason", reason)))
        observer._verify_duration.record(seconds, observer._attrs(("outcome", outcome)))
        if self._span is not None:
            self._span.set_attributes({"auth.outcome": outcome, "auth.reason": reason})
            if outcome != "valid":
                self.fail(reason)


class _KeyFetch(_Timed):
    __slots__ = ("_issuer",)

    def __init__(self, observer: OTelObserver, issuer: str) -> None:
        super().__init__(observer, "auth.key_fetch", SpanKind.CLIENT, {"auth.issuer": issuer})
        self._issuer = issuer

    def record(self, exc: BaseException | None, seconds: float) -> None:
        result = fetch_result(exc)
        observer = self._observer
        observer._key_fetches.add(1, observer._attrs(("issuer", self._issuer), ("result", result)))
        if result == "ok":
            observer._last_success.set(time.time(), observer._attrs(("issuer", self._issuer)))
        elif self._span is not None:
            self.fail(result)
        if self._span is not None:
            self._span.set_attribute("auth.fetch.result", result)


class _StoreCall(_Timed):
    __slots__ = ("_labels",)

    def __init__(self, observer: OTelObserver, system: str, operation: str) -> None:
        attributes = {"db.system.name": system, "db.operation.name": operation, "db.collection.name": "notes"}
        super().__init__(observer, f"{operation} notes", SpanKind.CLIENT, attributes)
        self._labels = (("db.system.name", system), ("db.operation.name", operation))

    def record(self, exc: BaseException | None, seconds: float) -> None:
        observer = self._observer
        if exc is None:
            observer._store_duration.record(seconds, observer._attrs(*self._labels))
            return
        error = type(exc).__qualname__
        observer._store_duration.record(seconds, observer._attrs(*self._labels, ("error.type", error)))
        self.fail(error)


class _Downstream(_Timed):
    __slots__ = ("_label", "headers", "_status")

    def __init__(self, observer: OTelObserver, name: str, target: str) -> None:
        super().__init__(observer, name, SpanKind.CLIENT, {"downstream.name": name, "server.address": target})
        self._label = name
        self.headers: MutableMapping[str, str] = {}
        self._status = 0

    def __enter__(self) -> Any:
        super().__enter__()
        if self._span is not None:
            _PROPAGATOR.inject(self.headers)  # the current context is this span's
        return self

    def set_status(self, status: int) -> None:
        self._status = status
        if self._span is not None:
            self._span.set_attribute("http.response.status_code", status)

    def record(self, exc: BaseException | None, seconds: float) -> None:
        error = type(exc).__qualname__ if exc is not None else (str(self._status) if self._status >= 400 else None)
        observer = self._observer
        labels = (("downstream.name", self._label),) + ((("error.type", error),) if error else ())
        observer._downstream.record(seconds, observer._attrs(*labels))
        if error:
            self.fail(error)


class OTelObserver:
    """The auth layer's `Observer` (and the server's own hooks) over an OpenTelemetry tracer and meter.

    Args:
        meter: where the metrics go.
        tracer: where the spans go; None when only metrics are on.
    """

    def __init__(self, meter: Any, tracer: Any = None) -> None:
        self.tracer = tracer
        self.tools: frozenset[str] = frozenset()
        """The registered tool names (set once at start): any other name is recorded as ``other``."""
        self.issuers: frozenset[str] = frozenset()
        self._cache: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}
        self._lock = threading.Lock()

        def histogram(name: str, description: str) -> Any:
            return meter.create_histogram(name, unit="s", description=description,
                                          explicit_bucket_boundaries_advisory=DURATION_BUCKETS)

        self._operation = histogram("mcp.server.operation.duration", "Duration of MCP requests the server handled")
        self._verifications = meter.create_counter(
            "mcp.auth.token.verifications", unit="{verification}",
            description="Authentications of requests to the MCP endpoint, by outcome and reason category")
        self._verify_duration = histogram("mcp.auth.token.verification.duration",
                                          "Duration of a request's authentication")
        self._cache_lookups = meter.create_counter(
            "mcp.auth.token_cache.lookups", unit="{lookup}", description="Verified-token cache hits and misses")
        self._key_fetches = meter.create_counter(
            "mcp.auth.key.fetches", unit="{fetch}", description="Key-set fetches by issuer and result")
        self._last_success = meter.create_gauge(
            "mcp.auth.key.last_success", unit="s",
            description="Unix time of the last successful key-set fetch, by issuer")
        self._refusals = meter.create_counter(
            "mcp.auth.refusals", unit="{refusal}", description="Tool calls refused (HTTP 403), by tool and permission")
        self._rate_limited = meter.create_counter(
            "mcp.server.rate_limit.rejections", unit="{request}",
            description="Requests refused by a rate limit (HTTP 429), by kind")
        self._store_duration = histogram("db.client.operation.duration", "Duration of notes store calls")
        self._downstream = histogram("mcp.server.downstream.duration", "Duration of calls to downstream services")

    def _attrs(self, *pairs: tuple[str, str]) -> Mapping[str, str]:
        """One shared attribute mapping per combination (every value is bounded, so is this cache)."""
        found = self._cache.get(pairs)
        if found is None:
            with self._lock:
                found = self._cache.setdefault(pairs, dict(pairs))
        return found

    def tool_label(self, name: object) -> str:
        """``name`` when it is a registered tool, else ``other``."""
        return _bounded(name, self.tools)

    # -- the auth layer's Observer ---------------------------------------------------------------

    def verifying(self) -> AbstractContextManager[object]:
        return _Verification(self, "auth.verify", SpanKind.INTERNAL, {})

    def fetching_keys(self, issuer: str, *, configured: bool) -> AbstractContextManager[object]:
        return _KeyFetch(self, issuer if configured else TOKEN_NAMED)

    def token_cache(self, *, hit: bool) -> None:
        self._cache_lookups.add(1, self._attrs(("result", "hit" if hit else "miss")))

    def refused(self, tools: Sequence[str], permissions: Iterable[str]) -> None:
        labels = [self.tool_label(t) for t in dict.fromkeys(tools)] or [OTHER]
        for tool in labels:
            for permission in permissions:
                self._refusals.add(1, self._attrs(("gen_ai.tool.name", tool), ("permission", permission)))
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({"mcp.method.name": "tools/call", "gen_ai.tool.name": labels[0],
                                 "error.type": "insufficient_scope"})

    def rate_limited(self, kind: str) -> None:
        self._rate_limited.add(1, self._attrs(("kind", kind if kind in ("read", "write") else OTHER)))
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("error.type", "rate_limited")

    def downstream(self, name: str, target: str) -> AbstractContextManager[DownstreamCall]:
        return _Downstream(self, name, target)

    # -- the server's hooks ----------------------------------------------------------------------

    def operation(self, method: str, tool: str | None, error: str | None, version: str | None,
                  seconds: float) -> None:
        """One MCP request the SDK handled (`server._logging.audit_middleware` calls it)."""
        pairs: list[tuple[str, str]] = [("mcp.method.name", _bounded(method, METHODS))]
        if tool is not None:
            pairs += (("gen_ai.tool.name", self.tool_label(tool)), ("gen_ai.operation.name", "execute_tool"))
        if version is not None:
            pairs.append(("mcp.protocol.version", _bounded(version, VERSIONS)))
        if error is not None:  # a JSON-RPC code, tool_error, an auth error code or an exception class: bounded
            pairs.append(("error.type", error[:64]))
        self._operation.record(seconds, self._attrs(*pairs))

    def store_call(self, system: str, operation: str) -> AbstractContextManager[object]:
        """A context around one store call: span and ``db.client.operation.duration``."""
        return _StoreCall(self, system, operation)


# -- the HTTP layer ------------------------------------------------------------------------------

_PROPAGATOR = TraceContextTextMapPropagator()  # W3C trace context only: no baggage from callers


class TracingLayer(CorrelationLayer):
    """`CorrelationLayer` plus a SERVER span around each request to ``paths`` (the MCP endpoint and below it,
    where the auth layer looks at every request).

    The span's parent is the request's ``traceparent`` header when valid; with no id of its own
    the request takes the span's trace id as its ``request_id``.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, tracer: Any,
                 paths: Iterable[str]) -> None:
        super().__init__(app)
        self._tracer = tracer
        self._paths = tuple(p.rstrip("/") for p in paths)

    def _traced(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self._paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._traced(route_path(scope)):
            await super().__call__(scope, receive, send)
            return
        headers = scope["headers"]
        carrier = {}
        for key, value in headers:
            if key in (b"traceparent", b"tracestate") and key.decode() not in carrier:
                carrier[key.decode()] = value.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        method = scope.get("method", "")
        route = route_path(scope)
        span = self._tracer.start_span(
            f"{method} {route}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route, "url.path": route,
                        "url.scheme": scope.get("scheme", "http")},
        )
        rid = request_id_of(headers) or trace.format_trace_id(span.get_span_context().trace_id)
        handle = self.bind(rid)
        token = otel_context.attach(trace.set_span_in_context(span))
        reply = _with_header(send, rid)

        async def traced_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = int(message.get("status", 0))
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_attribute("error.type", str(status))
                    span.set_status(StatusCode.ERROR)
            await reply(message)

        try:
            await self.app(scope, receive, traced_send)
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(StatusCode.ERROR)
            raise
        finally:
            otel_context.detach(token)
            self.unbind(handle)
            span.end()


class _SpanNameLimit(SpanProcessor):
    """Cuts span names to `MAX_SPAN_NAME` characters (the SDK names its span after the caller's tool name)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if len(span.name) > MAX_SPAN_NAME:
            span.update_name(span.name[:MAX_SPAN_NAME])


# -- the store -----------------------------------------------------------------------------------

class ObservedStore:
    """A `tools.NotesStore` whose calls make spans and record ``db.client.operation.duration``."""

    def __init__(self, store: Any, observer: OTelObserver, system: str) -> None:
        self._store = store
        self._observer = observer
        self._system = system

    async def open(self) -> None:
        await self._store.open()

    async def aclose(self) -> None:
        await self._store.aclose()

    async def ping(self) -> bool:
        return bool(await self._store.ping())  # readiness probes: no span per probe

    async def _call(self, operation: str, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        with self._observer.store_call(self._system, operation):
            return await call(*args)

    async def get(self, tenant: Any, note_id: int) -> Any:
        return await self._call("get", self._store.get, tenant, note_id)

    async def list(self, tenant: Any, limit: int = 20) -> Any:
        return await self._call("list", self._store.list, tenant, limit)

    async def search(self, tenant: Any, query: str, limit: int = 20) -> Any:
        return await self._call("search", self._store.search, tenant, query, limit)

    async def create(self, tenant: Any, title: str, body: str, client_id: str) -> Any:
        return await self._call("create", self._store.create, tenant, title, body, client_id)

    async def update(self, tenant: Any, note_id: int, title: str, body: str, client_id: str) -> Any:
        return await self._call("update", self._store.update, tenant, note_id, title, body, client_id)

    async def delete(self, tenant: Any, note_id: int, client_id: str) -> Any:
        return await self._call("delete", self._store.delete, tenant, note_id, client_id)


# -- Prometheus ----------------------------------------------------------------------------------

def _prometheus_name(name: str, unit: str) -> str:
    base = "".join(c if c.isalnum() else "_" for c in name)
    return base + "_seconds" if unit == "s" and not base.endswith("_seconds") else base


class _Collector:
    """Renders what an OpenTelemetry pull reader collects as ``prometheus_client`` metric families."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self._reader = reader

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        data = self._reader.get_metrics_data()
        if data is None:
            return
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points: list[Any] = list(metric.data.data_points)
                    if not points:
                        continue
                    keys = sorted({k for p in points for k in (p.attributes or {})})
                    labels = ["".join(c if c.isalnum() else "_" for c in k) for k in keys]
                    name = _prometheus_name(metric.name, metric.unit or "")

                    def values(point: Any, keys: list[str] = keys) -> list[str]:
                        attributes = point.attributes or {}
                        return [str(attributes.get(k, "")) for k in keys]

                    family: Any
                    if isinstance(points[0], HistogramDataPoint):
                        family = HistogramMetricFamily(name, metric.description or "", labels=labels)
                        for point in points:
                            cumulative, buckets = 0, []
                            for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                                cumulative += count
                                buckets.append((repr(float(bound)), cumulative))
                            buckets.append(("+Inf", point.count))
                            family.add_metric(values(point), buckets, point.sum)
                    elif getattr(metric.data, "is_monotonic", False):
                        family = CounterMetricFamily(name, metric.description or "", labels=labels)
                        for point in points:
                            assert isinstance(point, NumberDataPoint)
                            family.add_metric(values(point), point.value)
                    else:
                        family = GaugeMetricFamily(name, metric.description or "", labels=labels)
                        for point in points:
                            family.add_metric(values(point), point.value)
                    yield family


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # seconds a scrape connection may take: one slow client cannot hold the endpoint

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return None


class _MetricsEndpoint:
    """``GET /metrics`` in the Prometheus text format, on its own socket, one request at a time."""

    def __init__(self, reader: InMemoryMetricReader, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        registry = CollectorRegistry()  # this server's own, not the library's global one
        registry.register(_Collector(reader))  # type: ignore[arg-type]
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found\n"]
            return metrics(environ, start_response)

        self._server: WSGIServer = make_server(host, port, app, handler_class=_QuietHandler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- assembly ------------------------------------------------------------------------------------

def _sampler(settings: TelemetrySettings) -> Sampler:
    name, ratio = settings.sampler, settings.sampler_arg
    root: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(
        name.removeprefix("parentbased_"), TraceIdRatioBased(ratio))
    return ParentBased(root) if name.startswith("parentbased_") else root


class Telemetry:
    """The tracer and meter providers, exporters and scrape endpoint for one server process.

    Args:
        settings: what to export and where.
        reader: an extra metric reader (tests read metrics in process with one).
    """

    def __init__(self, settings: TelemetrySettings, *, reader: MetricReader | None = None) -> None:
        self.settings = settings
        resource = Resource.create({**dict(settings.resource_attributes), "service.name": settings.service_name})
        compression = Compression.Gzip if settings.compression == "gzip" else Compression.NoCompression
        self.tracer_provider: TracerProvider | None = None
        tracer = None
        if settings.traces_endpoint is not None:
            self.tracer_provider = TracerProvider(
                resource=resource, sampler=_sampler(settings), span_limits=SpanLimits(max_attribute_length=256))
            self.tracer_provider.add_span_processor(_SpanNameLimit())
            exporter = OTLPSpanExporter(endpoint=settings.traces_endpoint, headers=dict(settings.traces_headers),
                                        timeout=settings.timeout_s, compression=compression)
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=settings.span_delay_ms))
            tracer = self.tracer_provider.get_tracer("btp-mcp-oauth")
        readers: list[MetricReader] = [reader] if reader is not None else []
        if settings.metrics_endpoint is not None:
            metric_exporter = OTLPMetricExporter(
                endpoint=settings.metrics_endpoint, headers=dict(settings.metrics_headers),
                timeout=settings.timeout_s, compression=compression)
            readers.append(PeriodicExportingMetricReader(
                metric_exporter, export_interval_millis=settings.metric_interval_ms))
        self._endpoint: _MetricsEndpoint | None = None
        self._pull: InMemoryMetricReader | None = None
        if settings.prometheus is not None:
            self._pull = InMemoryMetricReader()
            readers.append(self._pull)
        self.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self.observer = OTelObserver(self.meter_provider.get_meter("btp-mcp-oauth"), tracer)

    @property
    def tracing(self) -> bool:
        """Whether spans are made."""
        return self.tracer_provider is not None

    def install(self) -> None:
        """Make the tracer provider the process's (the SDK's own MCP span comes from the global one).

        Call once, at the edge (``python -m server``); the OpenTelemetry API refuses a second one.
        """
        if self.tracer_provider is not None:
            trace.set_tracer_provider(self.tracer_provider)

    def serve_metrics(self) -> int | None:
        """Start the Prometheus endpoint, if configured; returns its port.

        Raises:
            OSError: the address cannot be bound.
        """
        if self._pull is None or self.settings.prometheus is None:
            return None
        host, port = self.settings.prometheus
        self._endpoint = _MetricsEndpoint(self._pull, host, port)
        self._endpoint.start()
        return self._endpoint.port

    def observe_store(self, store: Any) -> Any:
        """``store`` with its calls observed (spans, ``db.client.operation.duration``)."""
        system = "postgresql" if type(store).__name__.startswith("Postgres") else "sqlite"
        return ObservedStore(store, self.observer, system)

    def layer(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], path: str) -> CorrelationLayer:
        """The outermost ASGI layer: `TracingLayer` on ``path`` when tracing, else `CorrelationLayer`."""
        if self.observer.tracer is None:
            return CorrelationLayer(app)
        return TracingLayer(app, tracer=self.observer.tracer, paths=(path,))

    def shutdown(self) -> None:
        """Flush and stop the exporters and the scrape endpoint (at the end of the process)."""
        if self._endpoint is not None:
            self._endpoint.stop()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def open_telemetry(settings: TelemetrySettings) -> Telemetry | None:
    """A `Telemetry` for ``settings``, or None when they turn nothing on."""
    return Telemetry(settings) if settings.enabled else None
