"""The server behind a proxy that strips a path prefix (issue 15, item 1).

`server.create_app` is served by uvicorn with ``root_path="/notes"`` and the server's own HTTP
stack (httptools), as a reverse proxy publishing ``https://host/notes/mcp`` would run it: the
test sends what the proxy forwards (``/mcp``), the settings name the public URL. No token, a bad
token and a read token on a write tool are refused as at the root; the platform's health probe
is still exempt from the Host check; and the endpoint stack refuses an unauthenticated request
even with the auth middleware left out (fail closed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from auth import AuthSettings, IssuerConfig
from server import create_app
from server._settings import load_server_settings
from tests._idp import IdP, running_idp
from tests._live import running_server

from .conftest import LEGACY_HEADERS, READ, READ_TOOLS, challenge_params, tool_call

pytestmark = pytest.mark.timeout(60)

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **LEGACY_HEADERS}
PREFIX = "/notes"


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with running_idp() as server:
        yield server


def build(base_url: str, db: Path, idp: IdP) -> Any:
    """The server as deployed under ``PREFIX``: the public URL in the settings, the app unchanged."""
    resource = base_url + PREFIX + "/mcp"
    port = base_url.rsplit(":", 1)[1]
    auth = AuthSettings(issuers=(IssuerConfig(issuer=idp.issuer, audiences=("mcp-client", resource)),),
                        resource_url=resource)
    settings = load_server_settings({"MCP_NOTES_DB": str(db), "HOST": "127.0.0.1", "PORT": port}, auth=auth)
    return create_app(settings)


@dataclass(frozen=True)
class Served:
    base_url: str  # the proxy's upstream: the test sends what the proxy forwards

    @property
    def resource(self) -> str:
        return self.base_url + PREFIX + "/mcp"

    def post(self, body: object, token: str | None = None) -> httpx.Response:
        auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.post(self.base_url + "/mcp", content=json.dumps(body), headers=HEADERS | auth, timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, idp: IdP) -> Iterator[Served]:
    db = tmp_path_factory.mktemp("prefix") / "notes.db"
    with running_server(factory=lambda base: build(base, db, idp), lifespan="on", root_path=PREFIX,
                        http="httptools") as base_url:
        yield Served(base_url)


LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


@pytest.mark.parametrize("body", [LIST, tool_call("whoami", {}, modern=False),
                                  tool_call("list_notes", {}, modern=False)], ids=["tools/list", "whoami", "list"])
def test_no_token_behind_a_prefix_is_challenged(served: Served, body: dict[str, Any]) -> None:
    response = served.post(body)
    assert response.status_code == 401, (response.status_code, response.text[:200])
    params = challenge_params(response.headers["www-authenticate"])
    assert "error" not in params
    assert params["resource_metadata"] == served.base_url + "/.well-known/oauth-protected-resource/notes/mcp"


def test_bad_token_behind_a_prefix_is_invalid_token(served: Served) -> None:
    response = served.post(LIST, "not-a-jwt")
    assert response.status_code == 401
    assert challenge_params(response.headers["www-authenticate"])["error"] == "invalid_token"


def test_read_token_on_a_write_tool_behind_a_prefix_is_insufficient_scope(served: Served, idp: IdP) -> None:
    response = served.post(tool_call("create_note", {"title": "x"}, modern=False), idp.mint(ias_apis=[READ]))
    assert response.status_code == 403, (response.status_code, response.text[:200])
    params = challenge_params(response.headers["www-authenticate"])
    assert params["error"] == "insufficient_scope" and params["scope"] == "api_write_access"


def test_read_token_behind_a_prefix_lists_the_read_tools(served: Served, idp: IdP) -> None:
    response = served.post(LIST, idp.mint(ias_apis=[READ]))
    assert response.status_code == 200, (response.status_code, response.text[:200])
    assert {t["name"] for t in response.json()["result"]["tools"]} == READ_TOOLS


def test_metadata_behind_a_prefix_names_the_public_url(served: Served, idp: IdP) -> None:
    for path in ("/.well-known/oauth-protected-resource/notes/mcp", "/.well-known/oauth-protected-resource/mcp"):
        response = httpx.get(served.base_url + path, timeout=10)
        assert response.status_code == 200, path
        assert response.json()["resource"] == served.resource
        assert response.json()["authorization_servers"] == [idp.issuer]


def test_health_probe_behind_a_prefix_is_served_whatever_the_host(served: Served) -> None:
    """The platform probes the instance address: /health stays exempt from the Host check."""
    assert httpx.get(served.base_url + "/health", headers={"Host": "10.0.0.7:8080"}, timeout=10).status_code == 200
    response = httpx.post(served.base_url + "/mcp", content=json.dumps(LIST), timeout=10,
                          headers=HEADERS | {"Host": "10.0.0.7:8080"})
    assert response.status_code == 421  # the MCP path is not exempt


# --- fail closed ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unguarded(tmp_path_factory: pytest.TempPathFactory, idp: IdP) -> Iterator[str]:
    """The server's endpoint stack with `BearerAuthMiddleware` (and the Host guard) left out."""
    db = tmp_path_factory.mktemp("unguarded") / "notes.db"

    def factory(base_url: str) -> Any:
        protected = build(base_url, db, idp).asgi.app.app  # CorrelationLayer -> HostOriginGuard -> `protect`
        return Starlette(routes=[Mount("/", app=protected.endpoint.app)], lifespan=protected.lifespan)

    with running_server(factory=factory, lifespan="on", http="httptools") as base_url:
        yield base_url


@pytest.mark.parametrize("body", [LIST, tool_call("list_notes", {}, modern=False),
                                  tool_call("create_note", {"title": "x"}, modern=False)],
                         ids=["tools/list", "list", "create"])
def test_server_endpoint_without_the_auth_layer_answers_401(unguarded: str, idp: IdP, body: dict[str, Any]) -> None:
    for token in (None, idp.mint()):  # a token no layer verified is no principal
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.post(unguarded + "/mcp", content=json.dumps(body), headers=HEADERS | auth, timeout=10)
        assert response.status_code == 401, (response.status_code, response.text[:200])
        params = challenge_params(response.headers["www-authenticate"])
        assert "error" not in params
        assert params["resource_metadata"] == unguarded + "/.well-known/oauth-protected-resource/notes/mcp"
