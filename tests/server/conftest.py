"""Shared fixtures for the server tests: the real app, served by uvicorn exactly as ``--dev`` builds it.

    with dev_server(tmp_path / "notes.db") as srv:          # a DevIssuer mounted beside /mcp
        token = srv.token("dev-read")                       # client credentials over HTTP
        async with mcp_client(srv.mcp_url, token, "legacy") as client:
            await client.call_tool("list_notes", {})

Tokens always come from the issuer's token endpoint over HTTP (HTTP Basic), as a real
client would get them. Each app owns its permission table (read from its registered tools), so
tests that add tools share nothing with other tests.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from server import create_app
from server._dev_issuer import DevIssuer
from server._main import dev_settings
from server._settings import ServerSettings
from tests._live import running_server

REPO = Path(__file__).resolve().parents[2]
MODES = ("legacy", "2026-07-28")
"""The two protocol generations the SDK client speaks: initialize handshake, and sessionless."""

READ = "api_read_access"
WRITE = "api_write_access"
ALL_TOOLS = {"whoami", "list_notes", "search_notes", "get_note", "create_note", "update_note", "delete_note"}
READ_TOOLS = {"whoami", "list_notes", "search_notes", "get_note"}

SECRETS = {"dev-full": "dev-full-secret", "dev-read": "dev-read-secret", "dev-none": "dev-none-secret"}
EXTRA_CLIENTS: dict[str, tuple[str, list[str]]] = {"dev-none": ("dev-none-secret", [])}

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "mcp", "version": "0.1.0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


@dataclass
class DevServer:
    """One running server: its URLs, its embedded issuer, its settings and the app object."""

    base_url: str
    issuer: DevIssuer
    settings: ServerSettings
    app: Any
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def mcp_url(self) -> str:
        return self.base_url + "/mcp"

    @property
    def metadata_url(self) -> str:
        return self.base_url + "/.well-known/oauth-protected-resource/mcp"

    def token(self, client_id: str, secret: str | None = None) -> str:
        """An access token from the issuer's token endpoint (client credentials, HTTP Basic)."""
        return fetch_token(self.issuer.token_endpoint, client_id, secret or self.secrets[client_id])

    def rpc(self, token: str | None, body: object, headers: Mapping[str, str] | None = None,
            *, raw: bytes | None = None, path: str = "/mcp") -> httpx.Response:
        """POST one JSON-RPC body (or raw bytes) to the MCP endpoint with plain httpx."""
        sent = dict(JSON_HEADERS)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(self.base_url + path, content=content, headers=sent, timeout=10)


def fetch_token(token_endpoint: str, client_id: str, secret: str) -> str:
    response = httpx.post(token_endpoint, data={"grant_type": "client_credentials"}, auth=(client_id, secret),
                          timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (the server verified it; tests only compare fields)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def build_dev_app(
    base_url: str,
    db: Path,
    *,
    issuer: DevIssuer | None = None,
    mount_issuer: bool = True,
    extra_clients: Mapping[str, tuple[str, list[str]]] | None = None,
    private_key: rsa.RSAPrivateKey | None = None,
    customize: Callable[[MCPServer], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> DevServer:
    """What ``python -m server --dev`` builds for ``base_url`` (HOST/PORT taken from it).

    ``issuer`` given and ``mount_issuer=False``: the server trusts someone else's issuer
    (a second instance behind the same load balancer).
    """
    parts = urlsplit(base_url)
    clients = {**EXTRA_CLIENTS, **(extra_clients or {})}
    if issuer is None:
        issuer = DevIssuer(base_url, extra_clients=clients, private_key=private_key)
    full_env = {"MCP_NOTES_DB": str(db), "HOST": parts.hostname or "127.0.0.1", "PORT": str(parts.port),
                **(env or {})}
    settings = dev_settings(full_env, base_url, issuer)
    routes = [*issuer.well_known_routes(), issuer.mount()] if mount_issuer else []
    app = create_app(settings, extra_routes=routes, customize=customize)
    secrets = {**SECRETS, **{cid: spec[0] for cid, spec in clients.items()}}
    return DevServer(base_url, issuer, settings, app, secrets)


@contextlib.contextmanager
def dev_server(db: Path, **options: Any) -> Iterator[DevServer]:
    """Serve `build_dev_app` under real uvicorn on 127.0.0.1 (a free port)."""
    built: list[DevServer] = []

    def factory(base_url: str) -> Any:
        built.append(build_dev_app(base_url, db, **options))
        return built[0].app

    with running_server(factory=factory, lifespan="on"):
        yield built[0]


@contextlib.asynccontextmanager
async def mcp_client(
    url: str, token: str, mode: str, *, transport: httpx2.AsyncBaseTransport | None = None
) -> AsyncIterator[Client]:
    """The SDK's own client over streamable HTTP, carrying ``token`` on every request."""
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(20.0), transport=transport
    ) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


def tool_call(name: str, arguments: dict[str, Any], *, modern: bool, id: int | str = 1) -> dict[str, Any]:
    """A ``tools/call`` body as the SDK client sends it (2026-07-28: with the ``_meta`` envelope)."""
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if modern:
        params["_meta"] = ENVELOPE
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}


def modern_headers(name: str, method: str = "tools/call") -> dict[str, str]:
    return {"Mcp-Method": method, "Mcp-Name": name, "MCP-Protocol-Version": "2026-07-28"}


LEGACY_HEADERS = {"MCP-Protocol-Version": "2025-11-25"}


def challenge_params(header: str) -> dict[str, str]:
    """Parse ``Bearer k="v", k2="v2"`` (quoted values with backslash escapes) into a dict."""
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer", header
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        if i >= len(rest):
            break
        eq = rest.index("=", i)
        key = rest[i:eq].strip()
        i = eq + 1
        assert rest[i] == '"', header
        i += 1
        value = []
        while rest[i] != '"':
            if rest[i] == "\\":
                i += 1
            value.append(rest[i])
            i += 1
        params[key] = "".join(value)
        i += 1
    return params


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One dev server per test module (tests use distinct note titles, never counts)."""
    with dev_server(tmp_path_factory.mktemp("notes") / "notes.db") as srv:
        yield srv
