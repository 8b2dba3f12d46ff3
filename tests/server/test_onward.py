"""Onward calls end to end: the server as ``--dev`` builds it, a tool calling the example downstream API
in each mode, over real HTTP on 127.0.0.1, with the refusals and faults a deployment meets.

The example backend is wrapped in a recorder that keeps every ``Authorization`` header it
receives, so the test can prove that no downstream is ever handed the caller's token: everything
it got was issued for it (``aud`` = the backend) and none of it is a token an MCP client sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from mcp.types import TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from auth.client import ClientCredentials, ExchangeTarget, ias_resource
from auth.downstream import Downstream, Downstreams, DownstreamSettings
from server import create_app
from server._dev_backend import BACKEND_PATH, backend_app, backend_settings
from server._dev_issuer import DevClient, DevIssuer
from server._dev_onward import dev_onward, onward_applications, onward_clients
from server._main import dev_settings
from tests._live import free_port, running_server
from tests.server.conftest import fetch_token, jwt_claims, mcp_client

pytestmark = pytest.mark.timeout(90)

CALLERS = {"dev-read": "dev-read-secret", "dev-full": "dev-full-secret"}
BACKEND_RESOURCE = ias_resource(name="notes-backend")
MODES = {
    "backend": "on-behalf-of",
    "backend-rfc8693": "on-behalf-of",
    "backend-as-server": "as-server",
    "backend-destination": "destination",
    "backend-destination-app": "destination",
    "backend-destination-rfc8693": "destination",
}
SUBJECT_IS_CALLER = {"backend", "backend-rfc8693", "backend-destination", "backend-destination-rfc8693"}


@dataclass
class Recorder:
    """An ASGI wrapper keeping the bearer tokens a downstream receives."""

    app: Any
    tokens: list[str] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name.lower() == b"authorization":
                    self.tokens.append(value.decode("latin-1").partition(" ")[2])
        await self.app(scope, receive, send)


@dataclass
class Onward:
    base_url: str
    issuer: DevIssuer
    recorder: Recorder
    audit: list[tuple[str, dict[str, Any]]]
    hits: dict[str, int]
    app: Any

    def token(self, client_id: str) -> str:
        return fetch_token(self.issuer.token_endpoint, client_id, CALLERS[client_id])

    async def call(self, client_id: str, downstream: str) -> Any:
        async with mcp_client(self.base_url + "/mcp", self.token(client_id), "legacy") as client:
            return await client.call_tool("downstream_whoami", {"downstream": downstream})

    def downstream_lines(self) -> list[dict[str, Any]]:
        return [fields for msg, fields in self.audit if msg == "downstream call"]


def _test_downstreams(base_url: str) -> list[Downstream]:
    """Downstreams for the faults: an unknown target, a stalling API, one answering 401 and one 403."""
    test = base_url + "/test"
    return [
        Downstream("unknown-target", "on-behalf-of", base_url + BACKEND_PATH,
                   ExchangeTarget(resource=ias_resource(name="nobody"))),
        Downstream("stalling", "as-server", test + "/stall", ExchangeTarget(resource=BACKEND_RESOURCE,
                                                                               token_format=None), timeout_s=1.0),
        Downstream("refusing", "as-server", test + "/401", ExchangeTarget(resource=BACKEND_RESOURCE,
                                                                             token_format=None)),
        Downstream("forbidding", "as-server", test + "/403", ExchangeTarget(resource=BACKEND_RESOURCE,
                                                                               token_format=None)),
        Downstream("backend-destination-rfc8693", "destination", destination="notes-backend-exchange"),
        Downstream("missing-destination", "destination", destination="no-such-destination"),
    ]


def build(base_url: str, db: Path) -> Onward:
    """What ``python -m server --dev`` builds, plus the recorder and the fault routes."""
    parts = urlsplit(base_url)
    clients = {**onward_clients(), "dev-none": DevClient("dev-none-secret", ())}
    issuer = DevIssuer(base_url, extra_clients=clients, applications=onward_applications(base_url))
    onward = dev_onward(base_url, issuer.issuer, issuer.token_endpoint, {})
    settings_in = onward.downstreams
    downstreams = DownstreamSettings(
        downstreams={**settings_in.downstreams, **{d.name: d for d in _test_downstreams(base_url)}},
        credentials=settings_in.credentials,
        destination_service=settings_in.destination_service,
    )
    env = {"MCP_NOTES_DB": str(db), "HOST": parts.hostname or "127.0.0.1", "PORT": str(parts.port)}
    settings = dev_settings(env, base_url, issuer, downstreams=downstreams)
    hits: dict[str, int] = {}

    async def stall(_: Request) -> JSONResponse:
        hits["stall"] = hits.get("stall", 0) + 1
        await asyncio.sleep(30)
        return JSONResponse({})

    async def status(request: Request) -> JSONResponse:
        code = int(request.path_params["code"])
        hits[str(code)] = hits.get(str(code), 0) + 1
        return JSONResponse({"error": "no"}, status_code=code)

    recorder = Recorder(backend_app(backend_settings(issuer.issuer, base_url)))
    test_routes = Starlette(routes=[Route("/stall/caller", stall), Route("/{code:int}/caller", status)])
    routes = [*issuer.well_known_routes(), issuer.mount(), Mount(BACKEND_PATH, app=recorder),
              Mount("/test", app=test_routes), *onward.routes]
    audit: list[tuple[str, dict[str, Any]]] = []
    app = create_app(settings, extra_routes=routes, audit=lambda msg, fields: audit.append((msg, dict(fields))))
    return Onward(base_url, issuer, recorder, audit, hits, app)


@pytest.fixture(scope="module")
def onward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Onward]:
    built: list[Onward] = []

    def factory(base_url: str) -> Any:
        built.append(build(base_url, tmp_path_factory.mktemp("onward") / "notes.db"))
        return built[0].app

    with running_server(factory=factory, lifespan="on"):
        yield built[0]


def text_of(result: Any) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


# --------------------------------------------------------------------------- each mode


@pytest.mark.parametrize("downstream", list(MODES))
async def test_each_mode_reaches_the_backend_with_a_token_of_its_own(onward: Onward, downstream: str) -> None:
    result = await onward.call("dev-read", downstream)
    assert not result.is_error, text_of(result)
    answer = result.structured_content
    assert answer["status"] == 200 and answer["mode"] == MODES[downstream]
    seen = answer["seen"]
    assert seen["audience"] == ["dev-backend"] and seen["permissions"] == ["backend_read"]
    if downstream in SUBJECT_IS_CALLER:
        assert (seen["subject"], seen["client_id"], seen["actor"]) == ("dev-read", "dev-read", "mcp-dev-server")
    else:
        assert (seen["subject"], seen["actor"]) == ("mcp-dev-server", None)


async def test_two_callers_each_reach_the_backend_as_themselves_and_share_no_token(onward: Onward) -> None:
    tokens = {caller: onward.token(caller) for caller in CALLERS}
    before = len(onward.recorder.tokens)
    for _ in range(2):
        for caller, token in tokens.items():  # interleaved, with the same caller token each time
            async with mcp_client(onward.base_url + "/mcp", token, "legacy") as client:
                result = await client.call_tool("downstream_whoami", {"downstream": "backend"})
            assert result.structured_content["seen"]["subject"] == caller
    received = onward.recorder.tokens[before:]
    assert len(received) == 4
    assert received[0] == received[2] and received[1] == received[3]  # each caller's cached exchange, reused
    assert received[0] != received[1]  # never the other caller's


async def test_the_backend_only_ever_receives_tokens_issued_for_it(onward: Onward) -> None:
    sent = {onward.token(c) for c in CALLERS}  # what clients send the MCP server (new ones each time)
    for caller in CALLERS:
        for downstream in MODES:
            assert not (await onward.call(caller, downstream)).is_error
    received = onward.recorder.tokens
    assert len(received) >= 2 * len(MODES)
    for token in received:
        claims = jwt_claims(token)
        assert claims["aud"] == ["dev-backend"], claims
        assert "mcp-dev-server" not in claims["aud"]
    assert not sent & set(received)
    # and the backend itself refuses a token meant for the MCP server (its own audience check)
    direct = httpx.get(onward.base_url + "/dev-backend/caller",
                       headers={"Authorization": f"Bearer {onward.token('dev-read')}"})
    assert direct.status_code == 401 and 'error="invalid_token"' in direct.headers["www-authenticate"]


async def test_a_caller_without_read_permission_cannot_reach_the_tool(onward: Onward) -> None:
    token = fetch_token(onward.issuer.token_endpoint, "dev-none", "dev-none-secret")
    async with mcp_client(onward.base_url + "/mcp", token, "legacy") as client:
        assert "downstream_whoami" not in {t.name for t in (await client.list_tools()).tools}
    response = httpx.post(
        onward.base_url + "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
              "params": {"name": "downstream_whoami", "arguments": {"downstream": "backend"}}},
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                 "MCP-Protocol-Version": "2025-11-25"},
    )
    assert response.status_code == 403 and 'error="insufficient_scope"' in response.headers["www-authenticate"]


# --------------------------------------------------------------------------- failures are tool errors


@pytest.mark.parametrize(("downstream", "code"), [
    ("unknown-target", "exchange_refused"),
    ("refusing", "unauthorized"),
    ("forbidding", "forbidden"),
    ("missing-destination", "destination_refused"),
    ("not-configured", "unknown_downstream"),
])
async def test_failures_are_clear_tool_errors(onward: Onward, downstream: str, code: str) -> None:
    before = dict(onward.hits)
    result = await onward.call("dev-read", downstream)
    assert result.is_error
    assert f"downstream {downstream!r} [{code}]" in text_of(result)
    if downstream == "refusing":  # one fresh token after a 401, then the error
        assert onward.hits["401"] - before.get("401", 0) == 2
    if downstream == "forbidding":
        assert onward.hits["403"] - before.get("403", 0) == 1


async def test_a_stalling_downstream_ends_within_its_deadline(onward: Onward) -> None:
    started = time.monotonic()
    result = await onward.call("dev-read", "stalling")
    elapsed = time.monotonic() - started
    assert result.is_error and "[timeout]" in text_of(result)
    assert elapsed < 1.0 + 3.0  # the downstream's 1 s deadline, plus a token and two MCP round trips


async def test_every_downstream_call_is_audited_without_a_token(onward: Onward) -> None:
    token = onward.token("dev-read")
    async with mcp_client(onward.base_url + "/mcp", token, "legacy") as client:
        await client.call_tool("downstream_whoami", {"downstream": "backend"})
        await client.call_tool("downstream_whoami", {"downstream": "forbidding"})
    lines = onward.downstream_lines()
    last = lines[-2:]
    assert [(f["downstream"], f["mode"], f["outcome"], f["status"]) for f in last] == [
        ("backend", "on-behalf-of", "ok", 200), ("forbidding", "as-server", "forbidden", 403)]
    assert all(f["client_id"] == "dev-read" and isinstance(f["duration_ms"], float) for f in last)
    everything = repr(onward.audit)
    assert token not in everything
    assert not any(t in everything for t in onward.recorder.tokens)
    assert "mcp-dev-server-secret" not in everything


# --------------------------------------------------------------------------- the identity service down


async def test_an_unreachable_identity_service_is_a_tool_error_within_the_deadline(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/oauth2/token"

    def factory(base_url: str) -> Any:
        built = build(base_url, tmp_path / "notes.db")
        settings = DownstreamSettings(
            downstreams={"backend": Downstream("backend", "on-behalf-of", base_url + BACKEND_PATH,
                                               ExchangeTarget(resource=BACKEND_RESOURCE), timeout_s=2.0)},
            credentials=ClientCredentials("mcp-dev-server", token_endpoint=dead, client_secret="x"),
        )
        parts = urlsplit(base_url)
        env = {"MCP_NOTES_DB": str(tmp_path / "n2.db"), "HOST": "127.0.0.1", "PORT": str(parts.port)}
        server_settings = dev_settings(env, base_url, built.issuer, downstreams=settings)
        app = create_app(server_settings, extra_routes=[*built.issuer.well_known_routes(), built.issuer.mount()],
                         downstreams=Downstreams(settings))
        holder.append((built, app))
        return app

    holder: list[tuple[Onward, Any]] = []
    with running_server(factory=factory, lifespan="on") as url:
        built = holder[0][0]
        token = built.token("dev-read")
        started = time.monotonic()
        async with mcp_client(url + "/mcp", token, "legacy") as client:
            result = await client.call_tool("downstream_whoami", {"downstream": "backend"})
        assert result.is_error and "[issuer_unavailable]" in text_of(result), text_of(result)
        assert time.monotonic() - started < 2.0 + 3.0


async def test_dev_settings_without_downstreams_register_no_onward_tool(tmp_path: Path) -> None:
    base = "http://127.0.0.1:9"
    issuer = DevIssuer(base)
    settings = dev_settings({"MCP_NOTES_DB": str(tmp_path / "n.db")}, base, issuer)
    app = create_app(settings)
    assert app.downstreams is None
    assert "downstream_whoami" not in {t.name for t in await app.mcp.list_tools()}


def test_dev_mode_adds_a_users_downstreams_with_the_dev_servers_credentials() -> None:
    from auth import ConfigError

    base = "http://127.0.0.1:9"
    own = {"MCP_DOWNSTREAMS": json.dumps({"mine": {"url": "http://127.0.0.1:9/api", "mode": "as-server",
                                                   "resource": BACKEND_RESOURCE}})}
    onward = dev_onward(base, base + "/dev-ias", base + "/dev-ias/oauth2/token", own)
    assert "mine" in onward.downstreams.downstreams and "backend" in onward.downstreams.downstreams
    assert onward.downstreams.credentials is not None and onward.downstreams.credentials.client_id == "mcp-dev-server"
    clash = {"MCP_DOWNSTREAMS": json.dumps({"backend": {"url": "http://127.0.0.1:9/api", "mode": "as-server",
                                                        "resource": BACKEND_RESOURCE}})}
    with pytest.raises(ConfigError) as bad:
        dev_onward(base, base + "/dev-ias", base + "/dev-ias/oauth2/token", clash)
    assert bad.value.setting == "MCP_DOWNSTREAMS"
