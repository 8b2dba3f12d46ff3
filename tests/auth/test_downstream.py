"""auth.downstream: settings, the Destination service client, and `Downstreams` outside an MCP server.

Live parts run over real HTTP on 127.0.0.1: the dev issuer with its exchange grants, the
Destination service look-alike (`server._dev_destination`, built to SAP's documented API), the
example backend, and a TLS server that requires a client certificate.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from mcp.server.mcpserver.exceptions import ToolError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from auth import ConfigError
from auth.client import ClientCredentials, ExchangeTarget, ias_resource
from auth.downstream import (
    Destination,
    DestinationBinding,
    DestinationError,
    DestinationService,
    Downstream,
    DownstreamError,
    Downstreams,
    DownstreamSettings,
    load_downstreams,
)
from auth.downstream._destination import certificate_bundle, parse_destination
from server._dev_backend import BACKEND_PATH, backend_app, backend_settings
from server._dev_destination import DESTINATION_PATH, DevDestinationService
from server._dev_issuer import DevIssuer
from server._dev_onward import DESTINATION_CLIENT, SERVER_CLIENT, onward_applications, onward_clients
from tests._certs import TestCA
from tests._live import running_server

pytestmark = pytest.mark.timeout(60)

TARGET = ias_resource(name="notes-backend")
VCAP_IDENTITY = {"identity": [{"label": "identity", "name": "my-ias", "credentials": {
    "clientid": "srv", "clientsecret": "s3cret", "url": "https://t.accounts.ondemand.com",
    "credential-type": "SECRET"}}]}
VCAP_DESTINATION = {"destination": [{"label": "destination", "name": "my-dest", "credentials": {
    "clientid": "sb-dest", "clientsecret": "ds", "url": "https://sub.authentication.eu10.hana.ondemand.com",
    "uri": "https://destination-configuration.cfapps.eu10.hana.ondemand.com"}}]}


# --------------------------------------------------------------------------- settings (pure)


def test_downstreams_from_the_environment_and_bindings() -> None:
    vcap = {**VCAP_IDENTITY, **VCAP_DESTINATION, "user-provided": [{
        "name": "orders", "tags": ["mcp-downstream"],
        "credentials": {"url": "https://orders.example/api", "mode": "as-server", "resource": TARGET}}]}
    env = {
        "VCAP_SERVICES": json.dumps(vcap),
        "MCP_DOWNSTREAMS": json.dumps({
            "backend": {"url": "https://backend.example", "mode": "on-behalf-of", "resource": TARGET},
            "exchange": {"url": "https://x.example", "mode": "on-behalf-of", "grant": "token-exchange",
                         "audience": "x", "timeout": 3},
            "s4": {"destination": "S4_ORDERS"},
        }),
    }
    settings = load_downstreams(env)
    assert sorted(settings.downstreams) == ["backend", "exchange", "orders", "s4"]
    backend = settings.downstreams["backend"]
    assert backend.target == ExchangeTarget("jwt-bearer", resource=TARGET, token_format="jwt")
    assert settings.downstreams["exchange"].target.token_format is None  # type: ignore[union-attr]
    assert settings.downstreams["exchange"].timeout_s == 3.0
    assert settings.downstreams["orders"].mode == "as-server"
    assert settings.downstreams["s4"].mode == "destination"
    assert settings.credentials is not None and settings.credentials.client_id == "srv"
    assert settings.credentials.issuer == "https://t.accounts.ondemand.com"  # IAS: discovered
    binding = settings.destination_service
    assert binding is not None and binding.service_url.endswith("hana.ondemand.com")
    assert binding.credentials.token_endpoint == "https://sub.authentication.eu10.hana.ondemand.com/oauth/token"


def test_downstreams_and_credentials_from_mounted_bindings(tmp_path: Path) -> None:
    """Kyma: servicebinding.io folders under SERVICE_BINDING_ROOT, one text file per entry."""
    files = {
        "orders": {"type": "mcp-downstream", "url": "https://orders.example\n", "mode": "on-behalf-of",
                   "resource": TARGET, "timeout": "4"},
        "ias": {"type": "identity", "clientid": "srv", "clientsecret": "pw", "url": "https://t.accounts.ondemand.com"},
    }
    for folder, entries in files.items():
        (tmp_path / folder).mkdir()
        for name, value in entries.items():
            (tmp_path / folder / name).write_text(value)
    settings = load_downstreams({"SERVICE_BINDING_ROOT": str(tmp_path)})
    orders = settings.downstreams["orders"]
    assert (orders.mode, orders.url, orders.timeout_s) == ("on-behalf-of", "https://orders.example", 4.0)
    assert settings.credentials is not None and settings.credentials.client_id == "srv"
    (tmp_path / "orders" / "mode").write_text("sideways")
    with pytest.raises(ConfigError) as bad:
        load_downstreams({"SERVICE_BINDING_ROOT": str(tmp_path)})
    assert "orders" in bad.value.setting and bad.value.setting.endswith(".mode")


def test_no_downstreams_is_falsy_settings() -> None:
    assert not load_downstreams({})
    assert not load_downstreams({"VCAP_SERVICES": json.dumps(VCAP_IDENTITY)})


def test_server_credentials_from_the_environment_or_an_xsuaa_binding() -> None:
    one = {"MCP_DOWNSTREAMS": json.dumps({"b": {"url": "https://b.example", "mode": "as-server",
                                                "resource": TARGET}})}
    env = {**one, "MCP_DOWNSTREAM_CLIENT_ID": "me", "MCP_DOWNSTREAM_CLIENT_SECRET": "pw",
           "MCP_DOWNSTREAM_TOKEN_URL": "https://ias.example/oauth2/token"}
    assert load_downstreams(env).credentials == ClientCredentials(
        "me", token_endpoint="https://ias.example/oauth2/token", client_secret="pw")
    xsuaa = {"xsuaa": [{"name": "uaa", "credentials": {"clientid": "sb-x", "clientsecret": "y",
                                                      "url": "https://sub.authentication.example.com"}}]}
    creds = load_downstreams({**one, "VCAP_SERVICES": json.dumps(xsuaa)}).credentials
    assert creds is not None and creds.token_endpoint == "https://sub.authentication.example.com/oauth/token"


ONE = {"url": "https://b.example", "mode": "on-behalf-of", "resource": TARGET}


@pytest.mark.parametrize(("downstreams", "extra", "setting"), [
    ("{", {}, "MCP_DOWNSTREAMS"),
    ("[]", {}, "MCP_DOWNSTREAMS"),
    ({"bad name!": ONE}, {}, "MCP_DOWNSTREAMS"),
    ({"b": {**ONE, "mode": "sideways"}}, {}, "MCP_DOWNSTREAMS[b].mode"),
    ({"b": {**ONE, "url": "http://b.example"}}, {}, "MCP_DOWNSTREAMS[b].url"),  # http only on loopback
    ({"b": {k: v for k, v in ONE.items() if k != "resource"}}, {}, "MCP_DOWNSTREAMS[b].resource"),  # no passthrough
    ({"b": {**ONE, "grant": "password"}}, {}, "MCP_DOWNSTREAMS[b].grant"),
    ({"b": {**ONE, "audience": "x"}}, {}, "MCP_DOWNSTREAMS[b].audience"),  # RFC 8693 only
    ({"b": {**ONE, "mode": "as-server", "grant": "jwt-bearer"}}, {}, "MCP_DOWNSTREAMS[b].grant"),
    ({"b": {**ONE, "timeout": 0}}, {}, "MCP_DOWNSTREAMS[b].timeout"),
    ({"b": {**ONE, "timeout": "soon"}}, {}, "MCP_DOWNSTREAMS[b].timeout"),
    ({"b": {**ONE, "colour": "red"}}, {}, "MCP_DOWNSTREAMS[b].colour"),
    ({"b": {"destination": "a/b"}}, {}, "MCP_DOWNSTREAMS[b].destination"),
    ({"b": {"destination": "S4", "url": "https://x.example"}}, {}, "MCP_DOWNSTREAMS[b].destination"),
    ({"b": ONE}, {"VCAP_SERVICES": "{}"}, "MCP_DOWNSTREAM_CLIENT_ID"),  # nobody to exchange as
    ({"b": {"destination": "S4"}}, {}, "MCP_DOWNSTREAMS[b].destination"),  # no destination binding
    ({"b": ONE}, {"MCP_DOWNSTREAM_TIMEOUT": "0"}, "MCP_DOWNSTREAM_TIMEOUT"),
    ({"b": ONE}, {"MCP_DOWNSTREAM_CLIENT_ID": "me", "MCP_DOWNSTREAM_TOKEN_URL": "https://i.example/t"},
     "MCP_DOWNSTREAM_CLIENT_SECRET"),
    ({"b": ONE}, {"MCP_DOWNSTREAM_BINDING": "nope", "VCAP_SERVICES": json.dumps(VCAP_IDENTITY)},
     "MCP_DOWNSTREAM_BINDING"),
])
def test_a_bad_setting_is_named(downstreams: Any, extra: dict[str, str], setting: str) -> None:
    raw = downstreams if isinstance(downstreams, str) else json.dumps(downstreams)
    with pytest.raises(ConfigError) as bad:
        load_downstreams({"MCP_DOWNSTREAMS": raw, **extra})
    assert bad.value.setting == setting


def test_a_destination_binding_names_its_missing_key() -> None:
    with pytest.raises(ConfigError) as bad:
        DestinationBinding.from_binding({"clientid": "x", "clientsecret": "y", "url": "https://a.example"})
    assert bad.value.setting.endswith(".uri")


# --------------------------------------------------------------------------- Destination answers (pure)


def _answer(config: dict[str, Any], **rest: Any) -> bytes:
    return json.dumps({"owner": {"SubaccountId": "s", "InstanceId": None},
                       "destinationConfiguration": {"Name": "d", "Type": "HTTP", **config}, **rest}).encode()


TOKEN = {"type": "Bearer", "value": "h.p.s", "http_header": {"key": "Authorization", "value": "Bearer h.p.s"},
         "expires_in": "3600"}


def test_a_destination_keeps_url_headers_and_lifetime_not_its_credentials() -> None:
    body = _answer({"URL": "https://s4.example/sap", "Authentication": "OAuth2JWTBearer", "clientSecret": "cs",
                    "sap-client": "100", "URL.headers.x-csrf-token": "fetch"}, authTokens=[TOKEN])
    found = parse_destination(200, body, "d")
    assert found == Destination("d", "https://s4.example/sap", "OAuth2JWTBearer",
                                (("sap-client", "100"), ("x-csrf-token", "fetch"), ("Authorization", "Bearer h.p.s")),
                                None, 3600.0)
    assert "h.p.s" not in repr(found) and "cs" not in repr(found)
    assert found.caller_token_header == "X-user-token"


@pytest.mark.parametrize(("status", "body", "code"), [
    (404, b'{"ErrorMessage": "Configuration with the specified name was not found"}', "destination_refused"),
    (401, b"Unauthorized", "destination_refused"),
    (200, b"not json", "destination_unavailable"),
    (200, _answer({"URL": "https://a.example", "Authentication": "OAuth2JWTBearer"},
                  authTokens=[{"type": "", "value": "", "error": "exchange failed"}]), "destination_refused"),
    (200, _answer({"URL": "https://a.example", "Authentication": "OAuth2ClientCredentials"}), "destination_refused"),
    (200, _answer({"URL": "https://a.example", "ProxyType": "OnPremise"}), "destination_refused"),
    (200, _answer({"URL": "ftp://a.example"}), "destination_refused"),
    (200, _answer({"Authentication": "NoAuthentication"}), "destination_refused"),
    (200, _answer({"URL": "https://a.example", "Authentication": "ClientCertificateAuthentication"}),
     "destination_refused"),
])
def test_a_destination_that_cannot_be_used_is_refused(status: int, body: bytes, code: str) -> None:
    with pytest.raises(DestinationError) as bad:
        parse_destination(status, body, "d")
    assert bad.value.code == code


@pytest.fixture(scope="module")
def client_identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, Any]:
    ca = TestCA(tmp_path_factory.mktemp("ca"))
    return ca, ca.issue_client("destination-client", kind="rsa")


def _p12(issued: Any, password: bytes | None) -> bytes:
    key = serialization.load_pem_private_key(issued.key_pem, None)
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return pkcs12.serialize_key_and_certificates(b"c", key, issued.certificate, None, encryption)  # type: ignore[arg-type]


def test_keystores_open_from_p12_and_pem(client_identity: tuple[TestCA, Any]) -> None:
    _, issued = client_identity
    p12 = base64.b64encode(_p12(issued, b"pw")).decode()
    bundle = certificate_bundle([{"Name": "c.p12", "Content": p12}], {"KeyStoreLocation": "c.p12",
                                                                       "KeyStorePassword": "pw"}, "d")
    assert issued.cert_pem.decode() in bundle and "PRIVATE KEY" in bundle
    pem = base64.b64encode(issued.cert_pem + issued.key_pem).decode()
    assert issued.cert_pem.decode() in certificate_bundle([{"Name": "c.pem", "Content": pem}], {}, "d")
    with pytest.raises(DestinationError):  # wrong password: refused, the key never echoed
        certificate_bundle([{"Name": "c.p12", "Content": p12}], {"KeyStoreLocation": "c.p12",
                                                                 "KeyStorePassword": "no"}, "d")


# --------------------------------------------------------------------------- live: issuer, service, backend


@dataclass
class World:
    base_url: str
    issuer: DevIssuer
    service: DevDestinationService
    tls_url: str
    ca: TestCA

    def binding(self) -> DestinationBinding:
        return DestinationBinding(self.base_url + DESTINATION_PATH, ClientCredentials(
            DESTINATION_CLIENT[0], token_endpoint=self.issuer.token_endpoint, client_secret=DESTINATION_CLIENT[1],
            resource=ias_resource(name="destination-service")))

    def settings(self, *downstreams: Downstream) -> DownstreamSettings:
        return DownstreamSettings(
            downstreams={d.name: d for d in downstreams},
            credentials=ClientCredentials(SERVER_CLIENT[0], token_endpoint=self.issuer.token_endpoint,
                                          client_secret=SERVER_CLIENT[1]),
            destination_service=self.binding(),
            ca_file=str(self.ca.cert_path),
        )


@pytest.fixture(scope="module")
def world(client_identity: tuple[TestCA, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ca, client = client_identity
    server = ca.issue_server()

    async def mtls_ok(_: Request) -> JSONResponse:
        return JSONResponse({"mtls": True})

    with running_server(Starlette(routes=[Route("/caller", mtls_ok)]), ssl_certfile=str(server.cert_path),
                        ssl_keyfile=str(server.key_path), ssl_ca_certs=str(ca.cert_path),
                        ssl_cert_reqs=ssl.CERT_REQUIRED) as tls_url:
        built: list[World] = []

        def factory(base_url: str) -> Any:
            issuer = DevIssuer(base_url, extra_clients=onward_clients(),
                                         applications=onward_applications(base_url))
            common = {"Type": "HTTP", "URL": base_url + BACKEND_PATH, "tokenServiceURL": issuer.token_endpoint,
                      "clientId": SERVER_CLIENT[0], "clientSecret": SERVER_CLIENT[1],
                      "tokenService.body.resource": TARGET}
            service = DevDestinationService(issuer.issuer, base_url + DESTINATION_PATH, {
                "user": {"Name": "user", "Authentication": "OAuth2JWTBearer", **common},
                "app": {"Name": "app", "Authentication": "OAuth2ClientCredentials", **common},
                "exchange": {"Name": "exchange", "Authentication": "OAuth2TokenExchange", **common},
                "open": {"Name": "open", "Type": "HTTP", "URL": base_url + "/open",
                         "Authentication": "NoAuthentication"},
                "mtls": {"Name": "mtls", "Type": "HTTP", "URL": tls_url, "Authentication":
                         "ClientCertificateAuthentication", "KeyStoreLocation": "client.p12",
                         "KeyStorePassword": "pw"},
                "broken": {"Name": "broken", "Authentication": "OAuth2ClientCredentials",
                           **{**common, "clientSecret": "wrong"}},
            }, certificates={"client.p12": _p12(client, b"pw")})

            async def open_caller(request: Request) -> Response:
                return JSONResponse({"authorization": request.headers.get("authorization")})

            built.append(World(base_url, issuer, service, tls_url, ca))
            return Starlette(routes=[
                issuer.mount(), Mount(DESTINATION_PATH, app=service.app()),
                Mount(BACKEND_PATH, app=backend_app(backend_settings(issuer.issuer, base_url))),
                Route("/open/caller", open_caller),
            ])

        with running_server(factory=factory, lifespan="on"):
            yield built[0]


def _seen(world: World, since: int, name: str) -> list[frozenset[str]]:
    return [headers for n, headers in world.service.lookups[since:] if n == name]


async def test_the_callers_token_goes_to_the_service_only_for_a_destination_that_needs_it(world: World) -> None:
    caller = world.issuer.mint("dev-read")
    start = len(world.service.lookups)
    async with DestinationService(world.binding()) as service:
        app = await service.lookup("app", caller_token=caller)
        user = await service.lookup("user", caller_token=caller)
        exchange = await service.lookup("exchange", caller_token=caller)
    assert _seen(world, start, "app") == [frozenset(), frozenset()]  # the type probe, then the lookup
    assert _seen(world, start, "user") == [frozenset(), frozenset({"x-user-token"})]
    assert _seen(world, start, "exchange") == [frozenset(), frozenset({"x-subject-token"})]
    for found, subject in ((app, "mcp-dev-server"), (user, "dev-read"), (exchange, "dev-read")):
        bearer = dict(found.headers)["Authorization"].partition(" ")[2]
        claims = json.loads(base64.urlsafe_b64decode(bearer.split(".")[1] + "=="))
        assert (claims["sub"], claims["aud"]) == (subject, ["dev-backend"])
        assert bearer != caller
    assert app.lifetime is not None and 0 < app.lifetime <= 3600


async def test_lookups_are_cached_per_caller_and_the_type_is_learnt_once(world: World) -> None:
    alice, bob = world.issuer.mint("dev-read"), world.issuer.mint("dev-full")
    async with DestinationService(world.binding()) as service:
        first = await service.lookup("user", caller_token=alice)
        assert service.lookups == 2
        assert await service.lookup("user", caller_token=alice) is first
        assert service.lookups == 2
        other = await service.lookup("user", caller_token=bob)
        assert service.lookups == 3  # the type is known: one lookup, for bob's own token
    assert other.headers != first.headers


@pytest.mark.parametrize(("name", "caller", "code"), [
    ("user", False, "destination_refused"),  # needs the caller's token, none given
    ("broken", True, "destination_refused"),  # the service could not fetch the destination's token
    ("no-such-destination", True, "destination_refused"),
])
async def test_a_destination_that_cannot_be_had_is_an_error(world: World, name: str, caller: bool, code: str) -> None:
    async with DestinationService(world.binding()) as service:
        with pytest.raises(DestinationError) as failed:
            await service.lookup(name, caller_token=world.issuer.mint("dev-read") if caller else None)
    assert failed.value.code == code


async def test_wrong_binding_credentials_are_refused(world: World) -> None:
    binding = world.binding()
    wrong = DestinationBinding(binding.service_url, ClientCredentials(
        DESTINATION_CLIENT[0], token_endpoint=world.issuer.token_endpoint, client_secret="wrong"))
    async with DestinationService(wrong) as service:
        with pytest.raises(DestinationError) as failed:
            await service.lookup("app")
    assert failed.value.code == "destination_refused"


async def test_a_client_certificate_destination_presents_its_keystore(world: World) -> None:
    audit: list[dict[str, Any]] = []
    settings = world.settings(Downstream("mtls", "destination", destination="mtls"))
    async with Downstreams(settings, audit=lambda _m, f: audit.append(dict(f))) as downstreams:
        response = await downstreams.request("mtls", "GET", "/caller")
    assert response.status_code == 200 and response.json() == {"mtls": True}  # CERT_REQUIRED handshake passed
    assert audit[-1]["authentication"] == "ClientCertificateAuthentication" and audit[-1]["outcome"] == "ok"


async def test_a_no_authentication_destination_gets_no_token_at_all(world: World) -> None:
    settings = world.settings(Downstream("open", "destination", destination="open"))
    async with Downstreams(settings) as downstreams:
        response = await downstreams.request("open", "GET", "/caller", subject_token=world.issuer.mint("dev-read"))
    assert response.json() == {"authorization": None}


async def test_an_oversized_answer_is_refused(world: World) -> None:
    settings = world.settings(Downstream("open", "destination", destination="open"))
    async with Downstreams(settings, max_response_bytes=8) as downstreams:
        with pytest.raises(DownstreamError) as failed:
            await downstreams.request("open", "GET", "/caller")
    assert failed.value.code == "response_too_large"


# --------------------------------------------------------------------------- Downstreams outside MCP


def backend(world: World, mode: str = "on-behalf-of") -> Downstream:
    target = ExchangeTarget(resource=TARGET, token_format="jwt" if mode == "on-behalf-of" else None)
    return Downstream("b", mode, world.base_url + BACKEND_PATH, target)  # type: ignore[arg-type]


async def test_on_behalf_of_without_a_caller_is_no_caller(world: World) -> None:
    async with Downstreams(world.settings(backend(world))) as downstreams:
        with pytest.raises(DownstreamError) as failed:
            await downstreams.token("b")
    assert failed.value.code == "no_caller" and isinstance(failed.value, ToolError)


async def test_an_explicit_subject_token_is_exchanged(world: World) -> None:
    async with Downstreams(world.settings(backend(world))) as downstreams:
        response = await downstreams.request("b", "GET", "/caller", subject_token=world.issuer.mint("dev-full"))
    assert response.json()["subject"] == "dev-full"


async def test_the_client_uses_the_current_principal_and_audits_each_request(world: World) -> None:
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    from auth import VerifiedToken
    from auth._context import bind_token, reset_token

    raw = world.issuer.mint("dev-read")
    principal = VerifiedToken("dev-read", "dev-read", world.issuer.issuer, ("mcp-dev-server",),
                              frozenset({"api_read_access"}), int(time.time()) + 600)
    audit: list[dict[str, Any]] = []
    handle = bind_token(principal)
    sdk = auth_context_var.set(AuthenticatedUser(AccessToken(token=raw, client_id="dev-read", scopes=[])))
    try:
        async with Downstreams(world.settings(backend(world)), audit=lambda _m, f: audit.append(dict(f))) as ds:
            response = await ds.client("b").get("caller")
    finally:
        auth_context_var.reset(sdk)
        reset_token(handle)
    assert response.status_code == 200 and response.json()["subject"] == "dev-read"
    assert audit == [{"client_id": "dev-read", "downstream": "b", "mode": "on-behalf-of", "call": "client",
                      "outcome": "ok", "status": 200, "duration_ms": audit[0]["duration_ms"]}]


@pytest.fixture
def echo_issuer() -> Iterator[str]:
    """A broken issuer that answers an exchange with the very token it was given."""

    async def token(request: Request) -> JSONResponse:
        form = await request.form()
        return JSONResponse({"access_token": form.get("assertion"), "token_type": "Bearer", "expires_in": 60})

    with running_server(Starlette(routes=[Route("/token", token, methods=["POST"])])) as url:
        yield url + "/token"


async def test_the_callers_token_is_never_sent_on_even_if_an_issuer_hands_it_back(
    world: World, echo_issuer: str
) -> None:
    settings = DownstreamSettings(
        downstreams={"b": backend(world)},
        credentials=ClientCredentials("me", token_endpoint=echo_issuer, client_secret="s"),
    )
    caller = world.issuer.mint("dev-read")
    async with Downstreams(settings) as downstreams:
        for call in (downstreams.token("b", subject_token=caller),
                     downstreams.request("b", "GET", "/caller", subject_token=caller)):
            with pytest.raises(DownstreamError) as failed:
                await call
            assert failed.value.code == "passthrough_refused"


async def test_unknown_names_and_destination_clients_are_errors(world: World) -> None:
    async with Downstreams(world.settings(Downstream("d", "destination", destination="app"))) as downstreams:
        with pytest.raises(DownstreamError) as unknown:
            await downstreams.token("nope")
        with pytest.raises(DownstreamError):
            downstreams.client("d")  # a destination's URL is the service's to give: request() only
    assert unknown.value.code == "unknown_downstream"


@pytest.mark.parametrize("mode", ["on-behalf-of", "as-server"])
@pytest.mark.parametrize("where", ["header", "query", "body", "path"])
async def test_a_tool_cannot_forward_the_callers_token_itself(world: World, mode: str, where: str) -> None:
    caller = world.issuer.mint("dev-read")
    kwargs: dict[str, Any] = {
        "header": {"headers": {"X-Original-Token": caller}},
        "query": {"params": {"token": caller}},
        "body": {"json": {"forwarded": caller}},
        "path": {},
    }[where]
    path = f"/caller/{caller}" if where == "path" else "/caller"
    async with Downstreams(world.settings(backend(world, mode))) as downstreams:
        with pytest.raises(DownstreamError) as failed:
            await downstreams.request("b", "POST", path, subject_token=caller, **kwargs)
    assert failed.value.code == "passthrough_refused"


async def test_a_tools_own_authorization_header_never_doubles_ours(world: World) -> None:
    caller = world.issuer.mint("dev-read")
    async with Downstreams(world.settings(backend(world))) as downstreams:
        response = await downstreams.request("b", "GET", "/caller", subject_token=caller,
                                             headers={"authorization": "Bearer something-else"})
    assert response.status_code == 200 and response.json()["subject"] == "dev-read"
