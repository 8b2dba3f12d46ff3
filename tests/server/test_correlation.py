"""One id per request on every log line of that request, and in the response's ``X-Request-Id``.

End to end on ``python -m server --dev`` (telemetry off): its stderr JSON lines are read back and
every line written while requests were served must carry the id of the request it belongs to.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server._correlation import CorrelationLayer, RequestIdFilter, current_request_id, request_id_of
from server._logging import AuditWriter, JsonFormatter
from tests._live import free_port

from .conftest import LEGACY_HEADERS, tool_call
from .test_dev_mode import DevProcess, server_env, start, stop, wait_healthy

pytestmark = pytest.mark.timeout(90)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
HEX32 = re.compile(r"[0-9a-f]{32}")


# --- where the id comes from (pure) ---------------------------------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ([], None),
    ([(b"traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode())], TRACE_ID),
    ([(b"x-request-id", b"abc-123"), (b"traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode())], TRACE_ID),
    ([(b"x-request-id", b"abc-123"), (b"x-vcap-request-id", b"vcap-1")], "abc-123"),
    ([(b"x-vcap-request-id", b"6f1c8a6e-0d7b-4c1e-9d7e-1f2a3b4c5d6e")], "6f1c8a6e-0d7b-4c1e-9d7e-1f2a3b4c5d6e"),
    ([(b"x-request-id", b"first"), (b"x-request-id", b"second")], "first"),
    ([(b"traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")], None),  # the invalid all-zero trace id
    ([(b"traceparent", f"ff-{TRACE_ID}-00f067aa0ba902b7-01".encode())], None),  # version ff is invalid
    ([(b"traceparent", f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01".encode())], None),
    ([(b"traceparent", b"garbage"), (b"x-request-id", b"fallback")], "fallback"),
    ([(b"x-request-id", b"x" * 128)], "x" * 128),
    ([(b"x-request-id", b"x" * 129)], None),  # too long
    ([(b"x-request-id", b"with space")], None),
    ([(b"x-request-id", b'quote"')], None),
    ([(b"x-request-id", b"-leading-dash")], None),
    ([(b"x-request-id", "caf\u00e9".encode())], None),
    ([(b"x-request-id", b"")], None),
])
def test_request_id_of_takes_a_safe_id_or_none(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert request_id_of(headers) == expected


async def test_the_layer_binds_the_id_for_the_request_and_returns_it() -> None:
    seen: list[str | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(current_request_id())
        await send({"type": "http.response.start", "status": 204, "headers": [(b"x-other", b"1")]})
        await send({"type": "http.response.body", "body": b""})

    layer = CorrelationLayer(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=layer), base_url="http://rs") as client:
        given = await client.get("/", headers={"X-Request-Id": "given-1"})
        made = await client.get("/", headers={"X-Request-Id": "bad id!"})
    assert given.headers["x-request-id"] == "given-1" and given.headers["x-other"] == "1"
    assert HEX32.fullmatch(made.headers["x-request-id"])
    assert seen == ["given-1", made.headers["x-request-id"]]
    assert current_request_id() is None  # unbound after the request


def test_formatter_and_audit_writer_write_the_id_after_msg() -> None:
    record = logging.getLogger("auth").makeRecord("auth", logging.INFO, __file__, 0, "auth denied: %s", ("x",), None)
    record.request_id = "rid-1"
    line = JsonFormatter().format(record)
    assert list(json.loads(line))[:5] == ["ts", "level", "logger", "msg", "request_id"]
    assert json.loads(line)["request_id"] == "rid-1"

    stream = io.StringIO()
    handle = CorrelationLayer.bind("rid-2")
    try:
        AuditWriter(stream, clock=lambda: 0.0)("tool call", {"tool": "t", "request_id": "forged"})
        audit = logging.getLogger("audit").makeRecord("audit", logging.INFO, __file__, 0, "tool call", None, None,
                                                      extra={"audit": {"tool": "t"}})
        assert RequestIdFilter().filter(audit)
    finally:
        CorrelationLayer.unbind(handle)
    written = json.loads(stream.getvalue())
    assert (written["request_id"], written["tool"]) == ("rid-2", "t")  # a field cannot replace the line's id
    assert json.loads(JsonFormatter().format(audit))["request_id"] == "rid-2"


def test_without_a_request_no_id_is_written() -> None:
    record = logging.getLogger("server").makeRecord("server", logging.INFO, __file__, 0, "listening", None, None)
    assert RequestIdFilter().filter(record) and record.request_id is None  # type: ignore[attr-defined]
    assert "request_id" not in json.loads(JsonFormatter().format(record))


# --- end to end: the server's stderr ----------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevProcess, dict[str, httpx.Response], Path]]:
    tmp = tmp_path_factory.mktemp("correlation")
    port = free_port()
    proc, log = start(tmp, "server", server_env(tmp, PORT=str(port)))
    process = DevProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_healthy(proc, process.base_url, log)
        base = process.base_url
        read, full = process.token("dev-read", "dev-read-secret"), process.token("dev-full", "dev-full-secret")
        vcap = str(uuid.uuid4())

        def post(token: str | None, body: dict[str, Any], **headers: str) -> httpx.Response:
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.post(base + "/mcp", json=body, timeout=10, headers={
                **auth, **LEGACY_HEADERS, "Accept": "application/json, text/event-stream", **headers})

        steps = {
            "req-list": post(read, tool_call("list_notes", {}, modern=False), **{"X-Request-Id": "req-list"}),
            "req-401": post("not-a-jwt", tool_call("whoami", {}, modern=False), **{"X-Request-Id": "req-401"}),
            "req-403": post(read, tool_call("create_note", {"title": "t"}, modern=False),
                            **{"X-Request-Id": "req-403"}),
            "req-tools": post(read, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                              **{"X-Request-Id": "req-tools"}),
            vcap: post(read, tool_call("whoami", {}, modern=False), **{"X-Vcap-Request-Id": vcap}),
            TRACE_ID: post(read, tool_call("whoami", {}, modern=False),
                           traceparent=f"00-{TRACE_ID}-00f067aa0ba902b7-01", **{"X-Request-Id": "not-this"}),
            "bad": post(read, tool_call("whoami", {}, modern=False), **{"X-Request-Id": "x" * 300}),
        }
        for path in tmp.glob("notes.db*"):  # the store breaks: a warning and a tool error, one id
            path.unlink()
        (tmp / "notes.db").mkdir()
        steps["req-store"] = post(full, tool_call("create_note", {"title": "t"}, modern=False),
                                  **{"X-Request-Id": "req-store"})
        shutil.rmtree(tmp / "notes.db")
    finally:
        assert stop(proc) == 0  # every line is written once the process has exited
    yield process, steps, log


def _lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_each_response_names_its_request_id(served: tuple[DevProcess, dict[str, httpx.Response], Path]) -> None:
    _, steps, _ = served
    answered = {step: r.headers["x-request-id"] for step, r in steps.items()}
    made_up = answered.pop("bad")
    assert HEX32.fullmatch(made_up) and made_up != "x" * 300
    assert answered == {step: step for step in answered}  # X-Request-Id, X-Vcap-Request-Id, the trace id
    assert [r.status_code for r in steps.values()] == [200, 401, 403, 200, 200, 200, 200, 200]


def test_every_log_line_of_a_request_carries_its_id(
        served: tuple[DevProcess, dict[str, httpx.Response], Path]) -> None:
    _, steps, log = served
    lines = _lines(log)
    first = next(i for i, line in enumerate(lines) if line.get("msg") == "Application startup complete.")
    last = next(i for i, line in enumerate(lines) if line.get("msg") == "Shutting down")
    serving = lines[first + 1:last]
    assert serving and all(line.get("request_id") for line in serving), [
        line for line in serving if not line.get("request_id")]
    ids = {step: r.headers["x-request-id"] for step, r in steps.items()}

    def of(step: str) -> list[tuple[str, str]]:
        return [(line["logger"], line["msg"]) for line in serving if line["request_id"] == ids[step]]

    assert ("audit", "tool call") in of("req-list")
    assert [m for m in of("req-401") if m[0] == "auth"] == [("auth", of("req-401")[0][1])]
    assert of("req-401")[0][1].startswith("auth denied: status=401")
    assert of("req-403") == [("audit", "tool call denied")]
    assert of("req-tools") == [("audit", "mcp request")]
    assert of(next(s for s in steps if s not in ("req-list", "req-401", "req-403", "req-tools", TRACE_ID, "bad",
                                               "req-store"))) == [("audit", "tool call")]
    assert of(TRACE_ID) == [("audit", "tool call")] and of("bad") == [("audit", "tool call")]
    store = of("req-store")
    assert ("tools.store", "notes store unavailable: sqlite3.OperationalError: unable to open database file") in store
    assert store[-1] == ("audit", "tool call")
    assert "x" * 300 not in log.read_text()  # a refused id is never written


def test_the_audit_line_covers_every_mcp_request(
        served: tuple[DevProcess, dict[str, httpx.Response], Path]) -> None:
    _, steps, log = served
    audit = [line for line in _lines(log) if line.get("logger") == "audit"]
    # One per MCP request that got past authentication, whatever the method or outcome; a 401 is
    # the auth layer's "auth denied" line (see above).
    assert len(audit) == len(steps) - 1
    listed = [line for line in audit if line["msg"] == "mcp request"]
    assert [(line["method"], line["client_id"], line["decision"]) for line in listed] == [
        ("tools/list", "dev-read", "allowed")]
