"""Traces and metrics by the MCP conventions, received through a real OTLP/HTTP endpoint the test runs.

``python -m server --dev`` runs as a subprocess with the standard ``OTEL_*`` settings pointing at
`tests._otlp.otlp_receiver` and a Prometheus endpoint on its own port. A scripted session (a
success, a store call, a 401, a request without a token, a 403, a 429, a store error, an unknown tool)
is sent over HTTP; the Prometheus endpoint is scraped and the public route asked for it; then
SIGTERM makes the server flush, and the spans and metrics it sent are checked: names,
attributes, parents and counts, and that no token, client id or subject is in any of them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests._live import free_port
from tests._otlp import Receiver, Span, otlp_receiver

from .conftest import ENVELOPE, LEGACY_HEADERS, modern_headers, tool_call
from .test_dev_mode import DevProcess, server_env, start, stop, wait_healthy

pytestmark = pytest.mark.timeout(120)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
META_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
META_PARENT = "b7ad6b7169203331"
SERVICE = "notes-under-test"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP span kinds
READ_LIMIT = "1/h:4"  # four reads per client, nothing refilled during the session


@dataclass
class Session:
    receiver: Receiver
    process: DevProcess
    tokens: dict[str, str]
    ids: dict[str, str]  # step -> the X-Request-Id the server answered
    scrape: httpx.Response
    public: list[httpx.Response]
    started: float
    ended: float
    output: str


def _post(base: str, token: str | None, body: dict[str, Any], **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(base + "/mcp", json=body, timeout=10, headers={
        **auth, **LEGACY_HEADERS, "Accept": "application/json, text/event-stream", **headers})


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    tmp = tmp_path_factory.mktemp("otel")
    with otlp_receiver() as receiver:
        port, metrics_port = free_port(), free_port()
        env = server_env(tmp, PORT=str(port), OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME=SERVICE,
                         OTEL_METRICS_EXPORTER="otlp,prometheus", OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
                         OTEL_BSP_SCHEDULE_DELAY="200", OTEL_METRIC_EXPORT_INTERVAL="60000",
                         MCP_RATE_LIMIT_READ=READ_LIMIT)
        proc, log = start(tmp, "server", env)
        process = DevProcess(proc, f"http://127.0.0.1:{port}", log)
        try:
            wait_healthy(proc, process.base_url, log)
            started = time.time()
            base = process.base_url
            tokens = {cid: process.token(cid, f"{cid}-secret") for cid in ("dev-read", "dev-full")}
            read, full = tokens["dev-read"], tokens["dev-full"]
            steps: dict[str, httpx.Response] = {}
            steps["whoami"] = _post(base, read, tool_call("whoami", {}, modern=False), traceparent=TRACEPARENT)
            steps["list"] = _post(base, read, tool_call("list_notes", {}, modern=False, id="list-1"))
            steps["invalid"] = _post(base, "not-a-jwt", tool_call("whoami", {}, modern=False))
            steps["missing"] = _post(base, None, tool_call("whoami", {}, modern=False))
            steps["forbidden"] = _post(base, read, tool_call("create_note", {"title": "t"}, modern=False))
            steps["unknown"] = _post(base, read, tool_call("x" * 300, {}, modern=False))
            modern = tool_call("whoami", {}, modern=True, id=7)
            modern["params"]["_meta"] = {**ENVELOPE, "traceparent": f"00-{META_TRACE_ID}-{META_PARENT}-01"}
            steps["meta"] = _post(base, read, modern, **modern_headers("whoami"))
            steps["onward"] = _post(base, read, tool_call("downstream_whoami", {"downstream": "backend"}, modern=False))
            # dev-read's fifth read (whoami, list, meta, onward; the unknown tool is a write, the 403 costs nothing)
            steps["rate_limited"] = _post(base, read, tool_call("whoami", {}, modern=False))
            db = tmp / "notes.db"  # the store breaks: a folder where the database file was
            for path in tmp.glob("notes.db*"):
                path.unlink()
            db.mkdir()
            steps["store_error"] = _post(base, full, tool_call("create_note", {"title": "t"}, modern=False))
            shutil.rmtree(db)
            expected = {"whoami": 200, "list": 200, "invalid": 401, "missing": 401, "forbidden": 403,
                        "unknown": 200, "meta": 200, "onward": 200, "rate_limited": 429, "store_error": 200}
            assert {k: r.status_code for k, r in steps.items()} == expected
            assert steps["store_error"].json()["result"]["isError"] is True
            assert steps["onward"].json()["result"]["isError"] is False, steps["onward"].text
            scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
            public = [httpx.get(base + "/metrics", timeout=10),
                      httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {full}"}, timeout=10),
                      httpx.post(base + "/mcp/metrics", headers={"Authorization": f"Bearer {full}"}, timeout=10)]
            not_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/other", timeout=10)
            assert not_metrics.status_code == 404
            ended = time.time()
        finally:
            code = stop(proc)
        assert code == 0
        yield Session(receiver, process, tokens, {k: r.headers["x-request-id"] for k, r in steps.items()},
                      scrape, public, started, ended, log.read_text())


def _http_span(spans: list[Span], trace_id: str) -> Span:
    (span,) = [s for s in spans if s.trace_id == trace_id and s.kind == SERVER and s.name == "POST /mcp"]
    return span


def _children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id]


def test_one_http_span_per_mcp_request_with_the_status(session: Session) -> None:
    spans = session.receiver.spans()
    http = [s for s in spans if s.name == "POST /mcp"]
    assert len(http) == 10
    assert len([s for s in spans if s.name == "POST /mcp/metrics" and s.kind == SERVER]) == 1  # below the path too
    assert all(s.kind == SERVER and s.resource["service.name"] == SERVICE for s in http)
    by_step = {step: _http_span(spans, rid) for step, rid in session.ids.items()}  # the request id is the trace id
    assert {k: s.attributes["http.response.status_code"] for k, s in by_step.items()} == {
        "whoami": 200, "list": 200, "invalid": 401, "missing": 401, "forbidden": 403, "unknown": 200,
        "meta": 200, "onward": 200, "rate_limited": 429, "store_error": 200}
    assert all(s.attributes["http.request.method"] == "POST" and s.attributes["http.route"] == "/mcp"
               for s in by_step.values())


def test_the_trace_context_of_the_traceparent_header_is_the_parent(session: Session) -> None:
    spans = session.receiver.spans()
    assert session.ids["whoami"] == TRACE_ID
    http = _http_span(spans, TRACE_ID)
    assert http.parent_id == PARENT_SPAN
    names = sorted(s.name for s in _children(spans, http))
    assert names == ["auth.verify", "tools/call whoami"]


def test_the_mcp_span_follows_the_semantic_conventions(session: Session) -> None:
    spans = session.receiver.spans()
    (mcp,) = [s for s in spans if s.name == "tools/call whoami" and s.trace_id == TRACE_ID]
    assert mcp.kind == SERVER
    assert mcp.attributes == {
        "mcp.method.name": "tools/call", "gen_ai.tool.name": "whoami", "gen_ai.operation.name": "execute_tool",
        "jsonrpc.request.id": "1", "mcp.protocol.version": "2025-11-25"}
    (listed,) = [s for s in spans if s.name == "tools/call list_notes"]
    assert listed.attributes["jsonrpc.request.id"] == "list-1"


def test_trace_context_in_params_meta_is_the_mcp_spans_parent(session: Session) -> None:
    spans = session.receiver.spans()
    (mcp,) = [s for s in spans if s.trace_id == META_TRACE_ID]
    assert (mcp.name, mcp.parent_id) == ("tools/call whoami", META_PARENT)
    assert mcp.attributes["mcp.protocol.version"] == "2026-07-28" and mcp.attributes["jsonrpc.request.id"] == "7"
    http = _http_span(spans, session.ids["meta"])  # the HTTP request itself came without a traceparent
    assert http.parent_id == "" and [s.name for s in _children(spans, http)] == ["auth.verify"]


def test_verification_and_key_fetch_are_child_spans(session: Session) -> None:
    spans = session.receiver.spans()
    http = {s.span_id for s in spans if s.name == "POST /mcp"}
    verifies = [s for s in spans if s.name == "auth.verify" and s.parent_id in http]
    assert len(verifies) == 10  # one per request, the one without a token included
    outcomes = sorted((s.attributes["auth.outcome"], s.attributes["auth.reason"]) for s in verifies)
    assert outcomes[:1] == [("invalid", "malformed")]  # "not-a-jwt"
    assert outcomes[1:] == [("missing", "missing")] + [("valid", "none")] * 8
    (fetch,) = [s for s in spans if s.name == "auth.key_fetch"]  # the first token's verification fetched the keys
    (parent,) = [s for s in verifies if s.span_id == fetch.parent_id]
    assert fetch.kind == CLIENT and fetch.attributes["auth.fetch.result"] == "ok"
    assert fetch.attributes["auth.issuer"] == session.process.base_url + "/dev-ias"
    invalid = _http_span(spans, session.ids["invalid"])
    (verify,) = _children(spans, invalid)
    assert verify.status_code == 2 and verify.attributes["error.type"] == verify.attributes["auth.reason"]


def test_an_onward_call_is_a_client_span_of_the_tool_and_carries_the_trace(session: Session) -> None:
    spans = session.receiver.spans()
    (call,) = [s for s in spans if s.attributes.get("downstream.name") == "backend"]
    (tool,) = [s for s in spans if s.span_id == call.parent_id]
    assert tool.name == "tools/call downstream_whoami" and call.kind == CLIENT
    assert call.attributes["http.response.status_code"] == 200 and "error.type" not in call.attributes
    assert call.attributes["server.address"] == "127.0.0.1"


def test_a_refused_call_ends_at_the_http_span(session: Session) -> None:
    spans = session.receiver.spans()
    forbidden = _http_span(spans, session.ids["forbidden"])
    assert forbidden.attributes["error.type"] == "insufficient_scope"
    assert forbidden.attributes["gen_ai.tool.name"] == "create_note"
    assert [s.name for s in _children(spans, forbidden)] == ["auth.verify"]  # no MCP span: never dispatched
    for step in ("invalid", "missing"):
        assert [s.name for s in _children(spans, _http_span(spans, session.ids[step]))] == ["auth.verify"]


def test_a_rate_limited_request_ends_at_the_http_span(session: Session) -> None:
    spans = session.receiver.spans()
    limited = _http_span(spans, session.ids["rate_limited"])
    assert limited.attributes["error.type"] == "rate_limited"
    assert limited.attributes["http.response.status_code"] == 429
    assert [s.name for s in _children(spans, limited)] == ["auth.verify"]  # no MCP span: never dispatched
    rejections = {k: p.as_int for k, p in _points(session, "mcp.server.rate_limit.rejections").items()}
    assert rejections == {(("kind", "read"),): 1}
    assert 'mcp_server_rate_limit_rejections_total{kind="read"} 1.0' in session.scrape.text


def test_store_calls_are_child_spans_of_the_tool_with_their_error(session: Session) -> None:
    spans = session.receiver.spans()
    (listed,) = [s for s in spans if s.name == "list notes"]
    (tool,) = [s for s in spans if s.span_id == listed.parent_id]
    assert tool.name == "tools/call list_notes" and listed.kind == CLIENT
    assert listed.attributes == {"db.system.name": "sqlite", "db.operation.name": "list", "db.collection.name": "notes"}
    (failed,) = [s for s in spans if s.name == "create notes"]
    assert failed.attributes["error.type"] == "StoreUnavailable" and failed.status_code == 2
    (tool,) = [s for s in spans if s.span_id == failed.parent_id]
    assert tool.name == "tools/call create_note" and tool.attributes["error.type"] == "tool_error"


def test_a_span_name_from_the_caller_is_cut_short(session: Session) -> None:
    spans = session.receiver.spans()
    (unknown,) = [s for s in spans if s.name.startswith("tools/call xxx")]
    assert len(unknown.name) == 128


def _points(session: Session, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(attrs.items())): point for attrs, point in session.receiver.metrics()[name]}


def test_metrics_arrive_with_their_attributes_and_counts(session: Session) -> None:
    verifications = {k: p.as_int for k, p in _points(session, "mcp.auth.token.verifications").items()}
    invalid_reason = next(dict(k)["reason"] for k in verifications if dict(k)["outcome"] == "invalid")
    assert verifications == {
        (("outcome", "valid"), ("reason", "none")): 9,  # eight on /mcp, one on /mcp/metrics (then 401 there)
        (("outcome", "invalid"), ("reason", invalid_reason)): 1,
        (("outcome", "missing"), ("reason", "missing")): 1,
    }
    cache = {dict(k)["result"]: p.as_int for k, p in _points(session, "mcp.auth.token_cache.lookups").items()}
    assert cache == {"miss": 3, "hit": 7}  # two good tokens and the bad one verified afresh, then hits
    issuer = session.process.base_url + "/dev-ias"
    fetches = {k: p.as_int for k, p in _points(session, "mcp.auth.key.fetches").items()}
    assert fetches == {(("issuer", issuer), ("result", "ok")): 1}
    ((key, last),) = _points(session, "mcp.auth.key.last_success").items()
    assert key == (("issuer", issuer),) and session.started - 1 <= last.as_double <= session.ended + 1
    downstream = {k: p.count for k, p in _points(session, "mcp.server.downstream.duration").items()}
    assert downstream == {(("downstream.name", "backend"),): 1}
    refusals = {k: p.as_int for k, p in _points(session, "mcp.auth.refusals").items()}
    assert refusals == {(("gen_ai.tool.name", "create_note"), ("permission", "api_write_access")): 1}


def test_operation_duration_by_method_tool_and_error(session: Session) -> None:
    operations = {k: p.count for k, p in _points(session, "mcp.server.operation.duration").items()}
    call = (("gen_ai.operation.name", "execute_tool"), ("mcp.method.name", "tools/call"),
            ("mcp.protocol.version", "2025-11-25"))
    assert operations[tuple(sorted((*call, ("gen_ai.tool.name", "whoami"))))] == 1
    assert operations[tuple(sorted((*call, ("gen_ai.tool.name", "list_notes"))))] == 1
    assert operations[tuple(sorted((*call, ("gen_ai.tool.name", "create_note"), ("error.type", "tool_error"))))] == 1
    unknown = [k for k in operations if ("gen_ai.tool.name", "other") in k]  # not a registered name: "other"
    assert operations[tuple(sorted((*call, ("gen_ai.tool.name", "downstream_whoami"))))] == 1
    assert len(unknown) == 1 and sum(operations.values()) == 6  # refused calls never reached the SDK
    modern = (("gen_ai.operation.name", "execute_tool"), ("gen_ai.tool.name", "whoami"),
              ("mcp.method.name", "tools/call"), ("mcp.protocol.version", "2026-07-28"))
    assert operations[modern] == 1
    (unit,) = {p.explicit_bounds[0] for p in _points(session, "mcp.server.operation.duration").values()}
    assert unit < 0.01  # seconds, with buckets fine enough for milliseconds


def test_store_call_duration(session: Session) -> None:
    store = {k: p.count for k, p in _points(session, "db.client.operation.duration").items()}
    assert store == {
        (("db.operation.name", "list"), ("db.system.name", "sqlite")): 1,
        (("db.operation.name", "create"), ("db.system.name", "sqlite"), ("error.type", "StoreUnavailable")): 1,
    }


def test_prometheus_endpoint_serves_the_same_metrics_on_its_own_port(session: Session) -> None:
    scrape = session.scrape
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    text = scrape.text
    assert 'mcp_auth_refusals_total{gen_ai_tool_name="create_note",permission="api_write_access"} 1.0' in text
    # scraped before the request to /mcp/metrics
    assert 'mcp_auth_token_verifications_total{outcome="valid",reason="none"} 8.0' in text
    assert "# TYPE mcp_server_operation_duration_seconds histogram" in text
    assert 'mcp_auth_token_cache_lookups_total{result="hit"} 6.0' in text
    assert 'mcp_server_downstream_duration_seconds_count{downstream_name="backend"} 1.0' in text


def test_the_public_route_never_serves_the_metrics(session: Session) -> None:
    for response in session.public:
        assert response.status_code in (401, 404), response.status_code
        assert "mcp_auth" not in response.text and "# TYPE" not in response.text


def test_no_token_client_id_or_subject_in_any_attribute(session: Session) -> None:
    values: list[str] = []
    for span in session.receiver.spans():
        values += [str(v) for v in (*span.attributes.values(), *span.resource.values(), span.name)]
    for name, points in session.receiver.metrics().items():
        values += [name, *(str(v) for attrs, _ in points for v in attrs.values())]
    values.append(session.scrape.text)
    text = "\n".join(values)
    for token in session.tokens.values():
        assert token not in text and token.split(".")[2] not in text
    for client in ("dev-read", "dev-full"):  # the client ids, which are also the subjects of these tokens
        assert client not in text
    assert "not-a-jwt" not in text


def test_the_start_line_names_where_telemetry_goes_without_secrets(session: Session) -> None:
    assert '"msg": "telemetry"' in session.output and "/v1/traces" in session.output
