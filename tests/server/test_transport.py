"""The MCP endpoint (server/_transport.py): one exchange per ASGI call, the SDK's answers kept.

A plain 2025-11-25 request is served through the SDK's single-exchange driver in the ASGI
task; anything unusual goes to the SDK's own stateless transport and gets its usual answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import Context, MCPServer

from auth.mcp import requires
from auth.mcp._gate import FORBIDDEN
from tests._live import running_server
from tests._odd_bodies import LONE, odd_bodies, outcome

from .conftest import (
    ENVELOPE,
    JSON_HEADERS,
    LEGACY_HEADERS,
    DevServer,
    build_dev_app,
    dev_server,
    modern_headers,
    tool_call,
)
from .test_dev_mode import dev_processes

pytestmark = pytest.mark.timeout(60)

READ = "api_read_access"


def add_probe_tools(mcp: MCPServer) -> None:
    @mcp.tool()
    @requires(READ)
    async def task_probe() -> dict[str, int]:
        """The id of the asyncio task serving this call."""
        task = asyncio.current_task()
        return {"task": id(task) if task is not None else 0}

    @mcp.tool()
    @requires(READ)
    async def explode() -> str:
        """Fails with an unexpected error whose text must not reach the client."""
        raise RuntimeError("internal detail 5e1c")


@contextlib.contextmanager
def probed_server(tmp_path: Path) -> Iterator[tuple[DevServer, list[int]]]:
    """A dev server whose outermost ASGI layer records the task of every HTTP request."""
    seen: list[int] = []
    built: list[DevServer] = []

    def factory(base_url: str) -> Any:
        built.append(build_dev_app(base_url, tmp_path / "notes.db", customize=add_probe_tools))
        inner = built[0].app

        async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                task = asyncio.current_task()
                seen.append(id(task) if task is not None else 0)
            await inner(scope, receive, send)

        return recording

    with running_server(factory=factory, lifespan="on"):
        yield built[0], seen


@pytest.fixture
def probed(tmp_path: Path) -> Iterator[tuple[DevServer, list[int]]]:
    with probed_server(tmp_path) as pair:
        yield pair


@pytest.mark.parametrize("modern", [False, True])
def test_tool_call_runs_in_the_asgi_task_of_its_request(probed: tuple[DevServer, list[int]], modern: bool) -> None:
    srv, seen = probed
    headers = modern_headers("task_probe") if modern else LEGACY_HEADERS
    token = srv.token("dev-read")
    assert srv.rpc(token, tool_call("whoami", {}, modern=False), LEGACY_HEADERS).status_code == 200  # keys fetched
    seen.clear()
    response = srv.rpc(token, tool_call("task_probe", {}, modern=modern), headers)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["isError"] is False
    assert [result["structuredContent"]["task"]] == seen


def test_legacy_call_answers_json_without_a_session(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    response = srv.rpc(srv.token("dev-read"), tool_call("whoami", {}, modern=False, id="abc"), LEGACY_HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "mcp-session-id" not in response.headers
    body = response.json()
    assert body["id"] == "abc" and body["jsonrpc"] == "2.0"
    assert body["result"]["structuredContent"]["client_id"] == "dev-read"


def test_legacy_initialize_is_answered_statelessly(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    response = srv.rpc(srv.token("dev-read"), init)
    assert response.status_code == 200
    assert response.json()["result"]["protocolVersion"] == "2025-11-25"
    assert "mcp-session-id" not in response.headers


def test_failing_tool_becomes_an_error_result_for_its_request(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    response = srv.rpc(srv.token("dev-read"), tool_call("explode", {}, modern=False, id=9), LEGACY_HEADERS)
    assert response.status_code == 200
    assert response.json()["id"] == 9 and response.json()["result"]["isError"] is True


def test_unknown_method_gets_the_sdks_method_not_found(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    response = srv.rpc(srv.token("dev-read"), {"jsonrpc": "2.0", "id": 7, "method": "no/such"}, LEGACY_HEADERS)
    assert response.status_code == 200
    assert response.json()["error"]["code"] == -32601 and response.json()["id"] == 7


def test_invalid_tool_arguments_get_an_error_not_a_crash(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    response = srv.rpc(srv.token("dev-read"), tool_call("get_note", {"note_id": "not a number"}, modern=False),
                       LEGACY_HEADERS)
    assert response.status_code == 200
    body = response.json()
    assert body.get("error") or body["result"]["isError"] is True


def test_notification_is_accepted_with_202(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    response = srv.rpc(srv.token("dev-read"), {"jsonrpc": "2.0", "method": "notifications/initialized"},
                       LEGACY_HEADERS)
    assert response.status_code == 202


@pytest.mark.parametrize(("raw", "code"), [(b"{not json", -32700), (b'{"jsonrpc":"2.0","id":1}', -32602)])
def test_bad_body_gets_the_sdks_400(probed: tuple[DevServer, list[int]], raw: bytes, code: int) -> None:
    srv, _ = probed
    response = srv.rpc(srv.token("dev-read"), None, LEGACY_HEADERS, raw=raw)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_json_rpc_batch_is_not_served_as_one_call(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    batch = [tool_call("whoami", {}, modern=False, id=1), tool_call("whoami", {}, modern=False, id=2)]
    response = srv.rpc(srv.token("dev-read"), batch, LEGACY_HEADERS)
    assert response.status_code == 400


def test_not_accepting_json_gets_406(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    response = srv.rpc(srv.token("dev-read"), tool_call("whoami", {}, modern=False),
                       {**LEGACY_HEADERS, "Accept": "text/event-stream"})
    assert response.status_code == 406


def test_wrong_content_type_gets_400(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    response = srv.rpc(srv.token("dev-read"), tool_call("whoami", {}, modern=False),
                       {**LEGACY_HEADERS, "Content-Type": "text/plain"})
    assert response.status_code == 400


@pytest.mark.parametrize("modern", [False, True])
def test_body_over_the_cap_gets_413(probed: tuple[DevServer, list[int]], modern: bool) -> None:
    srv, _ = probed
    padding = "x" * (srv.settings.max_body_bytes + 10)
    headers = modern_headers("whoami") if modern else LEGACY_HEADERS
    response = srv.rpc(srv.token("dev-read"), tool_call("whoami", {"pad": padding}, modern=modern), headers)
    assert response.status_code == 413


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_get_405_with_allow_post(probed: tuple[DevServer, list[int]], method: str) -> None:
    srv, _ = probed
    response = httpx.request(method, srv.mcp_url, headers={**JSON_HEADERS,
                             "Authorization": f"Bearer {srv.token('dev-read')}"}, timeout=10)
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_unknown_protocol_version_gets_the_sdks_rejection(probed: tuple[DevServer, list[int]]) -> None:
    srv, _ = probed
    response = srv.rpc(srv.token("dev-read"), tool_call("whoami", {}, modern=False),
                       {"MCP-Protocol-Version": "1999-01-01"})
    assert response.status_code == 400
    assert "error" in response.json()


def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(tmp_path: Path) -> None:
    with dev_processes(tmp_path) as (process,):
        token = process.token("dev-read", "dev-read-secret")
        body = json.dumps(tool_call("whoami", {}, modern=False)).encode()
        port = int(process.base_url.rsplit(":", 1)[1])
        head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(head + body[:10])  # the request is in flight: its body is not complete
            time.sleep(0.3)
            process.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert process.proc.poll() is None  # still draining
            sock.sendall(body[10:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b'"client_id":"dev-read"' in answer.replace(b'\\"', b'"').replace(b": ", b":")
        assert process.proc.wait(15) == 0, process.output()


CLEANUPS: list[str] = []


@contextlib.contextmanager
def bare_endpoint(front: Any = None, *, sdk_only: bool = False) -> Iterator[str]:
    """An `MCPEndpoint` over a small `MCPServer`, optionally behind ``front`` (or, with ``sdk_only``,
    the SDK's own app without the endpoint); yields the /mcp URL."""
    from server._transport import MCPEndpoint

    mcp = MCPServer("t", log_level="WARNING")

    @mcp.tool()
    async def echo(text: str) -> str:
        """Return the text."""
        return text

    @mcp.tool()
    async def explode() -> str:
        """Fails with an unexpected error."""
        raise RuntimeError("internal detail 5e1c")

    @mcp.tool()
    async def number(x: float) -> float:
        """Return the number (NaN and infinities included)."""
        return x

    @mcp.tool()
    async def lone_surrogate() -> str:
        """A str that is not valid Unicode, as a tool might return one."""
        return "half \ud800 a pair"

    @mcp.tool()
    async def with_cleanup(ctx: Context) -> str:
        """Registers a cleanup on its connection's exit stack (it must run after the call)."""
        ctx.request_context.session._connection.exit_stack.callback(CLEANUPS.append, "done")
        return "registered"

    sdk_app = mcp.streamable_http_app(json_response=True, stateless_http=True)
    endpoint = MCPEndpoint(mcp.session_manager, path="/mcp", fallback=sdk_app, max_body=4096)
    inner = sdk_app if sdk_only else front(endpoint) if front is not None else endpoint

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await sdk_app(scope, receive, send)  # runs the session manager
        else:
            await inner(scope, receive, send)

    with running_server(app, lifespan="on") as base_url:
        yield base_url + "/mcp"


def test_endpoint_uses_the_body_and_json_a_front_layer_left_in_the_scope() -> None:
    from server._transport import BODY_KEY, MESSAGE_KEY, read_body

    def front(endpoint: Any) -> Any:
        async def reads_first(scope: dict[str, Any], receive: Any, send: Any) -> None:
            body = await read_body(scope, receive, 4096)
            message = json.loads(body)
            message["id"] = 42  # what the endpoint answers shows which parse it used
            scope[BODY_KEY], scope[MESSAGE_KEY] = body, message

            async def drained() -> dict[str, Any]:
                return {"type": "http.disconnect"}

            await endpoint(scope, drained, send)

        return reads_first

    with bare_endpoint(front) as url:
        call = tool_call("echo", {"text": "hi"}, modern=False, id=1)
        response = httpx.post(url, json=call, headers={**JSON_HEADERS, **LEGACY_HEADERS}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == 42
    assert response.json()["result"]["content"][0]["text"] == "hi"


def test_endpoint_validates_arguments_through_the_sdk() -> None:
    with bare_endpoint() as url:
        call = tool_call("echo", {"text": 5}, modern=False)
        response = httpx.post(url, json=call, headers={**JSON_HEADERS, **LEGACY_HEADERS}, timeout=10)
    assert response.status_code == 200
    assert response.json()["result"]["isError"] is True


# --- 2026-07-28: served in the endpoint when every rung passes, the SDK's answer either way ----

def _modern(method: str, params: dict[str, Any] | None, *, id: object = 1, meta: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id is not _NO_ID:
        body["id"] = id
    if params is not None or meta:
        body["params"] = {**(params or {}), **({"_meta": ENVELOPE} if meta else {})}
    return body


_NO_ID = object()
_CALL_HEADERS = [("mcp-method", "tools/call"), ("mcp-protocol-version", "2026-07-28")]

MODERN_CASES: dict[str, tuple[object, list[tuple[str, str]]]] = {
    "call": (_modern("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
             [*_CALL_HEADERS, ("mcp-name", "echo")]),
    "call_invalid_arguments": (_modern("tools/call", {"name": "echo", "arguments": {"text": 5}}),
                               [*_CALL_HEADERS, ("mcp-name", "echo")]),
    "tool_raises": (_modern("tools/call", {"name": "explode", "arguments": {}}),
                    [*_CALL_HEADERS, ("mcp-name", "explode")]),
    "unknown_tool": (_modern("tools/call", {"name": "nope", "arguments": {}}),
                     [*_CALL_HEADERS, ("mcp-name", "nope")]),
    "list": (_modern("tools/list", None), [("mcp-method", "tools/list"), ("mcp-protocol-version", "2026-07-28")]),
    "unknown_method": (_modern("no/such", None), [("mcp-method", "no/such"), ("mcp-protocol-version", "2026-07-28")]),
    "string_id": (_modern("tools/list", None, id="x-1"),
                  [("mcp-method", "tools/list"), ("mcp-protocol-version", "2026-07-28")]),
    "method_header_mismatch": (_modern("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
                               [("mcp-method", "tools/list"), ("mcp-protocol-version", "2026-07-28"),
                                ("mcp-name", "echo")]),
    "name_header_mismatch": (_modern("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
                             [*_CALL_HEADERS, ("mcp-name", "explode")]),
    "version_header_mismatch": (_modern("tools/list", None),
                                [("mcp-method", "tools/list"), ("mcp-protocol-version", "2099-01-01")]),
    "duplicated_routing_header": (_modern("tools/list", None),
                                  [("mcp-method", "tools/list"), ("mcp-method", "tools/list"),
                                   ("mcp-protocol-version", "2026-07-28")]),
    "no_envelope": (_modern("tools/list", {}, meta=False),
                    [("mcp-method", "tools/list"), ("mcp-protocol-version", "2026-07-28")]),
    "null_id": (_modern("tools/list", None, id=None),
                [("mcp-method", "tools/list"), ("mcp-protocol-version", "2026-07-28")]),
    "notification": (_modern("notifications/cancelled", {"requestId": 1}, id=_NO_ID),
                     [("mcp-method", "notifications/cancelled"), ("mcp-protocol-version", "2026-07-28")]),
    "batch": ([_modern("tools/list", None)], [("mcp-method", "tools/list"), ("mcp-protocol-version", "2026-07-28")]),
    "not_json": (b"{not json", [("mcp-method", "tools/list"), ("mcp-protocol-version", "2026-07-28")]),
    "sse_only_accept": (_modern("tools/list", None), [("mcp-method", "tools/list"),
                                                      ("mcp-protocol-version", "2026-07-28"),
                                                      ("accept", "text/event-stream")]),
    "listen_without_sse": (_modern("subscriptions/listen", {}), [("mcp-method", "subscriptions/listen"),
                                                                 ("mcp-protocol-version", "2026-07-28"),
                                                                 ("accept", "application/json")]),
    "content_type_twice": (_modern("tools/list", None), [("mcp-method", "tools/list"),
                                                         ("mcp-protocol-version", "2026-07-28"),
                                                         ("content-type", "text/plain"),
                                                         ("content-type", "application/json")]),
}

_LEGACY = [("mcp-protocol-version", "2025-11-25")]

# Bodies the SDK's two parsers (pydantic_core for 2025-11-25, json.loads for 2026-07-28) treat
# differently (tests/_odd_bodies.py), plus a lone surrogate in an argument the tool echoes, a
# UTF-16 body without BOM, NaN and infinities in a result, and a result that is not valid Unicode.


def _odd_bodies(call: dict[str, Any], number: dict[str, Any], lone: dict[str, Any],
                ) -> dict[str, tuple[object, dict[str, str]]]:
    """Case name -> (body, extra header edits) for the parser-difference cases of one framing."""
    plain = json.dumps(call)
    assert plain.count('"hi"') == 1 and '"x": 1.5' in json.dumps(number)
    return {
        **{case: (raw, {}) for case, raw in odd_bodies(call).items() if case != "well_formed"},
        "surrogate_in_echoed_argument": (plain.replace('"hi"', f'"hi{LONE}"').encode(), {}),
        "utf8_encoded_surrogate_in_echoed_argument": (plain.encode().replace(b'"hi"', b'"hi\xed\xa0\x80"'), {}),
        "utf16le_body": (plain.encode("utf-16-le"), {}),
        "nan_in_result": (json.dumps(number).replace('"x": 1.5', '"x": NaN').encode(), {"mcp-name": "number"}),
        "infinity_in_result": (json.dumps(number).replace('"x": 1.5', '"x": Infinity').encode(),
                               {"mcp-name": "number"}),
        "surrogate_in_result": (json.dumps(lone).encode(), {"mcp-name": "lone_surrogate"}),
    }


def _with_headers(odd: dict[str, tuple[object, dict[str, str]]], base: list[tuple[str, str]],
                  ) -> dict[str, tuple[object, list[tuple[str, str]]]]:
    return {name: (body, [(k, edits.get(k, v)) for k, v in base]) for name, (body, edits) in odd.items()}


def _legacy(method: str, params: dict[str, Any] | None, *, id: object = 1) -> dict[str, Any]:
    return {**_modern(method, params, id=id, meta=False), **({} if params is not None else {"params": {}})}


LEGACY_CASES: dict[str, tuple[object, list[tuple[str, str]]]] = {
    "call": (_legacy("tools/call", {"name": "echo", "arguments": {"text": "hi"}}), _LEGACY),
    "call_invalid_arguments": (_legacy("tools/call", {"name": "echo", "arguments": {"text": 5}}), _LEGACY),
    "tool_raises": (_legacy("tools/call", {"name": "explode", "arguments": {}}), _LEGACY),
    "unknown_tool": (_legacy("tools/call", {"name": "nope", "arguments": {}}), _LEGACY),
    "list": (_legacy("tools/list", None), _LEGACY),
    "unknown_method": (_legacy("no/such", None), _LEGACY),
    "no_version_header": (_legacy("tools/list", None), []),
    "notification": (_legacy("notifications/initialized", None, id=_NO_ID), _LEGACY),
    "batch": ([_legacy("tools/list", None)], _LEGACY),
    "not_json": (b"{not json", _LEGACY),
    "null_id": (_legacy("tools/list", None, id=None), _LEGACY),
    "content_type_twice": (_legacy("tools/list", None), [*_LEGACY, ("content-type", "text/plain"),
                                                         ("content-type", "application/json")]),
    "accept_twice": (_legacy("tools/list", None), [*_LEGACY, ("accept", "text/event-stream"),
                                                   ("accept", "application/json, text/event-stream")]),
    **_with_headers(_odd_bodies(_legacy("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
                                _legacy("tools/call", {"name": "number", "arguments": {"x": 1.5}}),
                                _legacy("tools/call", {"name": "lone_surrogate", "arguments": {}})), _LEGACY),
}
_SDK_500 = LEGACY_CASES.pop("surrogate_in_result")  # the SDK's 2025 transport answers 500: tested below

MODERN_CASES.update(_with_headers(_odd_bodies(_modern("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
                                              _modern("tools/call", {"name": "number", "arguments": {"x": 1.5}}),
                                              _modern("tools/call", {"name": "lone_surrogate", "arguments": {}})),
                                  [*_CALL_HEADERS, ("mcp-name", "echo")]))


def _post(url: str, case: str, cases: dict[str, tuple[object, list[tuple[str, str]]]] = MODERN_CASES,
          ) -> tuple[int, object]:
    payload, extra = cases[case]
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    names = {k for k, _ in extra}
    headers = [*((k, v) for k, v in JSON_HEADERS.items() if k.lower() not in names), *extra]
    response = httpx.post(url, content=raw, headers=headers, timeout=10)
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    return response.status_code, body


@pytest.fixture(scope="module")
def endpoint_and_sdk() -> Iterator[tuple[str, str]]:
    """The same one-tool server twice: behind `MCPEndpoint`, and the SDK's own app alone."""
    with bare_endpoint() as ours, bare_endpoint(sdk_only=True) as sdk:
        yield ours, sdk


@pytest.mark.parametrize("case", sorted(MODERN_CASES))
def test_modern_request_gets_exactly_the_sdks_answer(endpoint_and_sdk: tuple[str, str], case: str) -> None:
    ours, sdk = endpoint_and_sdk
    status, body = _post(ours, case)
    assert (status, body) == _post(sdk, case)
    if case in ("call", "list", "string_id"):
        assert status == 200 and isinstance(body, dict) and "result" in body  # the fast path answered


@pytest.mark.parametrize("case", sorted(LEGACY_CASES))
def test_legacy_request_gets_exactly_the_sdks_answer(endpoint_and_sdk: tuple[str, str], case: str) -> None:
    ours, sdk = endpoint_and_sdk
    status, body = _post(ours, case, LEGACY_CASES)
    assert (status, body) == _post(sdk, case, LEGACY_CASES)
    if case in ("call", "list"):
        assert status == 200 and isinstance(body, dict) and "result" in body


@pytest.mark.parametrize("modern", [False, True])
def test_a_result_with_a_lone_surrogate_is_escaped_never_a_500(endpoint_and_sdk: tuple[str, str],
                                                                modern: bool) -> None:
    ours, sdk = endpoint_and_sdk
    cases = MODERN_CASES if modern else {"surrogate_in_result": _SDK_500}
    status, body = _post(ours, "surrogate_in_result", cases)
    assert status == 200, body
    assert isinstance(body, dict) and body["result"]["content"][0]["text"] == "half \ud800 a pair"
    # The SDK's 2026 entry escapes it too (json.dumps); its 2025 transport fails to serialize it (500).
    sdk_status, sdk_body = _post(sdk, "surrogate_in_result", cases)
    assert (sdk_status, sdk_body) == (200, body) if modern else sdk_status == 500


def test_modern_call_is_served_without_the_sdks_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    import server._transport as transport

    entered: list[str] = []
    sdk_entry = transport.handle_modern_request

    async def spy(*args: Any) -> None:
        entered.append("sdk")
        await sdk_entry(*args)

    monkeypatch.setattr(transport, "handle_modern_request", spy)
    with bare_endpoint() as url:
        assert _post(url, "call")[0] == 200
        assert entered == []
        assert _post(url, "method_header_mismatch")[0] == 400
        assert entered == ["sdk"]  # a refused rung is the SDK's to answer


@pytest.mark.parametrize("modern", [False, True])
def test_cleanup_a_tool_registers_runs_after_its_call(endpoint_and_sdk: tuple[str, str], modern: bool) -> None:
    ours, _ = endpoint_and_sdk
    CLEANUPS.clear()
    headers = {**JSON_HEADERS, **(modern_headers("with_cleanup") if modern else LEGACY_HEADERS)}
    response = httpx.post(ours, json=tool_call("with_cleanup", {}, modern=modern), headers=headers, timeout=10)
    assert response.status_code == 200 and response.json()["result"]["isError"] is False, response.text
    assert CLEANUPS == ["done"]  # the teardown skipped only when nothing was registered


# --- the whole server (token, tool gate, endpoint) against the bare SDK, on bodies its parsers differ on ----

def _note_bodies(modern: bool) -> dict[str, bytes]:
    """``create_note`` calls whose bodies the SDK's parser for the framing may refuse (issue 15, item 4)."""
    return odd_bodies(tool_call("create_note", {"title": "odd body", "body": "b"}, modern=modern))


def _sdk_twin(base_url: str) -> Any:
    """The bare SDK (its own stateless JSON app, no auth) with a ``create_note`` of the same signature."""
    mcp = MCPServer("twin", log_level="WARNING")

    @mcp.tool()
    async def create_note(title: str, body: str = "") -> dict[str, str]:
        """Stands in for the real tool: the SDK's answer depends on parsing and dispatch, not on this body."""
        return {"title": title}

    return mcp.streamable_http_app(json_response=True, stateless_http=True)


@pytest.fixture(scope="module")
def server_and_sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevServer, Path, str]]:
    db = tmp_path_factory.mktemp("odd") / "notes.db"
    with dev_server(db) as srv, running_server(factory=_sdk_twin, lifespan="on") as sdk:
        yield srv, db, sdk + "/mcp"


def _note_count(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])


_ODD_CASES = [(modern, case) for modern in (False, True) for case in _note_bodies(modern)]


@pytest.mark.parametrize(("modern", "case"), _ODD_CASES)
def test_odd_body_gets_the_sdks_answer_and_runs_a_tool_only_where_the_sdk_would(
    server_and_sdk: tuple[DevServer, Path, str], modern: bool, case: str
) -> None:
    srv, db, sdk = server_and_sdk
    raw = _note_bodies(modern)[case]
    headers = {**JSON_HEADERS, **(modern_headers("create_note") if modern else LEGACY_HEADERS)}
    expected = outcome(httpx.post(sdk, content=raw, headers=headers, timeout=10))
    before = _note_count(db)
    ours = outcome(srv.rpc(srv.token("dev-full"), None, headers, raw=raw))
    assert ours == expected
    assert ours[0] != 500
    assert _note_count(db) == before + (1 if expected[1] == "result" else 0)  # the tool ran iff the SDK's would


@pytest.mark.parametrize(("modern", "case"), _ODD_CASES)
def test_odd_body_with_a_read_token_never_writes(
    server_and_sdk: tuple[DevServer, Path, str], modern: bool, case: str
) -> None:
    srv, db, sdk = server_and_sdk
    raw = _note_bodies(modern)[case]
    headers = {**JSON_HEADERS, **(modern_headers("create_note") if modern else LEGACY_HEADERS)}
    expected = outcome(httpx.post(sdk, content=raw, headers=headers, timeout=10))
    before = _note_count(db)
    ours = outcome(srv.rpc(srv.token("dev-read"), None, headers, raw=raw))
    # Where the SDK would run the tool, the gate saw the same name and refused it; elsewhere a refusal,
    # the gate's (it saw create_note) or the SDK's.
    assert ours == (403, FORBIDDEN) if expected[1] == "result" else ours in ((403, FORBIDDEN), expected)
    assert _note_count(db) == before
