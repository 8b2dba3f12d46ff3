"""Third-party Node MCP clients against the real dev server: ``mcp-remote`` and the MCP Inspector CLI.

Both are pinned and installed by `tests._node` (npm must be on PATH; nothing here skips). The
server is what ``python -m server --dev`` builds, under uvicorn on 127.0.0.1, wrapped in an ASGI
recorder so the tests can see what the clients actually sent: which discovery documents they
fetched, what the token request carried, which status each MCP POST got.

What the clients do with our answers (mcp-remote 0.15.1, Inspector 2.12.0):

* mcp-remote ``--client-credentials`` first calls ``/mcp`` without a token, follows the 401's
  ``resource_metadata`` to our RFC 9728 document, discovers the dev issuer from it (RFC 8414 path
  insertion) and requests a token with ``resource=<base>/mcp``. A 403 ``insufficient_scope`` on
  ``tools/call`` makes it fetch a fresh token and retry once; the second 403 reaches the stdio side
  as JSON-RPC error -32001 "mcp-remote: Unauthorized", and the proxy stays up.
* The Inspector CLI with ``--header "Authorization: Bearer ..."`` exits 0 with the JSON result on
  stdout; a 401 exits 3 (``auth_required``) with one JSON error line on stderr. Before a
  ``tools/call`` the CLI looks the tool up in ``tools/list``; since the server hides from that list
  what the token may not call, a dev-read ``create_note`` ends there (exit 5, ``tool_not_found``)
  and never reaches the permission gate. Our 403 (``Insufficient scope``, naming
  ``api_write_access``) is what the server answers the same call from the same token, checked
  over plain HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from tests._live import running_server
from tests._node import McpRpcError, NodeTools, StdioMcp, ensure_node_tools, inspector_cli, inspector_error
from tools import SINGLE_TENANT

from .conftest import ALL_TOOLS, READ_TOOLS, DevServer, build_dev_app, challenge_params

# The install (first run only) happens in a fixture, outside the per-test limit.
pytestmark = pytest.mark.timeout(60, func_only=True)

CLIENT_TIMEOUT = 30.0  # seconds for one stdio request through mcp-remote / one Inspector CLI run
SECRET_ENV = "MCP_CLIENT_SECRET"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- the server, with a recorder in front ----------------------------------------------------------


@dataclass
class Hit:
    """One HTTP request the server saw (secrets masked)."""

    method: str
    path: str
    authorization: str | None  # "Bearer", "Basic <client_id>" or None; never the credential
    form: dict[str, str] = field(default_factory=dict)  # token requests only; client_secret masked
    rpc: Any = None  # the JSON-RPC method(s) of an MCP POST
    status: int | None = None
    www_authenticate: str | None = None


class Recorder:
    """ASGI wrapper that keeps a `Hit` per HTTP request, passing everything through unchanged."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.hits: list[Hit] = []

    def mark(self) -> int:
        return len(self.hits)

    def since(self, mark: int) -> list[Hit]:
        return list(self.hits[mark:])

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        hit = Hit(scope["method"], scope["path"], _describe_authorization(headers.get("authorization")))
        self.hits.append(hit)
        body = bytearray()

        async def tee() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    _fill_body(hit, bytes(body))
            return message

        async def spy(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                hit.status = message["status"]
                for k, v in message.get("headers", []):
                    if k.decode("latin-1").lower() == "www-authenticate":
                        hit.www_authenticate = v.decode("latin-1")
            await send(message)

        await self.app(scope, tee, spy)


def _describe_authorization(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            return "Basic " + base64.b64decode(rest.strip()).decode().partition(":")[0]
    return scheme


def _fill_body(hit: Hit, body: bytes) -> None:
    if hit.path.endswith("/oauth2/token"):
        form = parse_qsl(body.decode("utf-8", "replace"))
        hit.form = {k: ("***" if k == "client_secret" else v) for k, v in form}
    elif hit.path == "/mcp" and body:
        with contextlib.suppress(ValueError):
            doc = json.loads(body)
            items = doc if isinstance(doc, list) else [doc]
            methods = [m.get("method") for m in items if isinstance(m, dict)]
            hit.rpc = methods[0] if len(methods) == 1 else methods


@dataclass
class Served:
    srv: DevServer
    recorder: Recorder

    @property
    def base_url(self) -> str:
        return self.srv.base_url

    @property
    def mcp_url(self) -> str:
        return self.srv.mcp_url


@pytest.fixture(scope="module")
def node_tools() -> NodeTools:
    return ensure_node_tools()  # raises (fails the tests) when node/npm are missing


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, node_tools: NodeTools) -> Iterator[Served]:
    built: list[Served] = []

    def factory(base_url: str) -> Any:
        srv = build_dev_app(base_url, tmp_path_factory.mktemp("notes") / "notes.db")
        built.append(Served(srv, Recorder(srv.app)))
        return built[0].recorder

    with running_server(factory=factory, lifespan="on"):
        yield built[0]


def mcp_remote(tools: NodeTools, served: Served, state: Path, client_id: str) -> StdioMcp:
    """mcp-remote as a client-credentials proxy for ``client_id``; the secret only in the environment."""
    info = json.dumps({"client_id": client_id, "client_secret": "${" + SECRET_ENV + "}"})
    cmd = tools.mcp_remote_cmd(served.mcp_url, "--client-credentials", "--static-oauth-client-info", info)
    secret = served.srv.secrets[client_id]
    assert not any(secret in arg for arg in cmd)
    return StdioMcp(cmd, env=tools.isolated_env(state, {SECRET_ENV: secret}), timeout=CLIENT_TIMEOUT)


def titles_in_store(served: Served, marker: str) -> list[str]:
    return [n.title for n in served.srv.app.store.sync.search(SINGLE_TENANT, marker, limit=100)]


def bearer(token: str) -> list[str]:
    return ["--header", f"Authorization: Bearer {token}"]


# Settings from the developer's shell that would change how the Inspector authenticates.
_INSPECTOR_ENV_DROP = ("MCP_AUTO_OPEN_ENABLED", "MCP_CLIENT_CONFIG_PATH", "MCP_OAUTH_CALLBACK_URL")


def inspector(served: Served, state: Path, *args: str) -> Any:
    env = NodeTools.isolated_env(state)
    for name in _INSPECTOR_ENV_DROP:
        env.pop(name, None)
    # retries=0: the GET-stream race `inspector_cli` retries around cannot happen with our 405.
    return inspector_cli([served.mcp_url, "--transport", "http", "--format", "json", *args],
                         timeout=CLIENT_TIMEOUT, env=env, retries=0)


# --- mcp-remote ----------------------------------------------------------------------------------


def test_mcp_remote_client_credentials_discovers_issuer_and_writes(
    node_tools: NodeTools, served: Served, tmp_path: Path
) -> None:
    title = unique("mcp-remote")
    mark = served.recorder.mark()
    started = time.monotonic()
    with mcp_remote(node_tools, served, tmp_path, "dev-full") as m:
        init = m.initialize()
        assert init["serverInfo"]["name"] == "btp-notes"
        assert {t["name"] for t in m.list_tools()} == ALL_TOOLS

        created = m.call_tool("create_note", {"title": title, "body": "from mcp-remote"})
        assert created.get("isError") is not True, created
        note = created["structuredContent"]
        assert note["title"] == title and note["created_by"] == "dev-full"

        listed = m.call_tool("list_notes", {"limit": 100})
        assert note["id"] in [n["id"] for n in listed["structuredContent"]["notes"]]
        assert m.unparsed == []
    assert m.returncode == 0, m.stderr_text  # exits by itself on stdin EOF
    assert time.monotonic() - started < 45

    hits = served.recorder.since(mark)
    # Discovery went through OUR protected-resource metadata, found from the 401 challenge.
    first_401 = next(i for i, h in enumerate(hits) if h.path == "/mcp" and h.status == 401)
    assert 'resource_metadata="' + served.srv.metadata_url + '"' in (hits[first_401].www_authenticate or "")
    prm = [i for i, h in enumerate(hits)
           if h.method == "GET" and h.path == "/.well-known/oauth-protected-resource/mcp" and h.status == 200]
    assert prm and first_401 < prm[0], hits
    tokens = [(i, h) for i, h in enumerate(hits) if h.path == "/dev-ias/oauth2/token"]
    assert tokens, hits
    i_token, token_hit = tokens[0]
    assert prm[0] < i_token
    assert token_hit.method == "POST" and token_hit.status == 200
    assert token_hit.form.get("grant_type") == "client_credentials"
    assert token_hit.form.get("resource") == served.mcp_url
    who = token_hit.authorization or "Basic " + token_hit.form.get("client_id", "")
    assert who == "Basic dev-full", token_hit
    # Every MCP POST after the token carried it and succeeded; nothing retried the token endpoint.
    after = [h for h in hits[i_token:] if h.path == "/mcp" and h.method == "POST"]
    assert {h.rpc for h in after} >= {"initialize", "tools/list", "tools/call"}
    assert all(h.authorization == "Bearer" and h.status in (200, 202) for h in after), after
    assert len(tokens) == 1, tokens
    assert list((tmp_path / "mcp-auth").rglob("*_tokens.json")), "mcp-remote stored no token"


def test_mcp_remote_read_only_client_sees_read_tools_and_cannot_write(
    node_tools: NodeTools, served: Served, tmp_path: Path
) -> None:
    title = unique("denied")
    mark = served.recorder.mark()
    with mcp_remote(node_tools, served, tmp_path, "dev-read") as m:
        m.initialize()
        assert {t["name"] for t in m.list_tools()} == READ_TOOLS

        with pytest.raises(McpRpcError) as denied:
            m.call_tool("create_note", {"title": title, "body": "must not exist"})
        assert denied.value.method == "tools/call"
        assert denied.value.code == -32001, denied.value
        assert denied.value.message == "mcp-remote: Unauthorized", denied.value
        assert m.returncode is None, m.stderr_text  # the proxy is still up

        listed = m.call_tool("list_notes", {"limit": 100})
        assert isinstance(listed["structuredContent"]["notes"], list)
        assert title not in [n["title"] for n in listed["structuredContent"]["notes"]]
        assert m.call_tool("whoami")["structuredContent"]["client_id"] == "dev-read"
    assert titles_in_store(served, title) == []

    hits = served.recorder.since(mark)
    calls = [h for h in hits if h.path == "/mcp" and h.rpc == "tools/call"]
    refused = [h for h in calls if h.status == 403]
    # The gate refused before dispatch; mcp-remote re-authenticated and retried at most once.
    assert 1 <= len(refused) <= 2, calls
    assert all('error="insufficient_scope"' in (h.www_authenticate or "") for h in refused)
    assert all('scope="api_write_access"' in (h.www_authenticate or "") for h in refused), refused
    assert [h.status for h in calls][len(refused):] == [200, 200], calls  # list_notes, whoami
    token_requests = [h for h in hits if h.path == "/dev-ias/oauth2/token"]
    assert 1 <= len(token_requests) <= 1 + 2 * len(refused), token_requests  # no token storm
    assert all(h.authorization == "Basic dev-read" and h.status == 200 for h in token_requests)


# --- MCP Inspector CLI ---------------------------------------------------------------------------


def test_inspector_cli_with_bearer_token(served: Served, tmp_path: Path) -> None:
    seeded = served.srv.app.store.sync.create(SINGLE_TENANT, unique("seeded"), "read me through the Inspector",
                                              "seed-client")
    full = served.srv.token("dev-full")

    listed = inspector(served, tmp_path, *bearer(full), "--method", "tools/list")
    assert listed.returncode == 0, listed.stderr
    assert {t["name"] for t in json.loads(listed.stdout)["result"]["tools"]} == ALL_TOOLS

    whoami = inspector(served, tmp_path, *bearer(full), "--method", "tools/call", "--tool-name", "whoami")
    assert whoami.returncode == 0, whoami.stderr
    identity = json.loads(whoami.stdout)["result"]["structuredContent"]
    assert identity["client_id"] == "dev-full"
    assert set(identity["permissions"]) >= {"api_read_access", "api_write_access"}

    read_token = served.srv.token("dev-read")
    got = inspector(served, tmp_path, *bearer(read_token), "--method", "tools/call",
                    "--tool-name", "get_note", "--tool-arg", f"note_id={seeded.id}")
    assert got.returncode == 0, got.stderr
    note = json.loads(got.stdout)["result"]["structuredContent"]
    assert note["id"] == seeded.id and note["body"] == "read me through the Inspector"

    read_list = inspector(served, tmp_path, *bearer(read_token), "--method", "tools/list")
    assert read_list.returncode == 0, read_list.stderr
    assert {t["name"] for t in json.loads(read_list.stdout)["result"]["tools"]} == READ_TOOLS

    # dev-read asks for create_note: the CLI finds no such tool in the (filtered) list and stops.
    title = unique("inspector-denied")
    mark = served.recorder.mark()
    denied = inspector(served, tmp_path, *bearer(read_token), "--method", "tools/call", "--tool-name",
                       "create_note", "--tool-arg", f"title={title}", "body=nope")
    assert denied.returncode == 5, (denied.returncode, denied.stderr)
    assert denied.stdout == ""
    assert inspector_error(denied.stderr) == {
        "code": "tool_not_found", "message": "Tool 'create_note' not found on server."}, denied.stderr
    seen = [h.rpc for h in served.recorder.since(mark) if h.path == "/mcp" and h.method == "POST"]
    assert "tools/list" in seen and "tools/call" not in seen, seen
    assert titles_in_store(served, title) == []

    # ... and had it sent the call, the gate would have refused it: 403 Insufficient scope.
    refused = served.srv.rpc(read_token, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                          "params": {"name": "create_note", "arguments": {"title": title}}},
                             {"MCP-Protocol-Version": "2025-06-18"})
    assert refused.status_code == 403, refused.text
    challenge = challenge_params(refused.headers["www-authenticate"])
    assert challenge["error"] == "insufficient_scope" and challenge["scope"] == "api_write_access", challenge
    assert titles_in_store(served, title) == []


def test_inspector_cli_without_token_is_auth_required(served: Served, tmp_path: Path) -> None:
    mark = served.recorder.mark()
    proc = inspector(served, tmp_path, "--method", "tools/list")
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    error = inspector_error(proc.stderr)
    assert error is not None and error["code"] == "auth_required", proc.stderr
    hits = served.recorder.since(mark)
    assert any(h.path == "/mcp" and h.status == 401 for h in hits), hits
    assert not any(h.path == "/mcp" and h.status == 200 for h in hits), hits
    assert not any(h.path.endswith("/oauth2/token") and h.status == 200 for h in hits), hits
