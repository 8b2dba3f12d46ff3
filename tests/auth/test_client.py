"""The client-credentials token provider against real servers on 127.0.0.1.

Token endpoints, resource servers and the MCP server run under uvicorn in a background
thread; TLS material comes from `tests._certs`, generated per test. Clocks and back-off
sleeps are injected wherever time would otherwise pass.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings as MCPAuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.types import TextContent
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from auth._errors import ConfigError
from auth.client._credentials import (
    ClientCredentials,
    DiscoveryError,
    InvalidClient,
    IssuedToken,
    RetryPolicy,
    TokenEndpointUnreachable,
    TokenRequestRejected,
    TokenResponseError,
    backoff_delay,
    basic_authorization,
    client_ssl_context,
    credentials_from_env,
    discovery_urls,
    ias_resource,
    normalize_pem,
    parse_token_response,
    refresh_margin,
)
from auth.client._httpx import NeedToken, bearer_flow
from auth.client._provider import TokenProvider
from tests._certs import Issued, TestCA
from tests._live import running_server

pytestmark = pytest.mark.timeout(30)

CLIENT_ID = "21ad7bc4-79b2-48a7-8346-6806d385bf15"
SECRET = "s3cr3t:with/odd+chars&="
RESOURCE = "urn:sap:identity:application:provider:name:notes-api"


# --------------------------------------------------------------------------- servers


class _TLSAwareH11(H11Protocol):
    """uvicorn puts no TLS details in the ASGI scope; this adds the peer certificate (DER)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        app = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope = {
                    **scope,
                    "extensions": {**(scope.get("extensions") or {}), "tls": {"client_cert": der}},
                }
            await app(scope, receive, send)

        self.app = with_tls


@dataclass
class Seen:
    authorization: str | None
    form: dict[str, str]
    client_cert: bytes | None
    path: str


@dataclass
class TokenIdP:
    """A token endpoint (plus discovery) that records requests and fails or stalls on demand."""

    lifetime: int = 3600
    delay: float = 0.0
    failures: list[tuple[int, Any]] = field(default_factory=list)  # (status, JSON body or raw bytes)
    oidc_discovery: bool = True
    issuer: str | None = None  # what the metadata claims; by default the URL it was fetched from
    mtls_alias: bool = False  # advertise /mtls/oauth2/token in mtls_endpoint_aliases (RFC 8705 §5)
    seen: list[Seen] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    base_url: str = ""

    @property
    def hits(self) -> int:
        return len(self.seen)

    def accepts(self, token: str) -> bool:
        return token in self.issued and token not in self.revoked

    async def token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        tls = request.scope.get("extensions", {}).get("tls") or {}
        self.seen.append(
            Seen(request.headers.get("authorization"), form, tls.get("client_cert"), request.url.path)
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            status, body = self.failures.pop(0)
            if isinstance(body, bytes):
                return Response(body, status, media_type="application/json")
            return JSONResponse(body, status)
        token = f"token-{len(self.issued) + 1}"
        self.issued.append(token)
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime},
            headers={"Cache-Control": "no-store"},
        )

    async def openid_configuration(self, request: Request) -> Response:
        if not self.oidc_discovery:
            return JSONResponse({"error": "not found"}, 404)
        return self._metadata(request)

    async def oauth_metadata(self, request: Request) -> Response:
        return self._metadata(request)

    def _metadata(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        doc: dict[str, Any] = {"issuer": self.issuer or base, "token_endpoint": f"{base}/oauth2/token"}
        if self.mtls_alias:
            doc["mtls_endpoint_aliases"] = {"token_endpoint": f"{base}/mtls/oauth2/token"}
        return JSONResponse(doc)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/oauth2/token", self.token, methods=["POST"]),
                Route("/mtls/oauth2/token", self.token, methods=["POST"]),
                Route("/.well-known/openid-configuration", self.openid_configuration),
                Route("/.well-known/oauth-authorization-server", self.oauth_metadata),
            ]
        )


@pytest.fixture
def idp() -> Iterator[TokenIdP]:
    state = TokenIdP()
    with running_server(state.app()) as url:
        state.base_url = url
        yield state


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@dataclass
class TLSIdP:
    state: TokenIdP
    url: str
    ca: TestCA
    client: Issued


@pytest.fixture
def tls_idp(ca: TestCA) -> Iterator[TLSIdP]:
    """A token endpoint that insists on a client certificate from ``ca`` (RFC 8705 §2)."""
    server_cert = ca.issue_server()
    client = ca.issue_client(CLIENT_ID, kind="rsa")
    state = TokenIdP()
    with running_server(
        state.app(),
        http=_TLSAwareH11,
        ssl_certfile=str(server_cert.cert_path),
        ssl_keyfile=str(server_cert.key_path),
        ssl_ca_certs=str(ca.cert_path),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    ) as url:
        state.base_url = url
        yield TLSIdP(state, url, ca, client)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def secret_credentials(idp: TokenIdP, **kw: Any) -> ClientCredentials:
    return ClientCredentials(
        CLIENT_ID, token_endpoint=f"{idp.base_url}/oauth2/token", client_secret=SECRET, **kw
    )


def provider_for(creds: ClientCredentials, **kw: Any) -> TokenProvider:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("jitter", lambda: 0.0)
    kw.setdefault("timeout", 5.0)
    return TokenProvider(creds, **kw)


# --------------------------------------------------------------------------- secret (Basic)


async def test_secret_fetch_sends_basic_auth_grant_type_and_resource(idp: TokenIdP) -> None:
    async with provider_for(secret_credentials(idp, resource=RESOURCE)) as provider:
        assert await provider.token() == "token-1"
    (seen,) = idp.seen
    scheme, _, encoded = (seen.authorization or "").partition(" ")
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    assert scheme == "Basic"
    # RFC 6749 §2.3.1: each half is form-urlencoded before the Basic encoding.
    assert (unquote_plus(user), unquote_plus(password)) == (CLIENT_ID, SECRET)
    assert seen.form == {"grant_type": "client_credentials", "resource": RESOURCE}


async def test_plain_id_and_secret_decode_verbatim(idp: TokenIdP) -> None:
    creds = ClientCredentials(
        "plain-client", token_endpoint=f"{idp.base_url}/oauth2/token", client_secret="plainsecret"
    )
    async with provider_for(creds) as provider:
        await provider.token()
    assert base64.b64decode((idp.seen[0].authorization or "").split()[1]) == b"plain-client:plainsecret"
    assert idp.seen[0].form == {"grant_type": "client_credentials"}


async def test_resource_can_be_chosen_per_call_and_is_cached_separately(idp: TokenIdP) -> None:
    other = ias_resource(client_id="7d4b8c2e")
    async with provider_for(secret_credentials(idp, resource=RESOURCE)) as provider:
        a = await provider.token()
        b = await provider.token(resource=other)
        assert await provider.token() == a and await provider.token(resource=other) == b != a
    assert [s.form.get("resource") for s in idp.seen] == [
        RESOURCE,
        "urn:sap:identity:application:provider:clientid:7d4b8c2e",
    ]


async def test_issuer_discovery_prefers_openid_configuration(idp: TokenIdP) -> None:
    creds = ClientCredentials(CLIENT_ID, issuer=idp.base_url, client_secret=SECRET)
    async with provider_for(creds) as provider:
        await provider.token()
        assert await provider.token_endpoint() == f"{idp.base_url}/oauth2/token"


async def test_issuer_discovery_falls_back_to_rfc8414_metadata(idp: TokenIdP) -> None:
    idp.oidc_discovery = False
    creds = ClientCredentials(CLIENT_ID, issuer=idp.base_url, client_secret=SECRET)
    async with provider_for(creds) as provider:
        assert await provider.token() == "token-1"


async def test_discovery_rejects_metadata_for_another_issuer(idp: TokenIdP) -> None:
    idp.issuer = "https://evil.example"  # RFC 8414 §3.3: the metadata must name the issuer asked
    creds = ClientCredentials(CLIENT_ID, issuer=idp.base_url, client_secret=SECRET)
    async with provider_for(creds) as provider:
        with pytest.raises(DiscoveryError):
            await provider.token()
    assert idp.hits == 0


async def test_nothing_secret_reaches_the_log_or_repr(
    idp: TokenIdP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = secret_credentials(idp)
    async with provider_for(creds) as provider:
        token = await provider.token()
        issued = await provider.issued_token()
        text = (
            caplog.text
            + repr(creds)
            + str(creds)
            + repr(provider)
            + repr(issued)
            + repr(provider.httpx2_auth())
        )
    assert CLIENT_ID in caplog.text and idp.base_url in caplog.text
    for secret in (SECRET, token, basic_authorization(CLIENT_ID, SECRET).split()[1]):
        assert secret not in text


# --------------------------------------------------------------------------- mutual TLS


async def test_x509_fetch_presents_the_client_certificate(tls_idp: TLSIdP) -> None:
    creds = ClientCredentials(
        CLIENT_ID,
        token_endpoint=f"{tls_idp.url}/oauth2/token",
        certificate=tls_idp.client.cert_pem.decode(),
        private_key=tls_idp.client.key_pem.decode(),
        resource=RESOURCE,
    )
    assert creds.auth_method == "tls_client_auth"
    async with provider_for(creds, ca_bundle=tls_idp.ca.cert_path) as provider:
        assert await provider.token() == "token-1"
    (seen,) = tls_idp.state.seen
    assert seen.client_cert == tls_idp.client.der
    assert seen.authorization is None  # RFC 8705 §2: the certificate authenticates, the id is in the body
    assert seen.form == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "resource": RESOURCE}


async def test_mtls_server_refuses_a_client_without_certificate(tls_idp: TLSIdP) -> None:
    verify = ssl.create_default_context(cafile=str(tls_idp.ca.cert_path))
    async with httpx.AsyncClient(verify=verify, timeout=5) as client:
        with pytest.raises(httpx.TransportError):
            await client.post(f"{tls_idp.url}/oauth2/token", data={"grant_type": "client_credentials"})
    assert tls_idp.state.hits == 0


async def test_mtls_server_refuses_a_certificate_from_another_ca(tls_idp: TLSIdP, tmp_path: Path) -> None:
    stranger = TestCA(tmp_path / "other").issue_client(CLIENT_ID)
    creds = ClientCredentials(
        CLIENT_ID,
        token_endpoint=f"{tls_idp.url}/oauth2/token",
        certificate=stranger.cert_pem.decode(),
        private_key=stranger.key_pem.decode(),
    )
    async with provider_for(creds, ca_bundle=tls_idp.ca.cert_path) as provider:
        with pytest.raises(TokenEndpointUnreachable):
            await provider.token()
    assert tls_idp.state.hits == 0


async def test_untrusted_server_certificate_fails_at_once_without_retries(tls_idp: TLSIdP) -> None:
    creds = ClientCredentials(
        CLIENT_ID,
        token_endpoint=f"{tls_idp.url}/oauth2/token",
        certificate=tls_idp.client.cert_pem.decode(),
        private_key=tls_idp.client.key_pem.decode(),
    )
    sleeps = Sleeps()
    async with provider_for(creds, sleep=sleeps) as provider:  # default trust store: our test CA is unknown
        with pytest.raises(TokenEndpointUnreachable, match="not trusted"):
            await provider.token()
        assert provider.requests == 1 and sleeps == []


async def test_identity_binding_with_escaped_newlines_discovers_and_fetches_over_mtls(
    tls_idp: TLSIdP,
) -> None:
    escaped = {
        "certificate": tls_idp.client.cert_pem.decode().replace("\n", "\\n"),
        "key": tls_idp.client.key_pem.decode().replace("\n", "\\n"),
    }
    assert "\n" not in escaped["certificate"] and "RSA PRIVATE KEY" in escaped["key"]
    binding = {
        "clientid": CLIENT_ID,
        "credential-type": "X509_GENERATED",
        **escaped,
        "url": tls_idp.url,
        "domains": ["accounts.ondemand.com"],
    }
    creds = ClientCredentials.from_identity_binding(binding, resource=RESOURCE)
    assert creds.issuer == tls_idp.url and creds.token_endpoint is None
    assert creds.certificate == tls_idp.client.cert_pem.decode()
    async with provider_for(creds, ca_bundle=tls_idp.ca.cert_path) as provider:
        assert await provider.token() == "token-1"
    assert tls_idp.state.seen[0].client_cert == tls_idp.client.der


async def test_mtls_uses_the_advertised_mtls_endpoint_alias(tls_idp: TLSIdP) -> None:
    tls_idp.state.mtls_alias = True
    creds = ClientCredentials(
        CLIENT_ID,
        issuer=tls_idp.url,
        certificate=tls_idp.client.cert_pem.decode(),
        private_key=tls_idp.client.key_pem.decode(),
    )
    # An injected client carries the certificate itself, and the provider leaves it open.
    async with httpx.AsyncClient(verify=client_ssl_context(creds, ca_bundle=tls_idp.ca.cert_path)) as http:
        async with TokenProvider(creds, http_client=http) as provider:
            assert await provider.token() == "token-1"
        assert not http.is_closed
    assert [s.path for s in tls_idp.state.seen] == ["/mtls/oauth2/token"]


def test_client_ssl_context_loads_key_without_leaving_files(
    tls_idp: TLSIdP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = ClientCredentials(
        CLIENT_ID,
        token_endpoint=f"{tls_idp.url}/oauth2/token",
        certificate=tls_idp.client.cert_pem.decode(),
        private_key=tls_idp.client.key_pem.decode(),
    )
    monkeypatch.delattr("os.memfd_create", raising=False)  # force the temp-file path
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ctx = client_ssl_context(creds, ca_bundle=tls_idp.ca.cert_path)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with httpx.Client(verify=ctx, timeout=5) as client:
        assert (
            client.post(f"{tls_idp.url}/oauth2/token", data={"grant_type": "client_credentials"}).status_code
            == 200
        )


# --------------------------------------------------------------------------- cache, refresh, single flight


async def test_token_is_cached_then_refreshed_ahead_of_expiry(idp: TokenIdP) -> None:
    clock = FakeClock()
    async with provider_for(secret_credentials(idp), clock=clock) as provider:
        first = await provider.token()
        clock.now += 3600 - 361  # margin for a 1 h token is 360 s
        assert await provider.token() == first
        clock.now += 2
        assert await provider.token() == "token-2"
    assert idp.hits == 2


async def test_force_refresh_fetches_a_new_token(idp: TokenIdP) -> None:
    async with provider_for(secret_credentials(idp)) as provider:
        assert await provider.token() == "token-1"
        assert await provider.token(force_refresh=True) == "token-2"
        assert await provider.token() == "token-2"


async def test_refresh_failure_keeps_serving_a_still_valid_token(idp: TokenIdP) -> None:
    clock = FakeClock()
    async with provider_for(secret_credentials(idp), clock=clock) as provider:
        await provider.token()
        idp.failures = [(503, {"error": "temporarily_unavailable"})] * 6
        clock.now += 3500  # in the refresh window, not expired
        assert await provider.token() == "token-1"
        clock.now += 200  # now expired
        with pytest.raises(TokenEndpointUnreachable):
            await provider.token()


async def test_fifty_concurrent_callers_cause_one_token_request(idp: TokenIdP) -> None:
    idp.delay = 0.2
    async with provider_for(secret_credentials(idp)) as provider:
        tokens = await asyncio.gather(*(provider.token() for _ in range(50)))
    assert set(tokens) == {"token-1"} and idp.hits == 1


async def test_concurrent_callers_share_one_failure(idp: TokenIdP) -> None:
    idp.delay = 0.05
    idp.failures = [(401, {"error": "invalid_client"})]
    async with provider_for(secret_credentials(idp)) as provider:
        results = await asyncio.gather(*(provider.token() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, InvalidClient) for r in results) and idp.hits == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_request(idp: TokenIdP) -> None:
    idp.delay = 0.2
    async with provider_for(secret_credentials(idp)) as provider:
        impatient = asyncio.ensure_future(provider.token())
        await asyncio.sleep(0.05)
        patient = asyncio.ensure_future(provider.token())
        await asyncio.sleep(0.01)
        impatient.cancel()
        assert await patient == "token-1"
    assert idp.hits == 1


async def test_invalidate_ignores_a_token_already_replaced(idp: TokenIdP) -> None:
    async with provider_for(secret_credentials(idp)) as provider:
        old = await provider.token()
        provider.invalidate(old)
        new = await provider.token()
        provider.invalidate(old)  # a late 401 for the old token
        assert await provider.token() == new == "token-2"
    assert idp.hits == 2


# --------------------------------------------------------------------------- retries and errors


async def test_retries_on_503_then_succeeds_with_backoff(idp: TokenIdP) -> None:
    idp.failures = [(503, {"error": "temporarily_unavailable"}), (502, b"<html>bad gateway</html>")]
    sleeps = Sleeps()
    async with provider_for(secret_credentials(idp), sleep=sleeps) as provider:
        assert await provider.token() == "token-1"
    assert idp.hits == 3
    assert sleeps == [0.25, 0.5]  # jitter 0: half of 0.5 s, then half of 1 s


async def test_gives_up_after_the_configured_attempts(idp: TokenIdP) -> None:
    idp.failures = [(500, {})] * 5
    async with provider_for(secret_credentials(idp), retry=RetryPolicy(attempts=3)) as provider:
        with pytest.raises(TokenEndpointUnreachable) as caught:
            await provider.token()
    assert idp.hits == 3 and caught.value.status == 500


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, {"error": "invalid_client"}, InvalidClient),
        (401, b"", InvalidClient),
        (400, {"error": "invalid_client", "error_description": "bad secret"}, InvalidClient),
        (400, {"error": "invalid_target"}, TokenRequestRejected),
        (429, {"error": "slow_down"}, TokenRequestRejected),
    ],
)
async def test_no_retry_on_4xx(
    idp: TokenIdP, status: int, body: Any, error: type[TokenRequestRejected]
) -> None:
    idp.failures = [(status, body)]
    sleeps = Sleeps()
    async with provider_for(secret_credentials(idp), sleep=sleeps) as provider:
        with pytest.raises(error) as caught:
            await provider.token()
    assert idp.hits == 1 and sleeps == [] and caught.value.status == status
    if error is TokenRequestRejected:
        assert not isinstance(caught.value, InvalidClient)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"token_type": "Bearer"}',
        b'{"access_token": "x", "token_type": "mac"}',
        b'{"access_token": "x", "token_type": "Bearer", "expires_in": "soon"}',
    ],
)
async def test_garbage_token_response_is_a_token_response_error(idp: TokenIdP, body: bytes) -> None:
    idp.failures = [(200, body)]
    async with provider_for(secret_credentials(idp)) as provider:
        with pytest.raises(TokenResponseError):
            await provider.token()
    assert idp.hits == 1


async def test_unreachable_port_fails_within_bounded_time() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens here
    creds = ClientCredentials(
        CLIENT_ID, token_endpoint=f"http://127.0.0.1:{port}/oauth2/token", client_secret=SECRET
    )
    provider = TokenProvider(creds, retry=RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.1), timeout=2)
    started = time.monotonic()
    async with provider:
        with pytest.raises(TokenEndpointUnreachable):
            await provider.token()
    assert provider.requests == 3 and time.monotonic() - started < 3


async def test_a_stalled_endpoint_times_out_within_bounded_time(idp: TokenIdP) -> None:
    idp.delay = 1.0
    sleeps = Sleeps()
    async with provider_for(
        secret_credentials(idp), timeout=0.2, sleep=sleeps, retry=RetryPolicy(attempts=2)
    ) as provider:
        started = time.monotonic()
        with pytest.raises(TokenEndpointUnreachable, match="Timeout"):
            await provider.token()
        assert time.monotonic() - started < 1.0 and len(sleeps) == 1


# --------------------------------------------------------------------------- auth adapters


@pytest.fixture
def resource_server(idp: TokenIdP) -> Iterator[tuple[str, list[str]]]:
    """An API accepting only tokens ``idp`` issued and has not revoked."""
    seen: list[str] = []

    async def api(request: Request) -> Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        seen.append(token)
        if not idp.accepts(token):
            return JSONResponse(
                {"error": "invalid_token"}, 401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        return JSONResponse({"ok": True, "body": (await request.body()).decode()})

    with running_server(Starlette(routes=[Route("/api", api, methods=["GET", "POST"])])) as url:
        yield f"{url}/api", seen


async def test_httpx_auth_retries_once_with_a_fresh_token_after_401(
    idp: TokenIdP, resource_server: Any
) -> None:
    url, seen = resource_server
    async with provider_for(secret_credentials(idp)) as provider:
        async with httpx.AsyncClient(auth=provider.httpx_auth(), timeout=5) as client:
            assert (await client.post(url, content=b"payload")).status_code == 200
            idp.revoked.add("token-1")  # revoked early at the TokenIdP
            response = await client.post(url, content=b"payload")
    assert response.status_code == 200 and response.json()["body"] == "payload"
    assert seen == ["token-1", "token-1", "token-2"] and idp.hits == 2


async def test_a_second_401_is_returned_not_retried_again(idp: TokenIdP, resource_server: Any) -> None:
    url, seen = resource_server
    idp.revoked.update({"token-1", "token-2", "token-3"})
    async with provider_for(secret_credentials(idp)) as provider:
        async with httpx2.AsyncClient(auth=provider.httpx2_auth(), timeout=5) as client:
            response = await client.get(url)
    assert response.status_code == 401 and seen == ["token-1", "token-2"] and idp.hits == 2


async def test_httpx_auth_refuses_a_sync_client(idp: TokenIdP) -> None:
    async with provider_for(secret_credentials(idp)) as provider:
        with (
            httpx.Client(auth=provider.httpx_auth()) as client,
            pytest.raises(TypeError, match="AsyncClient"),
        ):
            client.get(f"{idp.base_url}/nowhere")


def test_bearer_flow_does_no_io_and_retries_once() -> None:
    request = httpx.Request("GET", "https://rs.example/api")
    flow = bearer_flow(request)
    assert next(flow) == NeedToken()
    assert flow.send("t1") is request and request.headers["authorization"] == "Bearer t1"
    assert flow.send(httpx.Response(401)) == NeedToken(refused="t1")
    assert flow.send("t2") is request and request.headers["authorization"] == "Bearer t2"
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(401))


def test_bearer_flow_stops_when_no_newer_token_exists() -> None:
    flow = bearer_flow(httpx2.Request("GET", "https://rs.example/api"))
    next(flow)
    flow.send("t1")
    assert flow.send(httpx2.Response(401)) == NeedToken(refused="t1")
    with pytest.raises(StopIteration):
        flow.send("t1")


# --------------------------------------------------------------------------- the mcp SDK client


async def test_mcp_client_authenticates_through_httpx2_auth(idp: TokenIdP) -> None:
    class IdPVerifier:
        async def verify_token(self, token: str) -> AccessToken | None:
            return AccessToken(token=token, client_id=CLIENT_ID, scopes=[]) if idp.accepts(token) else None

    mcp = MCPServer(
        "notes",
        token_verifier=IdPVerifier(),
        auth=MCPAuthSettings(
            issuer_url=AnyHttpUrl(idp.base_url),
            resource_server_url=AnyHttpUrl("http://127.0.0.1/mcp"),
            validate_token_resource=False,  # IdPVerifier decides alone: the audience is not under test here
        ),
        log_level="WARNING",
    )

    @mcp.tool()
    async def whoami() -> str:
        access = get_access_token()
        return f"{access.client_id if access else None} with {access.token if access else None}"

    app = mcp.streamable_http_app(stateless_http=True, json_response=True)
    async with provider_for(secret_credentials(idp)) as provider:
        with running_server(app, lifespan="on") as url:
            async with httpx2.AsyncClient(auth=provider.httpx2_auth(), timeout=10) as http:
                async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
                    first = await client.call_tool("whoami", {})
                    idp.revoked.add("token-1")
                    second = await client.call_tool("whoami", {})
            async with httpx2.AsyncClient(timeout=10) as anonymous:
                assert (await anonymous.post(f"{url}/mcp", json={})).status_code == 401
    assert [c.text for c in first.content if isinstance(c, TextContent)] == [f"{CLIENT_ID} with token-1"]
    assert [c.text for c in second.content if isinstance(c, TextContent)] == [f"{CLIENT_ID} with token-2"]
    assert idp.hits == 2


# --------------------------------------------------------------------------- configuration (pure)


def test_repr_hides_secret_and_key(ca: TestCA) -> None:
    client = ca.issue_client("c")
    creds = [
        ClientCredentials("c", token_endpoint="https://idp.example/oauth2/token", client_secret="hunter2"),
        ClientCredentials(
            "c",
            issuer="https://idp.example",
            certificate=client.cert_pem.decode(),
            private_key=client.key_pem.decode(),
        ),
    ]
    for c in creds:
        assert "hunter2" not in repr(c) and "PRIVATE" not in repr(c) and "BEGIN" not in str(c)
        assert "auth_method" in repr(c)


def test_from_vcap_services_picks_the_identity_binding(ca: TestCA) -> None:
    vcap = {
        "identity": [
            {
                "label": "identity",
                "name": "mcp-ias",
                "credentials": {
                    "clientid": CLIENT_ID,
                    "clientsecret": "x",
                    "credential-type": "SECRET",
                    "url": "https://tenant.accounts.ondemand.com/",
                },
            }
        ]
    }
    creds = ClientCredentials.from_vcap_services(json.dumps(vcap), resource=RESOURCE)
    assert (
        creds.issuer == "https://tenant.accounts.ondemand.com" and creds.auth_method == "client_secret_basic"
    )
    assert ClientCredentials.from_vcap_services(json.dumps(vcap), "mcp-ias") == creds.__class__(
        CLIENT_ID, issuer="https://tenant.accounts.ondemand.com", client_secret="x"
    )


def test_x509_provided_binding_takes_the_key_from_the_caller(ca: TestCA) -> None:
    client = ca.issue_client(CLIENT_ID)
    binding = {
        "clientid": CLIENT_ID,
        "credential-type": "X509_PROVIDED",
        "certificate": client.cert_pem.decode(),
        "url": "https://tenant.accounts.ondemand.com",
    }
    with pytest.raises(ConfigError) as caught:
        ClientCredentials.from_identity_binding(binding)
    assert caught.value.setting == "key"
    creds = ClientCredentials.from_identity_binding(binding, private_key=client.key_pem.decode())
    assert creds.auth_method == "tls_client_auth"


@pytest.mark.parametrize(
    ("vcap", "setting"),
    [
        ("{not json", "VCAP_SERVICES"),
        ('{"identity": []}', "VCAP_SERVICES"),
        (
            '{"identity": [{"name": "a", "credentials": {"url": "https://t.example"}}]}',
            "VCAP_SERVICES[a].credentials.clientid",
        ),
        (
            '{"identity": [{"name": "a", "credentials": {"clientid": "c", "url": "http://t.example"}}]}',
            "VCAP_SERVICES[a].credentials.clientsecret",
        ),
        (
            '{"identity": [{"name": "a", "credentials": {"clientid": "c", "clientsecret": "s", "url": "http://t.example"}}]}',
            "VCAP_SERVICES[a].credentials.url",
        ),
    ],
)
def test_bad_vcap_services_names_the_setting(vcap: str, setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ClientCredentials.from_vcap_services(vcap)
    assert caught.value.setting == setting


def test_mismatched_certificate_and_key_is_refused(ca: TestCA) -> None:
    a, b = ca.issue_client("a"), ca.issue_client("b")
    with pytest.raises(ConfigError) as caught:
        ClientCredentials(
            "a", issuer="https://idp.example", certificate=a.cert_pem.decode(), private_key=b.key_pem.decode()
        )
    assert caught.value.setting == "private_key" and "BEGIN" not in str(caught.value)


def test_from_pem_files(ca: TestCA) -> None:
    client = ca.issue_client("c")
    creds = ClientCredentials.from_pem_files(
        "c", client.cert_path, client.key_path, issuer="https://idp.example"
    )
    assert creds.certificate == client.cert_pem.decode()
    with pytest.raises(ConfigError) as caught:
        ClientCredentials.from_pem_files(
            "c", client.cert_path, client.key_path.with_name("missing"), issuer="https://idp.example"
        )
    assert caught.value.setting == "private_key"


def test_credentials_from_env_with_secret() -> None:
    creds = credentials_from_env(
        {
            "MCP_CLIENT_ID": "c",
            "MCP_CLIENT_SECRET": "s",
            "MCP_TOKEN_URL": "https://idp.example/oauth2/token",
            "MCP_TOKEN_RESOURCE": RESOURCE,
        }
    )
    assert creds == ClientCredentials(
        "c", token_endpoint="https://idp.example/oauth2/token", client_secret="s", resource=RESOURCE
    )


def test_credentials_from_env_with_certificate_text_or_files(ca: TestCA) -> None:
    client = ca.issue_client("c")
    as_text = credentials_from_env(
        {
            "MCP_CLIENT_ID": "c",
            "MCP_ISSUER": "https://idp.example",
            "MCP_CLIENT_CERT": client.cert_pem.decode().replace("\n", "\\n"),
            "MCP_CLIENT_KEY": client.key_pem.decode(),
        }
    )
    as_files = credentials_from_env(
        {
            "MCP_CLIENT_ID": "c",
            "MCP_ISSUER": "https://idp.example",
            "MCP_CLIENT_CERT": str(client.cert_path),
            "MCP_CLIENT_KEY": str(client.key_path),
        }
    )
    assert as_text == as_files and as_text.auth_method == "tls_client_auth"


def test_credentials_from_env_falls_back_to_vcap_services() -> None:
    vcap = {
        "identity": [
            {
                "name": "ias",
                "credentials": {
                    "clientid": "c",
                    "clientsecret": "s",
                    "url": "https://t.accounts.ondemand.com",
                },
            }
        ]
    }
    creds = credentials_from_env({"VCAP_SERVICES": json.dumps(vcap), "MCP_TOKEN_RESOURCE": RESOURCE})
    assert (
        creds.client_id == "c"
        and creds.issuer == "https://t.accounts.ondemand.com"
        and creds.resource == RESOURCE
    )


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "MCP_CLIENT_ID"),
        ({"MCP_CLIENT_SECRET": "s", "MCP_TOKEN_URL": "https://i.example/t"}, "MCP_CLIENT_ID"),
        ({"MCP_CLIENT_ID": "c", "MCP_CLIENT_SECRET": "s"}, "MCP_TOKEN_URL"),
        (
            {
                "MCP_CLIENT_ID": "c",
                "MCP_CLIENT_SECRET": "s",
                "MCP_TOKEN_URL": "https://i.example/t",
                "MCP_ISSUER": "https://i.example",
            },
            "MCP_TOKEN_URL",
        ),
        ({"MCP_CLIENT_ID": "c", "MCP_TOKEN_URL": "https://i.example/t"}, "MCP_CLIENT_SECRET"),
        (
            {"MCP_CLIENT_ID": "c", "MCP_CLIENT_SECRET": "s", "MCP_TOKEN_URL": "http://i.example/t"},
            "MCP_TOKEN_URL",
        ),
        (
            {"MCP_CLIENT_ID": "c", "MCP_CLIENT_SECRET": "s", "MCP_ISSUER": "https://i.example?x=1"},
            "MCP_ISSUER",
        ),
        (
            {
                "MCP_CLIENT_ID": "c",
                "MCP_CLIENT_SECRET": "s",
                "MCP_TOKEN_URL": "https://i.example/t",
                "MCP_TOKEN_RESOURCE": "not a uri",
            },
            "MCP_TOKEN_RESOURCE",
        ),
        (
            {
                "MCP_CLIENT_ID": "c",
                "MCP_TOKEN_URL": "https://i.example/t",
                "MCP_CLIENT_CERT": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
            },
            "MCP_CLIENT_KEY",
        ),
        (
            {
                "MCP_CLIENT_ID": "c",
                "MCP_TOKEN_URL": "https://i.example/t",
                "MCP_CLIENT_CERT": "/no/such/file.pem",
                "MCP_CLIENT_KEY": "/no/such/key.pem",
            },
            "MCP_CLIENT_CERT",
        ),
        ({"VCAP_SERVICES": "[]"}, "VCAP_SERVICES"),
    ],
)
def test_credentials_from_env_names_the_bad_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        credentials_from_env(env)
    assert caught.value.setting == setting


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-----BEGIN X-----\\nAAAA\\n-----END X-----\\n", "-----BEGIN X-----\nAAAA\n-----END X-----\n"),
        ("-----BEGIN X-----\r\nAAAA\r\n-----END X-----", "-----BEGIN X-----\nAAAA\n-----END X-----\n"),
        ("  -----BEGIN X-----\nAAAA\n-----END X-----\n\n", "-----BEGIN X-----\nAAAA\n-----END X-----\n"),
    ],
)
def test_normalize_pem(text: str, expected: str) -> None:
    assert normalize_pem(text) == expected


@pytest.mark.parametrize(("lifetime", "margin"), [(3600, 360), (300, 60), (60, 30), (86400, 8640)])
def test_refresh_margin(lifetime: float, margin: float) -> None:
    assert refresh_margin(lifetime) == margin


@pytest.mark.parametrize(
    ("retry", "jitter", "retry_after", "delay"),
    [
        (1, 0.0, None, 0.25),
        (1, 0.999, None, 0.49975),
        (3, 0.0, None, 1.0),
        (10, 1.0, None, 8.0),
        (1, 0.0, 3.0, 3.0),
        (1, 0.0, 600.0, 8.0),
    ],
)
def test_backoff_delay(retry: int, jitter: float, retry_after: float | None, delay: float) -> None:
    assert backoff_delay(RetryPolicy(), retry, jitter, retry_after) == pytest.approx(delay)


def test_discovery_urls_follow_oidc_and_rfc8414() -> None:
    assert discovery_urls("https://t.example") == (
        "https://t.example/.well-known/openid-configuration",
        "https://t.example/.well-known/oauth-authorization-server",
    )
    assert (
        discovery_urls("https://t.example/realms/x")[1]
        == "https://t.example/.well-known/oauth-authorization-server/realms/x"
    )


def test_ias_resource() -> None:
    assert ias_resource(name="notes-api") == RESOURCE
    assert ias_resource(client_id="abc") == "urn:sap:identity:application:provider:clientid:abc"
    with pytest.raises(ValueError):
        ias_resource()
    with pytest.raises(ValueError):
        ias_resource(name="a", client_id="b")


def test_parse_token_response_defaults_lifetime_and_hides_the_token() -> None:
    issued = parse_token_response(200, b'{"access_token": "abc", "token_type": "bearer"}', obtained_at=10.0)
    assert issued == IssuedToken("abc", "bearer", 300.0, 10.0) and "abc" not in repr(issued)
    assert issued.expires_at == 310.0 and issued.refresh_at == 250.0
