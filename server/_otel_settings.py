"""Telemetry settings from the standard ``OTEL_*`` variables, parsed at the edge into a frozen value.

Telemetry is off unless asked for: unlike the OpenTelemetry SDK's own default (``otlp`` for every
signal), nothing is exported and no span is made unless an exporter or an endpoint is set.

Traces:  ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``none``; ``otlp`` when an OTLP endpoint is set),
         ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``,
         ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_BSP_SCHEDULE_DELAY`` (ms).
Metrics: ``OTEL_METRICS_EXPORTER`` (``otlp``, ``prometheus``, both comma-separated, or ``none``),
         ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/metrics``,
         ``OTEL_METRIC_EXPORT_INTERVAL`` (ms), and for ``prometheus`` the scrape endpoint's
         ``OTEL_EXPORTER_PROMETHEUS_HOST`` (default 127.0.0.1) and ``OTEL_EXPORTER_PROMETHEUS_PORT``
         (default 9464), served on its own port, never on the public one.
Both:    ``OTEL_SDK_DISABLED``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
         ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]PROTOCOL`` (``http/protobuf`` only),
         ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]HEADERS``, ``OTEL_EXPORTER_OTLP_TIMEOUT`` (ms),
         ``OTEL_EXPORTER_OTLP_COMPRESSION`` (``gzip`` or ``none``).

Errors name the setting; a header value (it may hold an API key) is never repeated in one.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from auth import ConfigError

__all__ = ["TelemetrySettings", "load_telemetry_settings", "SAMPLERS"]

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_ENDPOINT = "http://localhost:4318"  # the OTLP/HTTP default of the specification
Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """What to export and where; the default exports nothing."""

    traces_endpoint: str | None = None  # full OTLP/HTTP URL of the traces signal; None: no tracing
    metrics_endpoint: str | None = None  # full OTLP/HTTP URL of the metrics signal; None: no OTLP metrics
    prometheus: tuple[str, int] | None = None  # (host, port) of the Prometheus scrape endpoint
    service_name: str = "btp-notes"
    resource_attributes: Pairs = ()
    traces_headers: Pairs = field(default=(), repr=False)  # may carry an API key: never shown
    metrics_headers: Pairs = field(default=(), repr=False)
    timeout_s: float = 10.0
    compression: str = "none"
    metric_interval_ms: int = 60_000
    span_delay_ms: int = 5_000
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0

    @property
    def tracing(self) -> bool:
        """Whether spans are made and exported."""
        return self.traces_endpoint is not None

    @property
    def metrics(self) -> bool:
        """Whether metrics are recorded (for OTLP export, the scrape endpoint or both)."""
        return self.metrics_endpoint is not None or self.prometheus is not None

    @property
    def enabled(self) -> bool:
        """Whether any telemetry is on (the OpenTelemetry SDK is then loaded)."""
        return self.tracing or self.metrics


def _text(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = _text(env, name).lower()
    if raw in ("", "false", "0", "no", "off"):
        return False
    if raw in ("true", "1", "yes", "on"):
        return True
    raise ConfigError(name, f"must be true or false, got {raw[:20]!r}")


def _exporters(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> frozenset[str]:
    raw = _text(env, name).lower() or default
    chosen = frozenset(p.strip() for p in raw.split(",") if p.strip())
    unknown = sorted(chosen - {*allowed, "none"})
    if unknown:
        raise ConfigError(name, f"must be {', '.join(allowed)} or none, got {unknown[0][:40]!r}")
    if "none" in chosen and len(chosen) > 1:
        raise ConfigError(name, "none cannot be combined with an exporter")
    return chosen - {"none"}


def _url(value: str, name: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(name, "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(name, "must not carry credentials (use OTEL_EXPORTER_OTLP_HEADERS)")
    return value


def _signal_endpoint(env: Mapping[str, str], signal: str) -> str:
    """The full URL of ``signal`` (``traces``/``metrics``): its own setting as is, else the base + ``/v1/<signal>``."""
    own = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    if _text(env, own):
        return _url(_text(env, own), own)
    base = _text(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if base:
        _url(base, "OTEL_EXPORTER_OTLP_ENDPOINT")
    return (base or DEFAULT_ENDPOINT).rstrip("/") + f"/v1/{signal}"


def _has_endpoint(env: Mapping[str, str], signal: str) -> bool:
    own = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    return bool(_text(env, "OTEL_EXPORTER_OTLP_ENDPOINT") or _text(env, own))


def _protocol(env: Mapping[str, str], signal: str) -> None:
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        raw = _text(env, name)
        if raw:
            if raw != "http/protobuf":
                raise ConfigError(name, f"only http/protobuf is supported, got {raw[:20]!r}")
            return


def _pairs(raw: str, name: str, *, secret: bool) -> Pairs:
    """``key=value,key2=value2`` (W3C baggage-like, values percent-encoded), as the OTLP settings write them."""
    pairs = []
    for index, item in enumerate(p for p in raw.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        key, value = key.strip(), unquote(value.strip())
        if not sep or not key or not key.isascii() or any(c in key for c in " \t\r\n:"):
            shown = f"entry {index + 1}" if secret else repr(item[:40])
            raise ConfigError(name, f"must be key=value pairs separated by commas; {shown} is not")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(name, f"entry {index + 1} has a control character in its value")
        pairs.append((key, value))
    return tuple(pairs)


def _headers(env: Mapping[str, str], signal: str) -> Pairs:
    merged = dict(_pairs(_text(env, "OTEL_EXPORTER_OTLP_HEADERS"), "OTEL_EXPORTER_OTLP_HEADERS", secret=True))
    own = f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS"
    merged.update(_pairs(_text(env, own), own, secret=True))
    return tuple(merged.items())


def _millis(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _text(env, name)
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ConfigError(name, f"must be a number of milliseconds from {low} to {high}, got {raw[:20]!r}")
    return int(raw)


def _prometheus(env: Mapping[str, str], server_port: int) -> tuple[str, int]:
    host = _text(env, "OTEL_EXPORTER_PROMETHEUS_HOST") or "127.0.0.1"
    if host != "localhost":
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError("OTEL_EXPORTER_PROMETHEUS_HOST",
                              f"must be an IP address or localhost, got {host[:60]!r}") from None
    raw = _text(env, "OTEL_EXPORTER_PROMETHEUS_PORT") or "9464"
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 65535:
        raise ConfigError("OTEL_EXPORTER_PROMETHEUS_PORT", f"must be a TCP port number, got {raw[:20]!r}")
    if int(raw) == server_port:
        raise ConfigError("OTEL_EXPORTER_PROMETHEUS_PORT", "must differ from PORT: the metrics are never served on "
                                                           "the public port")
    return host.strip("[]"), int(raw)


def _sampler(env: Mapping[str, str]) -> tuple[str, float]:
    name = _text(env, "OTEL_TRACES_SAMPLER").lower() or "parentbased_always_on"
    if name not in SAMPLERS:
        raise ConfigError("OTEL_TRACES_SAMPLER", f"must be one of {', '.join(SAMPLERS)}, got {name[:40]!r}")
    raw = _text(env, "OTEL_TRACES_SAMPLER_ARG")
    if not raw or not name.endswith("traceidratio"):
        return name, 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError("OTEL_TRACES_SAMPLER_ARG", f"must be a ratio from 0 to 1, got {raw[:20]!r}")
    return name, ratio


def load_telemetry_settings(env: Mapping[str, str], *, server_port: int = 0) -> TelemetrySettings:
    """Parse the ``OTEL_*`` settings (see the module docstring); pure: tests pass a dict.

    Args:
        env: ``os.environ`` or a dict.
        server_port: the public port, which the Prometheus endpoint must not share.

    Raises:
        ConfigError: naming the setting at fault.
    """
    if _flag(env, "OTEL_SDK_DISABLED"):
        return TelemetrySettings()
    traces = _exporters(env, "OTEL_TRACES_EXPORTER", ("otlp",), "otlp" if _has_endpoint(env, "traces") else "none")
    metrics = _exporters(env, "OTEL_METRICS_EXPORTER", ("otlp", "prometheus"),
                         "otlp" if _has_endpoint(env, "metrics") else "none")
    if not traces and not metrics:
        return TelemetrySettings()
    if "otlp" in traces:
        _protocol(env, "traces")
    if "otlp" in metrics:
        _protocol(env, "metrics")
    compression = _text(env, "OTEL_EXPORTER_OTLP_COMPRESSION").lower() or "none"
    if compression not in ("gzip", "none"):
        raise ConfigError("OTEL_EXPORTER_OTLP_COMPRESSION", f"must be gzip or none, got {compression[:20]!r}")
    resource = _pairs(_text(env, "OTEL_RESOURCE_ATTRIBUTES"), "OTEL_RESOURCE_ATTRIBUTES", secret=False)
    service = _text(env, "OTEL_SERVICE_NAME") or dict(resource).get("service.name", "") or "btp-notes"
    sampler, ratio = _sampler(env)
    return TelemetrySettings(
        traces_endpoint=_signal_endpoint(env, "traces") if traces else None,
        metrics_endpoint=_signal_endpoint(env, "metrics") if "otlp" in metrics else None,
        prometheus=_prometheus(env, server_port) if "prometheus" in metrics else None,
        service_name=service[:255],
        resource_attributes=tuple((k, v) for k, v in resource if k != "service.name"),
        traces_headers=_headers(env, "traces") if traces else (),
        metrics_headers=_headers(env, "metrics") if "otlp" in metrics else (),
        timeout_s=_millis(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, 1, 600_000) / 1000,
        compression=compression,
        metric_interval_ms=_millis(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000, 100, 86_400_000),
        span_delay_ms=_millis(env, "OTEL_BSP_SCHEDULE_DELAY", 5_000, 1, 86_400_000),
        sampler=sampler,
        sampler_arg=ratio,
    )
