"""The ``OTEL_*`` settings: off unless asked for, parsed into a frozen value, a bad one named in the error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from auth import ConfigError
from server._otel_settings import TelemetrySettings, load_telemetry_settings

from .conftest import REPO

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


def test_nothing_is_on_without_an_exporter_or_endpoint() -> None:
    for env in ({}, {"OTEL_SERVICE_NAME": "x"}, {"OTEL_TRACES_EXPORTER": "none"},
                {**ENDPOINT, "OTEL_SDK_DISABLED": "true"},
                {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}):
        settings = load_telemetry_settings(env)
        assert settings == TelemetrySettings() and not settings.enabled


def test_an_endpoint_turns_on_traces_and_metrics_at_the_signal_paths() -> None:
    settings = load_telemetry_settings({**ENDPOINT, "OTEL_SERVICE_NAME": "notes"})
    assert settings.traces_endpoint == "http://collector:4318/v1/traces"
    assert settings.metrics_endpoint == "http://collector:4318/v1/metrics"
    assert settings.prometheus is None and settings.service_name == "notes"


def test_signal_endpoints_are_used_as_given() -> None:
    settings = load_telemetry_settings({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t.example/api/traces",
                                        "OTEL_METRICS_EXPORTER": "none"})
    assert (settings.traces_endpoint, settings.metrics_endpoint) == ("https://t.example/api/traces", None)


def test_an_exporter_without_an_endpoint_uses_the_default_one() -> None:
    settings = load_telemetry_settings({"OTEL_TRACES_EXPORTER": "otlp"})
    assert settings.traces_endpoint == "http://localhost:4318/v1/traces" and settings.metrics_endpoint is None


def test_prometheus_on_its_own_port_on_loopback_by_default() -> None:
    settings = load_telemetry_settings({"OTEL_METRICS_EXPORTER": "prometheus"}, server_port=8080)
    assert settings.prometheus == ("127.0.0.1", 9464) and settings.metrics and not settings.tracing
    pod = load_telemetry_settings({"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0",
                                   "OTEL_EXPORTER_PROMETHEUS_PORT": "9100"})
    assert pod.prometheus == ("0.0.0.0", 9100)


def test_headers_resources_sampler_and_intervals() -> None:
    settings = load_telemetry_settings({
        **ENDPOINT,
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cr%3Dt,x-team=notes",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-team=traces",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=from-resource",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_METRIC_EXPORT_INTERVAL": "15000", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    })
    assert dict(settings.traces_headers) == {"api-key": "s3cr=t", "x-team": "traces"}
    assert dict(settings.metrics_headers) == {"api-key": "s3cr=t", "x-team": "notes"}
    assert settings.resource_attributes == (("deployment.environment", "prod"),)
    assert settings.service_name == "from-resource"
    assert (settings.sampler, settings.sampler_arg) == ("parentbased_traceidratio", 0.25)
    assert (settings.metric_interval_ms, settings.timeout_s, settings.compression) == (15000, 2.5, "gzip")
    assert "s3cr" not in repr(settings)  # header values may be keys: never in a repr


@pytest.mark.parametrize(("env", "named"), [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_METRICS_EXPORTER": "otlp,none"}, "OTEL_METRICS_EXPORTER"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://collector"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://user:pw@collector"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://[::1"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({**ENDPOINT, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
    ({**ENDPOINT, "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
    ({**ENDPOINT, "OTEL_EXPORTER_OTLP_TIMEOUT": "-1"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
    ({**ENDPOINT, "OTEL_METRIC_EXPORT_INTERVAL": "1e3"}, "OTEL_METRIC_EXPORT_INTERVAL"),
    ({**ENDPOINT, "OTEL_BSP_SCHEDULE_DELAY": "0"}, "OTEL_BSP_SCHEDULE_DELAY"),
    ({**ENDPOINT, "OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
    ({**ENDPOINT, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({**ENDPOINT, "OTEL_RESOURCE_ATTRIBUTES": "no-equals-sign"}, "OTEL_RESOURCE_ATTRIBUTES"),
    ({"OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED"),
    ({"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": "70000"},
     "OTEL_EXPORTER_PROMETHEUS_PORT"),
    ({"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": "8080"},
     "OTEL_EXPORTER_PROMETHEUS_PORT"),  # the public port
    ({"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_HOST": "metrics.example"},
     "OTEL_EXPORTER_PROMETHEUS_HOST"),
])
def test_a_bad_setting_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_telemetry_settings(env, server_port=8080)
    assert caught.value.setting == named


def test_a_malformed_header_setting_is_named_without_its_value() -> None:
    with pytest.raises(ConfigError) as caught:
        load_telemetry_settings({**ENDPOINT, "OTEL_EXPORTER_OTLP_HEADERS": "Authorization: Basic c2VjcmV0LWtleQ=="})
    assert caught.value.setting == "OTEL_EXPORTER_OTLP_HEADERS"
    assert "c2VjcmV0" not in str(caught.value) and "Basic" not in str(caught.value)


def test_the_server_refuses_to_start_on_a_bad_setting_and_names_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "--dev"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OTEL_TRACES_EXPORTER": "zipkin"})
    assert result.returncode == 2
    assert "configuration error: OTEL_TRACES_EXPORTER" in result.stderr


def test_with_telemetry_off_the_server_loads_no_telemetry_sdk(tmp_path: object) -> None:
    code = (
        "import sys\n"
        "from server._dev_issuer import DevIssuer\n"
        "from server._main import dev_settings\n"
        "from server import create_app\n"
        "issuer = DevIssuer('http://127.0.0.1:8080')\n"
        f"settings = dev_settings({{'MCP_NOTES_DB': {str(tmp_path)!r} + '/n.db'}}, 'http://127.0.0.1:8080', issuer)\n"
        "create_app(settings)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'prometheus_client',"
        " 'opentelemetry.exporter'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
