"""`protect(mcp, settings)` on the user's path: their MCPServer, written as a file outside the checkout.

The app (``APP`` below) has tools, resources, a resource template and prompts, marked with
`requires` the documented way, and registers a few more *after* `protect()`. It runs as separate
``python -m uvicorn`` processes: two instances of it behind one public URL, and a third with the
``unmarked="deny"`` policy. Each is attacked over real HTTP on 127.0.0.1 with tokens from the local
IdP (``tests/_idp.py``), in both protocol generations (2025-11-25 plain JSON-RPC, 2026-07-28 with
the ``_meta`` envelope and the ``Mcp-Method``/``Mcp-Name`` headers); every refusal is asserted by
HTTP status, the challenge's error code and ``scope``, and the JSON-RPC error code.

- Issue 16 item 2: `protect()` serves stateless JSON by default, so a one-shot request (curl) is
  answered, and a client alternating between the two instances without a session works.
- Item 3: what is registered after `protect()` is listed and refused like what came before.
- Item 4: resources, templates and prompts are filtered from the lists and refused before dispatch.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from auth.mcp import protect, requires
from auth.mcp._gate import FORBIDDEN
from tests._idp import IdP
from tests._live import free_port, running_server, stop_process

from ._cases import AUDIENCE
from ._support import issuer_config, settings_for

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
PUBLIC = "https://notes.example/mcp"  # the load balancer's URL in front of the instances
READ, WRITE, ADMIN = "api_read_access", "api_write_access", "api_admin"
GENERATIONS = ("2025-11-25", "2026-07-28")
MODES = ("legacy", "2026-07-28")
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "probe", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}

APP = '''
import os

from mcp.server.mcpserver import MCPServer
from mcp.types import Completion
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auth import current_token, load_settings
from auth.mcp import protect, requires

mcp = MCPServer("notes")


@mcp.tool()
def whoami() -> dict[str, object]:
    return {"client_id": current_token().client_id, "pid": os.getpid()}


@mcp.tool(name="archive")
@requires("api_write_access")
def archive_note(note_id: int) -> dict[str, int]:
    return {"archived": note_id, "pid": os.getpid()}


@mcp.resource("notes://readme")
def readme() -> str:
    return "how to use the notes"


@mcp.resource("notes://secret")
@requires("api_write_access")
def secret() -> str:
    return "the secret"


@mcp.resource("notes://note/{note_id}")
@requires("api_read_access")
def note(note_id: str) -> str:
    return f"note {note_id}"


@mcp.resource("notes://draft/{note_id}")
@requires("api_write_access")
async def draft(note_id: str) -> str:
    return f"draft {note_id}"


@mcp.prompt()
def greet(name: str) -> str:
    return f"Say hello to {name}"


@mcp.prompt()
@requires("api_write_access")
def rewrite(text: str) -> str:
    return f"Rewrite: {text}"


@mcp.completion()
async def complete(ref, argument, context):
    return Completion(values=[f"{argument.value}-completed"])


async def health(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "pid": os.getpid()})


app = protect(mcp, load_settings(os.environ), unmarked=os.environ.get("APP_UNMARKED", "open"),
              routes=[Route("/health", health)])


# Registered after protect(): gated all the same.
@mcp.tool()
@requires("api_admin")
def purge() -> str:
    return "purged"


@mcp.resource("notes://audit")
@requires("api_admin")
def audit_log() -> str:
    return "who did what"


@mcp.prompt()
@requires("api_admin")
def escalate(issue: str) -> str:
    return f"Escalate: {issue}"
'''


@dataclass
class Served:
    base_url: str
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def mcp_url(self) -> str:
        return self.base_url + "/mcp"

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _start(folder: Path, env: dict[str, str]) -> Served:
    port = free_port()
    log = folder / f"uvicorn-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    return Served(f"http://127.0.0.1:{port}", log, proc)


def _wait(served: Served, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert served.proc.poll() is None, served.text()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(served.base_url + "/health", timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"no /health within {timeout} s:\n{served.text()}"
        time.sleep(0.1)


@dataclass
class Apps:
    first: Served  # two instances of app.py behind PUBLIC, unmarked="open"
    second: Served
    strict: Served  # app.py with APP_UNMARKED=deny


@pytest.fixture(scope="module")
def apps(idp: IdP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    folder = tmp_path_factory.mktemp("protect-user-app")  # outside the checkout
    assert REPO not in folder.parents
    (folder / "app.py").write_text(APP)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        "PYTHONPATH": str(REPO),
        "MCP_AUTH_ISSUER": idp.issuer,
        "MCP_AUTH_AUDIENCE": AUDIENCE,
        "MCP_RESOURCE_URL": PUBLIC,
    }
    started: list[Served] = []
    try:
        for extra in ({}, {}, {"APP_UNMARKED": "deny"}):
            started.append(_start(folder, env | extra))
        for served in started:
            _wait(served)
        yield Apps(*started)
    finally:
        for served in started:
            stop_process(served.proc)
    logs = "".join(s.text() for s in started)
    assert "Traceback" not in logs, logs[-4000:]


# --- requests as clients send them ----------------------------------------------------------------


def rpc(method: str, params: dict[str, Any], generation: str, id: int = 1) -> tuple[dict[str, Any], dict[str, str]]:
    """A JSON-RPC body and the headers of ``generation`` (no session, no initialize)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": generation}
    if generation == "2026-07-28":
        params = {**params, "_meta": ENVELOPE}
        headers["Mcp-Method"] = method
        name = params.get("uri", params.get("name"))
        if method in ("tools/call", "prompts/get", "resources/read"):
            headers["Mcp-Name"] = str(name)
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": params}, headers


def post(url: str, token: str | None, method: str, params: dict[str, Any], generation: str,
         headers: dict[str, str] | None = None) -> httpx.Response:
    body, sent = rpc(method, params, generation)
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(url, content=json.dumps(body), headers=sent | (headers or {}), timeout=10)


def challenge(response: httpx.Response) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', response.headers.get("www-authenticate", "")))


def assert_forbidden(response: httpx.Response, scope: str | None) -> None:
    """HTTP 403, ``insufficient_scope`` in the challenge (with ``scope`` when one would do), and the
    JSON-RPC error with our code in the body."""
    assert response.status_code == 403, (response.status_code, response.text[:300])
    params = challenge(response)
    assert params["error"] == "insufficient_scope"
    assert params.get("scope") == scope
    assert params["resource_metadata"] == "https://notes.example/.well-known/oauth-protected-resource/mcp"
    error = response.json()["error"]
    assert error["code"] == FORBIDDEN
    assert error["data"]["error"] == "insufficient_scope"
    assert error["data"]["status"] == 403


def result(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert "result" in body, body
    return body["result"]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def client(url: str, token: str, mode: str, *, transport: httpx2.AsyncBaseTransport | None = None
                 ) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(20.0),
                                  transport=transport) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as connected:
            yield connected


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer without affinity: each request goes to the next instance."""

    def __init__(self, *base_urls: str) -> None:
        self._targets = itertools.cycle([httpx2.URL(u) for u in base_urls])
        self._inner = httpx2.AsyncHTTPTransport()
        self.served: list[tuple[int, str, int]] = []  # (port, HTTP method, status)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        target = next(self._targets)
        request.url = request.url.copy_with(host=target.host, port=target.port)
        request.headers["host"] = f"{target.host}:{target.port}"
        response = await self._inner.handle_async_request(request)
        self.served.append((target.port or 0, request.method, response.status_code))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _port(served: Served) -> int:
    return int(served.base_url.rsplit(":", 1)[1])


# --- item 2: stateless JSON by default -------------------------------------------------------------


@pytest.mark.parametrize("version", [None, "2025-11-25"])
def test_one_shot_request_without_a_session_is_answered(apps: Apps, idp: IdP, version: str | None) -> None:
    """The README's curl: one POST, no initialize, no session id; JSON back (not SSE, not -32600)."""
    headers = {"Authorization": f"Bearer {idp.mint(ias_apis=[READ])}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"} | ({"MCP-Protocol-Version": version} if version else {})
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    response = httpx.post(apps.first.mcp_url, content=json.dumps(body), headers=headers, timeout=10)
    assert response.status_code == 200, response.text[:300]
    assert "mcp-session-id" not in response.headers
    called = result(response)
    assert not called["isError"]
    assert called["structuredContent"]["client_id"] == "consumer-client"


@pytest.mark.parametrize("generation", GENERATIONS)
def test_raw_requests_alternating_between_two_instances_need_no_session(
    apps: Apps, idp: IdP, generation: str
) -> None:
    token = idp.mint()
    pids = []
    for step, served in zip(range(6), itertools.cycle([apps.first, apps.second])):
        called = result(post(served.mcp_url, token, "tools/call", {"name": "archive", "arguments": {"note_id": step}},
                             generation))
        assert not called["isError"], called
        assert called["structuredContent"]["archived"] == step
        pids.append(called["structuredContent"]["pid"])
        listed = result(post(served.mcp_url, token, "resources/list", {}, generation))
        assert "notes://secret" in {r["uri"] for r in listed["resources"]}
    assert len(set(pids)) == 2 and all(a != b for a, b in itertools.pairwise(pids))  # two processes, alternating


@pytest.mark.parametrize("generation", GENERATIONS)
def test_both_instances_refuse_a_reader_the_write_tool(apps: Apps, idp: IdP, generation: str) -> None:
    for served in (apps.first, apps.second):
        response = post(served.mcp_url, idp.mint(ias_apis=[READ]), "tools/call",
                        {"name": "archive", "arguments": {"note_id": 1}}, generation)
        assert_forbidden(response, WRITE)


@pytest.mark.parametrize("mode", MODES)
async def test_mcp_client_alternating_between_two_instances_without_affinity(
    apps: Apps, idp: IdP, mode: str
) -> None:
    balancer = RoundRobin(apps.first.base_url, apps.second.base_url)
    async with client(apps.first.mcp_url, idp.mint(), mode, transport=balancer) as connected:
        pids = set()
        for step in range(4):
            called = await connected.call_tool("archive", {"note_id": step})
            assert not called.is_error, called
            pids.add(called.structured_content["pid"])
        read = await connected.read_resource("notes://note/7")
        assert read.contents[0].text == "note 7"
        prompt = await connected.get_prompt("rewrite", {"text": "x"})
        assert "Rewrite: x" in str(prompt.messages[0].content)
    assert len(pids) == 2  # the tool calls ran in both processes
    posts = [(port, status) for port, method, status in balancer.served if method == "POST"]
    assert {port for port, _ in posts} == {_port(apps.first), _port(apps.second)}
    assert all(status < 400 for _, status in posts), balancer.served  # no "Missing session ID" anywhere


# --- item 3: registered after protect() ------------------------------------------------------------


@pytest.mark.parametrize("generation", GENERATIONS)
def test_tool_registered_after_protect_is_hidden_from_and_refused_to_a_reader(
    apps: Apps, idp: IdP, generation: str
) -> None:
    reader = idp.mint(ias_apis=[READ, WRITE])
    listed = result(post(apps.first.mcp_url, reader, "tools/list", {}, generation))
    assert {t["name"] for t in listed["tools"]} == {"whoami", "archive"}
    assert_forbidden(post(apps.first.mcp_url, reader, "tools/call", {"name": "purge", "arguments": {}}, generation),
                     ADMIN)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_resource_and_prompt_registered_after_protect_are_gated(apps: Apps, idp: IdP, generation: str) -> None:
    writer = idp.mint(ias_apis=[READ, WRITE])
    resources = result(post(apps.first.mcp_url, writer, "resources/list", {}, generation))
    assert "notes://audit" not in {r["uri"] for r in resources["resources"]}
    prompts = result(post(apps.first.mcp_url, writer, "prompts/list", {}, generation))
    assert "escalate" not in {p["name"] for p in prompts["prompts"]}
    assert_forbidden(post(apps.first.mcp_url, writer, "resources/read", {"uri": "notes://audit"}, generation), ADMIN)
    assert_forbidden(post(apps.first.mcp_url, writer, "prompts/get",
                          {"name": "escalate", "arguments": {"issue": "x"}}, generation), ADMIN)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_what_was_registered_after_protect_serves_a_token_granting_it(apps: Apps, idp: IdP, generation: str) -> None:
    admin = idp.mint(ias_apis=[ADMIN])
    tools = result(post(apps.first.mcp_url, admin, "tools/list", {}, generation))
    assert {t["name"] for t in tools["tools"]} == {"whoami", "purge"}
    assert result(post(apps.first.mcp_url, admin, "tools/call", {"name": "purge", "arguments": {}},
                       generation))["structuredContent"] == {"result": "purged"}
    read = result(post(apps.first.mcp_url, admin, "resources/read", {"uri": "notes://audit"}, generation))
    assert read["contents"][0]["text"] == "who did what"
    got = result(post(apps.first.mcp_url, admin, "prompts/get", {"name": "escalate", "arguments": {"issue": "x"}},
                      generation))
    assert "Escalate: x" in json.dumps(got)


def test_permissions_registered_after_protect_are_advertised(apps: Apps) -> None:
    doc = httpx.get(apps.first.base_url + "/.well-known/oauth-protected-resource/mcp", timeout=10).json()
    assert doc["scopes_supported"] == sorted([ADMIN, READ, WRITE])  # the template's read, the late admin
    response = httpx.post(apps.first.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10)
    assert response.status_code == 401
    assert "error" not in challenge(response)
    assert challenge(response)["scope"].split() == sorted([ADMIN, READ, WRITE])


@pytest.mark.parametrize("mode", MODES)
async def test_mcp_client_sees_late_registrations_filtered_and_refused(apps: Apps, idp: IdP, mode: str) -> None:
    async with client(apps.second.mcp_url, idp.mint(ias_apis=[READ, WRITE]), mode) as connected:
        assert "purge" not in {t.name for t in (await connected.list_tools()).tools}
        with pytest.raises(MCPError):
            await connected.call_tool("purge", {})
        with pytest.raises(MCPError):
            await connected.read_resource("notes://audit")


# --- item 4: resources, templates and prompts gated ------------------------------------------------


@pytest.mark.parametrize("generation", GENERATIONS)
def test_reader_lists_only_the_resources_templates_and_prompts_it_may_use(
    apps: Apps, idp: IdP, generation: str
) -> None:
    reader = idp.mint(ias_apis=[READ])
    resources = result(post(apps.first.mcp_url, reader, "resources/list", {}, generation))
    assert {r["uri"] for r in resources["resources"]} == {"notes://readme"}
    templates = result(post(apps.first.mcp_url, reader, "resources/templates/list", {}, generation))
    assert {t["uriTemplate"] for t in templates["resourceTemplates"]} == {"notes://note/{note_id}"}
    prompts = result(post(apps.first.mcp_url, reader, "prompts/list", {}, generation))
    assert {p["name"] for p in prompts["prompts"]} == {"greet"}


@pytest.mark.parametrize("generation", GENERATIONS)
def test_writer_lists_every_resource_template_and_prompt_it_may_use(apps: Apps, idp: IdP, generation: str) -> None:
    writer = idp.mint(ias_apis=[READ, WRITE])
    resources = result(post(apps.first.mcp_url, writer, "resources/list", {}, generation))
    assert {r["uri"] for r in resources["resources"]} == {"notes://readme", "notes://secret"}
    templates = result(post(apps.first.mcp_url, writer, "resources/templates/list", {}, generation))
    assert {t["uriTemplate"] for t in templates["resourceTemplates"]} == {"notes://note/{note_id}",
                                                                         "notes://draft/{note_id}"}
    prompts = result(post(apps.first.mcp_url, writer, "prompts/list", {}, generation))
    assert {p["name"] for p in prompts["prompts"]} == {"greet", "rewrite"}


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize(("method", "params"), [
    ("resources/read", {"uri": "notes://secret"}),
    ("resources/read", {"uri": "notes://draft/42"}),  # a template instance
    ("prompts/get", {"name": "rewrite", "arguments": {"text": "x"}}),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "rewrite"},
                             "argument": {"name": "text", "value": "x"}}),
    ("completion/complete", {"ref": {"type": "ref/resource", "uri": "notes://draft/{note_id}"},
                             "argument": {"name": "note_id", "value": "4"}}),
], ids=["static", "template instance", "prompt", "prompt completion", "template completion"])
def test_reader_is_refused_a_protected_resource_or_prompt_before_dispatch(
    apps: Apps, idp: IdP, generation: str, method: str, params: dict[str, Any]
) -> None:
    assert_forbidden(post(apps.first.mcp_url, idp.mint(ias_apis=[READ]), method, params, generation), WRITE)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_reader_reads_what_it_may(apps: Apps, idp: IdP, generation: str) -> None:
    reader = idp.mint(ias_apis=[READ])
    read = result(post(apps.first.mcp_url, reader, "resources/read", {"uri": "notes://note/5"}, generation))
    assert read["contents"][0]["text"] == "note 5"
    unmarked = result(post(apps.first.mcp_url, reader, "resources/read", {"uri": "notes://readme"}, generation))
    assert unmarked["contents"][0]["text"] == "how to use the notes"
    got = result(post(apps.first.mcp_url, reader, "prompts/get", {"name": "greet", "arguments": {"name": "Ada"}},
                      generation))
    assert "Say hello to Ada" in json.dumps(got)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_token_without_the_templates_permission_is_refused_its_instances(
    apps: Apps, idp: IdP, generation: str
) -> None:
    nobody = idp.mint(ias_apis=[])
    assert_forbidden(post(apps.first.mcp_url, nobody, "resources/read", {"uri": "notes://note/5"}, generation), READ)
    templates = result(post(apps.first.mcp_url, nobody, "resources/templates/list", {}, generation))
    assert templates["resourceTemplates"] == []


@pytest.mark.parametrize("generation", GENERATIONS)
def test_writer_reads_and_gets_the_protected_ones(apps: Apps, idp: IdP, generation: str) -> None:
    writer = idp.mint(ias_apis=[READ, WRITE])
    for uri, text in (("notes://secret", "the secret"), ("notes://draft/42", "draft 42")):
        read = result(post(apps.first.mcp_url, writer, "resources/read", {"uri": uri}, generation))
        assert read["contents"][0]["text"] == text
    got = result(post(apps.first.mcp_url, writer, "prompts/get", {"name": "rewrite", "arguments": {"text": "y"}},
                      generation))
    assert "Rewrite: y" in json.dumps(got)
    completed = result(post(apps.first.mcp_url, writer, "completion/complete", {
        "ref": {"type": "ref/prompt", "name": "rewrite"}, "argument": {"name": "text", "value": "y"}}, generation))
    assert completed["completion"]["values"] == ["y-completed"]


def test_a_name_header_cannot_smuggle_a_protected_resource_past_the_gate(apps: Apps, idp: IdP) -> None:
    """2026-07-28: the header names a resource the reader may read, the body one it may not (and
    the other way round); the gate checks both, so nothing protected is read."""
    reader = idp.mint(ias_apis=[READ])
    for header, uri in (("notes://readme", "notes://secret"), ("notes://secret", "notes://readme")):
        response = post(apps.first.mcp_url, reader, "resources/read", {"uri": uri}, "2026-07-28",
                        headers={"Mcp-Name": header})
        assert response.status_code == 403, response.text[:300]
        assert challenge(response)["error"] == "insufficient_scope"
        assert "the secret" not in response.text
    response = post(apps.first.mcp_url, reader, "prompts/get", {"name": "greet", "arguments": {"name": "x"}},
                    "2026-07-28", headers={"Mcp-Name": "rewrite"})
    assert_forbidden(response, WRITE)


@pytest.mark.parametrize("mode", MODES)
async def test_mcp_client_of_a_reader_sees_filtered_lists_and_refusals(apps: Apps, idp: IdP, mode: str) -> None:
    async with client(apps.first.mcp_url, idp.mint(ias_apis=[READ]), mode) as connected:
        assert {str(r.uri) for r in (await connected.list_resources()).resources} == {"notes://readme"}
        assert {t.uri_template for t in (await connected.list_resource_templates()).resource_templates} == {
            "notes://note/{note_id}"}
        assert {p.name for p in (await connected.list_prompts()).prompts} == {"greet"}
        for refused in (connected.read_resource("notes://secret"), connected.read_resource("notes://draft/1"),
                        connected.get_prompt("rewrite", {"text": "x"})):
            with pytest.raises(MCPError) as info:
                await refused
            assert "insufficient_scope" in str(info.value)
        assert (await connected.read_resource("notes://note/3")).contents[0].text == "note 3"


# --- the policy for unmarked resources and prompts -------------------------------------------------


@pytest.mark.parametrize("generation", GENERATIONS)
def test_deny_policy_hides_and_refuses_unmarked_resources_and_prompts_to_everyone(
    apps: Apps, idp: IdP, generation: str
) -> None:
    everything = idp.mint(ias_apis=[READ, WRITE, ADMIN])
    url = apps.strict.mcp_url
    resources = result(post(url, everything, "resources/list", {}, generation))
    assert {r["uri"] for r in resources["resources"]} == {"notes://secret", "notes://audit"}  # no readme
    prompts = result(post(url, everything, "prompts/list", {}, generation))
    assert {p["name"] for p in prompts["prompts"]} == {"rewrite", "escalate"}  # no greet
    assert_forbidden(post(url, everything, "resources/read", {"uri": "notes://readme"}, generation), None)
    assert_forbidden(post(url, everything, "prompts/get", {"name": "greet", "arguments": {"name": "x"}}, generation),
                     None)
    assert "not available to any access token" in challenge(post(url, everything, "resources/read",
                                                                  {"uri": "notes://readme"}, generation))[
        "error_description"]


@pytest.mark.parametrize("generation", GENERATIONS)
def test_deny_policy_still_serves_marked_ones_and_unmarked_tools(apps: Apps, idp: IdP, generation: str) -> None:
    url = apps.strict.mcp_url
    writer = idp.mint(ias_apis=[READ, WRITE])
    assert result(post(url, writer, "resources/read", {"uri": "notes://secret"}, generation))["contents"][0][
        "text"] == "the secret"
    assert result(post(url, writer, "resources/read", {"uri": "notes://note/1"}, generation))["contents"][0][
        "text"] == "note 1"
    assert not result(post(url, writer, "tools/call", {"name": "whoami", "arguments": {}}, generation))["isError"]
    assert_forbidden(post(url, idp.mint(ias_apis=[READ]), "resources/read", {"uri": "notes://secret"}, generation),
                     WRITE)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_open_policy_serves_unmarked_ones_to_any_valid_token(apps: Apps, idp: IdP, generation: str) -> None:
    nobody = idp.mint(ias_apis=[])
    read = result(post(apps.second.mcp_url, nobody, "resources/read", {"uri": "notes://readme"}, generation))
    assert read["contents"][0]["text"] == "how to use the notes"
    assert "Say hello" in json.dumps(result(post(apps.second.mcp_url, nobody, "prompts/get",
                                                 {"name": "greet", "arguments": {"name": "x"}}, generation)))
    response = post(apps.second.mcp_url, None, "resources/read", {"uri": "notes://readme"}, generation)
    assert response.status_code == 401 and "error" not in challenge(response)


# --- in-process: a registration while the app is serving, and the stateful app on request --------


@pytest.fixture
def live(idp: IdP) -> Iterator[tuple[str, MCPServer]]:
    mcp = MCPServer("live")

    @mcp.tool()
    def ping() -> str:
        return "pong"

    def factory(base_url: str) -> Any:
        resource = base_url + "/mcp"
        return protect(mcp, settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)),
                                         resource_url=resource))

    with running_server(factory=factory, lifespan="on") as base:
        yield base + "/mcp", mcp


@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_tool_registered_while_serving_is_gated_at_once(live: tuple[str, MCPServer], idp: IdP,
                                                          generation: str) -> None:
    url, mcp = live
    reader = idp.mint(ias_apis=[READ])

    @mcp.tool()
    @requires(WRITE)
    def wipe() -> str:
        return "wiped"

    listed = result(post(url, reader, "tools/list", {}, generation))
    assert {t["name"] for t in listed["tools"]} == {"ping"}
    assert_forbidden_local(post(url, reader, "tools/call", {"name": "wipe", "arguments": {}}, generation), WRITE)
    mcp.remove_tool("wipe")  # and the same name, registered again without a mark, is open
    mcp.tool(name="wipe")(lambda: "harmless")
    assert not result(post(url, reader, "tools/call", {"name": "wipe", "arguments": {}}, generation))["isError"]


def assert_forbidden_local(response: httpx.Response, scope: str) -> None:
    assert response.status_code == 403, (response.status_code, response.text[:300])
    assert challenge(response)["error"] == "insufficient_scope"
    assert challenge(response)["scope"] == scope
    assert response.json()["error"]["code"] == FORBIDDEN


def test_the_stateful_sdk_app_only_when_asked(idp: IdP) -> None:
    mcp = MCPServer("stateful")

    @mcp.tool()
    def ping() -> str:
        return "pong"

    def factory(base_url: str) -> Any:
        resource = base_url + "/mcp"
        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource)
        return protect(mcp, settings, stateless=False)

    with running_server(factory=factory, lifespan="on") as base:
        response = post(base + "/mcp", idp.mint(), "tools/call", {"name": "ping", "arguments": {}}, "2025-11-25")
        assert response.status_code == 400  # the SDK's stateful transport: no session id
        assert "session" in response.text.lower()
