"""The audit trail: one ``audit`` record per MCP request, and no credential in any log record.

The server runs in this process (a uvicorn thread), so pytest's caplog sees every record
the server, the auth layer, the SDK, uvicorn and the HTTP clients emit.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from server._logging import JsonFormatter

from .conftest import LEGACY_HEADERS, MODES, SECRETS, dev_server, mcp_client, tool_call

pytestmark = pytest.mark.timeout(60)

PRIVATE_TITLE = "title-that-is-personal-data-7f3a"
PRIVATE_BODY = "body-that-is-personal-data-91c2"


@pytest.fixture
def capture_everything(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG on the root and on every logger that already has its own level."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The tool calls' audit records (allowed, refused, failed)."""
    return [r.audit for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "audit" and r.getMessage().startswith("tool call")]


def request_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The audit records of every other MCP request."""
    return [r.audit for r in caplog.records if r.name == "audit" and r.getMessage() == "mcp request"]  # type: ignore[attr-defined]


def rendered(record: logging.LogRecord) -> str:
    """Everything a handler could write: the formatted line, the raw args, every extra field."""
    formatter = JsonFormatter()
    return "\n".join([formatter.format(record), repr(record.args), repr(vars(record))])


@pytest.mark.parametrize("mode", MODES)
async def test_each_tool_call_writes_one_audit_record_with_caller_tool_decision_and_duration(
    tmp_path: Path, capture_everything: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog = capture_everything
    with dev_server(tmp_path / "notes.db") as srv:
        full, read = srv.token("dev-full"), srv.token("dev-read")
        caplog.clear()
        async with mcp_client(srv.mcp_url, full, mode) as client:
            await client.list_tools()  # not a tool call: its own audit record ("mcp request")
            note = (await client.call_tool("create_note", {"title": PRIVATE_TITLE, "body": PRIVATE_BODY}))
            assert not note.is_error
            await client.call_tool("list_notes", {})
            missing = await client.call_tool("get_note", {"note_id": 999_999})
            assert missing.is_error
            await client.call_tool("whoami", {})
        async with mcp_client(srv.mcp_url, read, mode) as client:
            with pytest.raises(MCPError):
                await client.call_tool("create_note", {"title": PRIVATE_TITLE})
            await client.call_tool("list_notes", {})

    entries = audit_records(caplog)
    assert [(e["client_id"], e["tool"], e["decision"]) for e in entries] == [
        ("dev-full", "create_note", "allowed"),
        ("dev-full", "list_notes", "allowed"),
        ("dev-full", "get_note", "tool_error"),
        ("dev-full", "whoami", "allowed"),
        ("dev-read", "create_note", "denied"),
        ("dev-read", "list_notes", "allowed"),
    ]
    for entry in entries:
        assert isinstance(entry["duration_ms"], float | int) and 0 <= entry["duration_ms"] < 10_000, entry
    denied = entries[4]
    assert denied["missing"] == ["api_write_access"] and denied["status"] == 403
    others = request_records(caplog)
    assert ("dev-full", "tools/list", "allowed") in [(e["client_id"], e["method"], e["decision"]) for e in others]
    if mode == "legacy":  # the handshake is a request too, one per session
        assert [e["client_id"] for e in others if e["method"] == "initialize"] == ["dev-full", "dev-read"]
    assert all(isinstance(e["duration_ms"], float | int) and "tool" not in e for e in others)

    audit_text = "\n".join(rendered(r) for r in caplog.records if r.name == "audit")
    assert PRIVATE_TITLE not in audit_text and PRIVATE_BODY not in audit_text  # no argument values


def test_audit_line_renders_as_one_json_object_with_the_fields(
    tmp_path: Path, capture_everything: pytest.LogCaptureFixture
) -> None:
    caplog = capture_everything
    with dev_server(tmp_path / "notes.db") as srv:
        caplog.clear()
        response = srv.rpc(srv.token("dev-read"), tool_call("whoami", {}, modern=False), LEGACY_HEADERS)
        assert response.status_code == 200
    (record,) = [r for r in caplog.records if r.name == "audit"]
    line = json.loads(JsonFormatter().format(record))
    assert line["logger"] == "audit" and line["level"] == "info"
    assert {k: line[k] for k in ("client_id", "tool", "decision")} == {
        "client_id": "dev-read", "tool": "whoami", "decision": "allowed"}
    assert isinstance(line["duration_ms"], float | int)


@pytest.mark.parametrize("mode", MODES)
async def test_no_log_record_contains_an_access_token_or_client_secret(
    tmp_path: Path, capture_everything: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog = capture_everything
    with dev_server(tmp_path / "notes.db") as srv:
        tokens = {cid: srv.token(cid) for cid in ("dev-full", "dev-read", "dev-none")}
        expired = srv.issuer.mint("dev-full", lifetime=-600)
        head, payload, signature = tokens["dev-full"].split(".")
        tampered = f"{head}.{payload}.{signature[::-1]}"
        for bad in (expired, tampered, "opaque-token-value-3b9d"):
            assert srv.rpc(bad, tool_call("whoami", {}, modern=False), LEGACY_HEADERS).status_code == 401
        refused = httpx.post(srv.issuer.token_endpoint, data={"grant_type": "client_credentials"},
                             auth=("dev-full", "wrong-secret-e41f"))
        assert refused.status_code == 401
        for cid, token in tokens.items():
            async with mcp_client(srv.mcp_url, token, mode) as client:
                await client.list_tools()
                await client.call_tool("whoami", {})
                with pytest.raises(MCPError) if cid != "dev-full" else contextlib.nullcontext():
                    await client.call_tool("create_note", {"title": "t"})

    records = caplog.records
    # The check below is only meaningful if the run was actually logged in detail.
    assert any(r.levelno == logging.DEBUG for r in records)
    assert any(r.name == "audit" for r in records)
    assert any(r.name == "auth" and "auth denied" in r.getMessage() for r in records)
    assert any(r.name.startswith("server._dev_issuer") for r in records)

    secrets = [*SECRETS.values(), "wrong-secret-e41f"]
    secrets += [base64.b64encode(f"{cid}:{s}".encode()).decode() for cid, s in SECRETS.items()]
    credentials = [*tokens.values(), expired, tampered, "opaque-token-value-3b9d"]
    credentials += [t.split(".")[2] for t in (*tokens.values(), expired, tampered)]  # signatures alone
    for record in records:
        text = rendered(record)
        for value in (*secrets, *credentials):
            assert value not in text, f"{record.name}: {record.getMessage()[:200]}"



# --- the server's own stderr: AuditWriter, straight to the stream -------------------------------

class _Lock:
    def __init__(self) -> None:
        self.entered = 0

    def __enter__(self) -> None:
        self.entered += 1

    def __exit__(self, *exc: object) -> None:
        return None


def _formatted(msg: str, fields: dict[str, object], created: float) -> dict[str, object]:
    """The line `JsonFormatter` writes for this record, parsed."""
    record = logging.getLogger("audit").makeRecord("audit", logging.INFO, __file__, 0, msg, None, None,
                                                   extra={"audit": fields})
    record.created, record.msecs = created, (created - int(created)) * 1000
    return json.loads(JsonFormatter().format(record))


@pytest.mark.parametrize("fields", [
    {"client_id": "dev-read", "tool": "whoami", "decision": "allowed", "duration_ms": 0.12},
    {"client_id": None, "tool": 'quote " back \\ slash \u00e9 \n', "ok": True, "n": 3},
    {"missing": ["api_write_access"], "status": 403},  # not flat: the general encoder
    {"duration_ms": float("nan")},  # not finite: the general encoder (as JsonFormatter writes it)
])
def test_audit_writer_writes_what_the_json_formatter_renders(fields: dict[str, object]) -> None:
    from server._logging import AuditWriter

    stream, lock = io.StringIO(), _Lock()
    created = 1_764_500_000.25
    AuditWriter(stream, lock=lock, clock=lambda: created)("tool call", fields)
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1 and lock.entered == 1
    expected = json.dumps(_formatted("tool call", fields, created))
    assert json.loads(text, parse_constant=str) == json.loads(expected, parse_constant=str)  # NaN == NaN here
    assert json.loads(text)["ts"] == "2025-11-30T10:53:20.250Z"
    if "nan" not in text.lower():  # byte for byte what json.dumps writes, whichever path made the line
        assert text == json.dumps(_formatted("tool call", fields, created)) + "\n"


def test_audit_writer_does_not_let_fields_replace_the_lines_own() -> None:
    from server._logging import AuditWriter

    stream = io.StringIO()
    AuditWriter(stream, clock=lambda: 0.0)("tool call", {"msg": "forged", "level": "error", "tool": "x"})
    line = json.loads(stream.getvalue())
    assert (line["msg"], line["level"], line["logger"], line["tool"]) == ("tool call", "info", "audit", "x")


def test_server_process_writes_one_json_audit_line_per_call_to_stderr(tmp_path: Path) -> None:
    from .test_dev_mode import dev_processes

    with dev_processes(tmp_path) as (process,):
        token = process.token("dev-read", "dev-read-secret")
        for body in (tool_call("whoami", {}, modern=False), tool_call("list_notes", {}, modern=False)):
            response = httpx.post(process.base_url + "/mcp", json=body, timeout=10, headers={
                "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                **LEGACY_HEADERS})
            assert response.status_code == 200, response.text
        deadline = time.monotonic() + 10
        while process.output().count('"logger": "audit"') < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the lines are flushed per write; the file may lag the response a moment
        output = process.output()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    audit = [line for line in lines if line.get("logger") == "audit"]
    assert [(a["client_id"], a["tool"], a["decision"]) for a in audit] == [
        ("dev-read", "whoami", "allowed"), ("dev-read", "list_notes", "allowed")]
    assert all(a["level"] == "info" and a["msg"] == "tool call" and a["ts"].endswith("Z") for a in audit)
    assert token not in output and token.split(".")[2] not in output
