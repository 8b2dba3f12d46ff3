"""uvicorn terminating mutual TLS (``server._tls``), the dev issuer's ``tls_client_auth``, and
certificate-bound tokens end to end: real uvicorn on 127.0.0.1 over HTTPS, the real app, the
real ``mcp`` client presenting a client certificate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from cryptography import x509
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auth import JWTVerifier, certificate_thumbprint
from auth._errors import ConfigError
from auth.client import ClientCredentials, TokenProvider
from server import create_app
from server._dev_issuer import DevClient, DevIssuer
from server._main import dev_jwks_client, dev_settings
from server._settings import load_server_settings
from server._tls import TLSH11Protocol, check_tls_files, uvicorn_tls_options
from tests._certs import Issued, TestCA
from tests._live import running_server

from .conftest import JSON_HEADERS, LEGACY_HEADERS, REPO, challenge_params, jwt_claims, tool_call

pytestmark = pytest.mark.timeout(60)

X509_ID = "x509-agent"
READ, WRITE = "api_read_access", "api_write_access"


@dataclass(frozen=True)
class PKI:
    ca: TestCA
    server: Issued
    agent: Issued  # registered with the dev issuer as X509_ID
    other: Issued  # same CA, not registered
    stranger: Issued  # another CA altogether

    def context(self, client: Issued | None = None) -> ssl.SSLContext:
        """Trusts the test CA; presents ``client``'s certificate if given."""
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_path))
        if client is not None:
            ctx.load_cert_chain(str(client.cert_path), str(client.key_path))
        return ctx

    def tls_options(self) -> dict[str, Any]:
        return uvicorn_tls_options(self.server.cert_path, self.server.key_path, self.ca.cert_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    ca = TestCA(root / "ca")
    return PKI(
        ca=ca,
        server=ca.issue_server(),
        agent=ca.issue_client(X509_ID, kind="rsa"),
        other=ca.issue_client("someone-else"),
        stranger=TestCA(root / "stranger", "Stranger CA").issue_client(X509_ID),
    )


@dataclass
class TLSServer:
    base_url: str
    issuer: DevIssuer
    pki: PKI

    @property
    def mcp_url(self) -> str:
        return self.base_url + "/mcp"

    def token_response(self, client: Issued | None, data: dict[str, str], *,
                       auth: tuple[str, str] | None = None) -> httpx.Response:
        with httpx.Client(verify=self.pki.context(client), timeout=10) as http:
            return http.post(self.issuer.token_endpoint, data=data, auth=auth)

    def x509_token(self, client: Issued | None = None) -> str:
        response = self.token_response(client or self.pki.agent,
                                       {"grant_type": "client_credentials", "client_id": X509_ID})
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def secret_token(self, client: Issued | None = None, client_id: str = "dev-read") -> str:
        response = self.token_response(client, {"grant_type": "client_credentials"},
                                       auth=(client_id, f"{client_id}-secret"))
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def whoami_raw(self, token: str, client: Issued | None) -> httpx.Response:
        with httpx.Client(verify=self.pki.context(client), timeout=10) as http:
            return http.post(self.mcp_url, json=tool_call("whoami", {}, modern=False),
                             headers={"Authorization": f"Bearer {token}", **JSON_HEADERS, **LEGACY_HEADERS})


@contextlib.contextmanager
def tls_server(pki: PKI, db: Path, mode: str = "if-bound", **options: Any) -> Iterator[TLSServer]:
    """The real app (dev issuer mounted) served over HTTPS with optional client certificates."""
    built: list[TLSServer] = []

    def factory(base_url: str) -> Any:
        agent = DevClient(None, (READ, WRITE), certificate_thumbprint=certificate_thumbprint(pki.agent.der))
        issuer = DevIssuer(base_url, extra_clients={X509_ID: agent})
        port = base_url.rsplit(":", 1)[1]
        env = {"MCP_NOTES_DB": str(db), "HOST": "127.0.0.1", "PORT": port}
        settings = dev_settings(env, base_url, issuer)
        settings = dataclasses.replace(settings, auth=dataclasses.replace(settings.auth, cert_binding=mode))
        verifier = JWTVerifier(settings.auth, client=dev_jwks_client(pki.ca.cert_path, 5))
        built.append(TLSServer(base_url, issuer, pki))
        routes = [*issuer.well_known_routes(), issuer.mount()]
        return create_app(settings, verifier=verifier, extra_routes=routes)

    with running_server(factory=factory, lifespan="on", **{**pki.tls_options(), **options}):
        yield built[0]


@pytest.fixture(scope="module")
def srv(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    with tls_server(pki, tmp_path_factory.mktemp("tls") / "notes.db") as server:
        yield server


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert challenge_params(response.headers["www-authenticate"])["error"] == "invalid_token"


# --------------------------------------------------------------------------- the ASGI TLS extension


async def _echo_tls(request: Request) -> JSONResponse:
    extensions = request.scope.get("extensions") or {}
    return JSONResponse({"has_tls": "tls" in extensions, "tls": extensions.get("tls")})


ECHO = Starlette(routes=[Route("/", _echo_tls)])


def test_scope_carries_the_asgi_tls_extension(pki: PKI) -> None:
    with running_server(ECHO, **{**pki.tls_options(), "http": TLSH11Protocol}) as url:
        with httpx.Client(verify=pki.context(pki.agent), timeout=10) as http:
            first = http.get(url + "/").json()
            second = http.get(url + "/").json()  # same connection, a fresh scope
        with httpx.Client(verify=pki.context(), timeout=10) as http:
            anonymous = http.get(url + "/").json()
    tls = first["tls"]
    assert first["has_tls"] and second == first
    assert len(tls["client_cert_chain"]) == 1
    presented = x509.load_pem_x509_certificate(tls["client_cert_chain"][0].encode())
    assert presented == pki.agent.certificate
    assert tls["client_cert_name"] == f"CN={X509_ID}"
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert isinstance(tls["cipher_suite"], int) and 0 < tls["cipher_suite"] <= 0xFFFF
    assert x509.load_pem_x509_certificate(tls["server_cert"].encode()) == pki.server.certificate
    assert anonymous["tls"]["client_cert_chain"] == [] and anonymous["tls"]["client_cert_name"] is None


def test_plain_http_has_no_tls_extension() -> None:
    with running_server(ECHO, http=TLSH11Protocol) as url:
        assert httpx.get(url + "/", timeout=10).json() == {"has_tls": False, "tls": None}


def test_a_certificate_from_another_ca_fails_the_handshake(pki: PKI) -> None:
    with running_server(ECHO, **pki.tls_options()) as url:
        with httpx.Client(verify=pki.context(pki.stranger), timeout=10) as http:
            with pytest.raises(httpx.TransportError):
                http.get(url + "/")


def test_uvicorn_tls_options() -> None:
    assert uvicorn_tls_options("s.pem", "k.pem", "ca.pem") == {
        "ssl_certfile": "s.pem",
        "ssl_keyfile": "k.pem",
        "ssl_ca_certs": "ca.pem",
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "http": TLSH11Protocol,
    }
    assert "ssl_cert_reqs" not in uvicorn_tls_options("s.pem", "k.pem")


# --------------------------------------------------------------------------- the dev issuer over mTLS


def test_discovery_advertises_tls_client_auth_and_bound_tokens(srv: TLSServer) -> None:
    doc = httpx.get(srv.issuer.discovery_url, verify=srv.pki.context(), timeout=10).json()
    assert "tls_client_auth" in doc["token_endpoint_auth_methods_supported"]
    assert doc["tls_client_certificate_bound_access_tokens"] is True


def test_tls_client_auth_issues_a_token_bound_to_the_certificate(srv: TLSServer) -> None:
    claims = jwt_claims(srv.x509_token())
    assert claims["sub"] == X509_ID and claims["ias_apis"] == [READ, WRITE]
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(srv.pki.agent.der)}


def test_secret_client_over_mtls_gets_a_bound_token_without_a_certificate_unbound(srv: TLSServer) -> None:
    assert jwt_claims(srv.secret_token(srv.pki.other))["cnf"] == {
        "x5t#S256": certificate_thumbprint(srv.pki.other.der)}
    assert "cnf" not in jwt_claims(srv.secret_token(None))


@pytest.mark.parametrize(("client", "data"), [
    ("other", {"grant_type": "client_credentials", "client_id": X509_ID}),  # not the registered certificate
    (None, {"grant_type": "client_credentials", "client_id": X509_ID}),  # no certificate at all
    ("agent", {"grant_type": "client_credentials", "client_id": "dev-read"}),  # a secret client's id
    ("agent", {"grant_type": "client_credentials"}),  # no client_id
])
def test_tls_client_auth_failures_are_invalid_client(srv: TLSServer, client: str | None,
                                                     data: dict[str, str]) -> None:
    response = srv.token_response(getattr(srv.pki, client) if client else None, data)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_x509_client_has_no_secret_to_guess(srv: TLSServer) -> None:
    response = srv.token_response(None, {"grant_type": "client_credentials"}, auth=(X509_ID, ""))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


# --------------------------------------------------------------------------- bound tokens at the MCP endpoint


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_bound_token_with_its_certificate_calls_whoami(srv: TLSServer, mode: str) -> None:
    token = srv.x509_token()
    async with httpx2.AsyncClient(verify=srv.pki.context(srv.pki.agent), timeout=httpx2.Timeout(20.0),
                                  headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(srv.mcp_url, http_client=http), mode=mode) as client:
            me = await client.call_tool("whoami", {})
            created = await client.call_tool("create_note", {"title": f"over mTLS {mode}"})
    assert not me.is_error and me.structured_content["client_id"] == X509_ID
    assert not created.is_error


def test_bound_token_with_another_certificate_is_invalid_token(srv: TLSServer) -> None:
    assert_invalid_token(srv.whoami_raw(srv.x509_token(), srv.pki.other))


def test_bound_token_without_a_certificate_is_invalid_token(srv: TLSServer) -> None:
    assert_invalid_token(srv.whoami_raw(srv.x509_token(), None))


def test_if_bound_accepts_unbound_tokens_with_or_without_a_certificate(srv: TLSServer) -> None:
    unbound = srv.secret_token(None)
    assert srv.whoami_raw(unbound, None).status_code == 200
    assert srv.whoami_raw(unbound, srv.pki.other).status_code == 200


def test_required_mode_refuses_an_unbound_token(pki: PKI, tmp_path: Path) -> None:
    with tls_server(pki, tmp_path / "notes.db", mode="required") as server:
        assert_invalid_token(server.whoami_raw(server.secret_token(None), pki.agent))
        assert_invalid_token(server.whoami_raw(server.x509_token(), None))
        assert server.whoami_raw(server.x509_token(), pki.agent).status_code == 200


# --------------------------------------------------------------------------- settings


def _env(tmp_path: Path, **tls: str) -> dict[str, str]:
    return {"MCP_AUTH_ISSUER": "https://t.accounts.ondemand.com", "MCP_AUTH_AUDIENCE": "mcp",
            "MCP_RESOURCE_URL": "https://notes.example.com/mcp", **tls}


def test_tls_settings_are_parsed(pki: PKI, tmp_path: Path) -> None:
    settings = load_server_settings(_env(tmp_path, MCP_TLS_CERT=str(pki.server.cert_path),
                                         MCP_TLS_KEY=str(pki.server.key_path),
                                         MCP_TLS_CLIENT_CA=str(pki.ca.cert_path)))
    assert (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) == (
        pki.server.cert_path, pki.server.key_path, pki.ca.cert_path)
    plain = load_server_settings(_env(tmp_path))
    assert (plain.tls_cert_file, plain.tls_key_file, plain.tls_client_ca_file) == (None, None, None)


@pytest.mark.parametrize(("given", "setting"), [
    ({"MCP_TLS_CERT": "server"}, "MCP_TLS_KEY"),
    ({"MCP_TLS_KEY": "key"}, "MCP_TLS_CERT"),
    ({"MCP_TLS_CLIENT_CA": "ca"}, "MCP_TLS_CLIENT_CA"),
    ({"MCP_TLS_CERT": "server", "MCP_TLS_KEY": "missing"}, "MCP_TLS_KEY"),
])
def test_bad_tls_settings_name_the_setting(pki: PKI, tmp_path: Path, given: dict[str, str],
                                           setting: str) -> None:
    files = {"server": str(pki.server.cert_path), "key": str(pki.server.key_path),
             "ca": str(pki.ca.cert_path),
             "missing": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError) as caught:
        load_server_settings(_env(tmp_path, **{k: files[v] for k, v in given.items()}))
    assert caught.value.setting == setting


def test_check_tls_files_finds_a_key_that_does_not_match(pki: PKI) -> None:
    assert check_tls_files(pki.server.cert_path, pki.server.key_path, pki.ca.cert_path) is None
    assert check_tls_files(pki.server.cert_path, pki.other.key_path, None) == "key"
    assert check_tls_files(pki.server.cert_path, pki.server.key_path, pki.server.key_path) == "ca"


# --------------------------------------------------------------------------- python -m server with MCP_TLS_*


def _server_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MCP_", "VCAP_")) and k not in ("HOST", "PORT")}
    env.update({"PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), "PORT": str(port),
                "MCP_NOTES_DB": str(tmp_path / "notes.db"), "MCP_AUTH_ISSUER": "https://127.0.0.1:9/tenant",
                "MCP_AUTH_AUDIENCE": "mcp", "MCP_RESOURCE_URL": f"https://127.0.0.1:{port}/mcp", **extra})
    return env


def test_python_m_server_serves_https_with_mcp_tls_settings(pki: PKI, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = _server_env(tmp_path, port, MCP_TLS_CERT=str(pki.server.cert_path),
                      MCP_TLS_KEY=str(pki.server.key_path), MCP_TLS_CLIENT_CA=str(pki.ca.cert_path))
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=tmp_path, env=env,
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline, status = time.monotonic() + 30, None
        while status is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                status = httpx.get(f"https://127.0.0.1:{port}/health", verify=pki.context(pki.agent),
                                   timeout=1).status_code
            time.sleep(0.05)
        assert status == 200, log.read_text()
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize(("args", "extra", "message"), [
    (["--mtls"], {}, "--mtls needs --dev"),
    (["--dev"], {"MCP_TLS_CERT": "cert"}, "MCP_TLS_CERT: is not used with --dev"),
    ([], {"MCP_TLS_CERT": "cert", "MCP_TLS_KEY": "other-key"}, "MCP_TLS_KEY: OpenSSL cannot load it"),
])
def test_python_m_server_refuses_bad_tls_configuration(pki: PKI, tmp_path: Path, args: list[str],
                                                       extra: dict[str, str], message: str) -> None:
    files = {"cert": str(pki.server.cert_path), "other-key": str(pki.other.key_path)}
    env = _server_env(tmp_path, 0, **{k: files[v] for k, v in extra.items()})
    result = subprocess.run([sys.executable, "-m", "server", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_mcp_sdk_client_with_our_x509_token_provider(srv: TLSServer, mode: str) -> None:
    """The calling side end to end: TokenProvider over mTLS, then the SDK client presenting the same cert."""
    creds = ClientCredentials.from_pem_files(
        X509_ID, srv.pki.agent.cert_path, srv.pki.agent.key_path, issuer=srv.issuer.issuer
    )
    async with TokenProvider(creds, ca_bundle=str(srv.pki.ca.cert_path)) as provider:
        async with httpx2.AsyncClient(verify=srv.pki.context(srv.pki.agent), auth=provider.httpx2_auth(),
                                      timeout=httpx2.Timeout(20.0)) as http:
            async with Client(streamable_http_client(srv.mcp_url, http_client=http), mode=mode) as client:
                me = await client.call_tool("whoami", {})
        token = await provider.token()
    assert not me.is_error and me.structured_content["client_id"] == X509_ID
    assert jwt_claims(token)["cnf"] == {"x5t#S256": certificate_thumbprint(srv.pki.agent.der)}
    # The same provider's token presented with another certificate is refused.
    assert_invalid_token(srv.whoami_raw(token, srv.pki.other))
