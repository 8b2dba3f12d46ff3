"""``python -m auth`` as a real subprocess against a live dev server, and ``python -m server --dev --mtls``
as a real subprocess with the whole X.509 flow (token over mutual TLS, then a tool call with the same
certificate).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from auth import certificate_thumbprint
from auth._errors import ConfigError
from auth.client._cli import EXIT_CONFIG, EXIT_OK, EXIT_REFUSED, EXIT_REQUEST, challenge_params, parse_arguments
from tests._live import free_port as _free_port
from tests.server.conftest import ALL_TOOLS, READ_TOOLS, DevServer, dev_server, jwt_claims

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
SECRETS = {"dev-full": "dev-full-secret", "dev-read": "dev-read-secret"}
CLI_TIMEOUT = 60


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MCP_", "VCAP_")) and k not in ("HOST", "PORT")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(overrides)
    return env


def cli(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auth", *args], cwd=REPO, env=dict(env), capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)


def creds(srv: DevServer, client_id: str) -> dict[str, str]:
    return clean_env(MCP_CLIENT_ID=client_id, MCP_CLIENT_SECRET=SECRETS[client_id],
                     MCP_ISSUER=srv.issuer.issuer)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with dev_server(tmp_path_factory.mktemp("cli") / "notes.db") as server:
        yield server


# --------------------------------------------------------------------------- token


def test_token_prints_only_the_token(srv: DevServer) -> None:
    result = cli("token", env=creds(srv, "dev-full"))
    assert result.returncode == EXIT_OK, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    claims = jwt_claims(token)
    assert claims["sub"] == "dev-full" and claims["iss"] == srv.issuer.issuer
    assert "dev-full-secret" not in result.stdout + result.stderr


def test_token_json_with_a_resource(srv: DevServer) -> None:
    env = creds(srv, "dev-read")
    result = cli("token", "--json", "--resource", srv.mcp_url, env=env)
    assert result.returncode == EXIT_OK, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"access_token", "token_type", "expires_in"}
    assert doc["token_type"] == "Bearer" and 0 < doc["expires_in"] <= 3600
    assert srv.mcp_url in jwt_claims(doc["access_token"])["aud"]


def test_token_with_the_token_url_instead_of_the_issuer(srv: DevServer) -> None:
    env = clean_env(MCP_CLIENT_ID="dev-read", MCP_CLIENT_SECRET="dev-read-secret",
                    MCP_TOKEN_URL=srv.issuer.token_endpoint)
    result = cli("token", env=env)
    assert result.returncode == EXIT_OK, result.stderr


def test_wrong_secret_is_a_request_error_that_shows_no_secret(srv: DevServer) -> None:
    env = {**creds(srv, "dev-read"), "MCP_CLIENT_SECRET": "wrong-secret-value"}
    result = cli("token", "-v", env=env)
    assert result.returncode == EXIT_REQUEST and result.stdout == ""
    assert "invalid_client" in result.stderr and "wrong-secret-value" not in result.stderr
    assert result.stderr.count("python -m auth: error:") == 1


@pytest.mark.parametrize(("env", "args", "setting"), [
    ({}, ("token",), "MCP_CLIENT_ID"),
    ({"MCP_CLIENT_ID": "c", "MCP_CLIENT_SECRET": "s"}, ("token",), "MCP_TOKEN_URL"),
    ({"MCP_CLIENT_ID": "c", "MCP_CLIENT_SECRET": "s", "MCP_ISSUER": "https://i.example"},
     ("token", "--resource", "not a uri"), "--resource"),
    ({"MCP_CLIENT_ID": "c", "MCP_CLIENT_SECRET": "s", "MCP_ISSUER": "https://i.example"},
     ("token", "--ca-bundle", "/no/such/ca.pem"), "--ca-bundle"),
    ({"MCP_CLIENT_ID": "c", "MCP_CLIENT_SECRET": "s", "MCP_ISSUER": "https://i.example"},
     ("tools", "list", "not-a-url"), "URL"),
    ({"MCP_CLIENT_ID": "c", "MCP_CLIENT_SECRET": "s", "MCP_ISSUER": "https://i.example"},
     ("tools", "call", "https://mcp.example/mcp", "t", "--json-args", "[1]"), "--json-args"),
])
def test_configuration_errors_exit_2_naming_the_setting(env: dict[str, str], args: tuple[str, ...],
                                                        setting: str) -> None:
    result = cli(*args, env=clean_env(**env))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stderr.startswith(f"python -m auth: configuration error: {setting}:")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_usage_errors_exit_2() -> None:
    assert cli("tools", env=clean_env()).returncode == 2
    assert cli("frobnicate", env=clean_env()).returncode == 2


def test_unreachable_issuer_is_a_request_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    env = clean_env(MCP_CLIENT_ID="c", MCP_CLIENT_SECRET="s", MCP_ISSUER=f"http://127.0.0.1:{port}/dev-ias")
    result = cli("token", env=env)
    assert result.returncode == EXIT_REQUEST and "no token" in result.stderr


# --------------------------------------------------------------------------- tools


def test_tools_list_shows_what_the_token_allows(srv: DevServer) -> None:
    full = cli("tools", "list", srv.mcp_url, env=creds(srv, "dev-full"))
    read = cli("tools", "list", srv.mcp_url, env=creds(srv, "dev-read"))
    assert full.returncode == read.returncode == EXIT_OK, full.stderr + read.stderr
    assert {t["name"] for t in json.loads(full.stdout)} == ALL_TOOLS
    listed = json.loads(read.stdout)
    assert {t["name"] for t in listed} == READ_TOOLS
    assert all("inputSchema" in t for t in listed)
    assert "eyJ" not in full.stdout + full.stderr + read.stdout + read.stderr  # no token printed


def test_tools_call_read_works(srv: DevServer) -> None:
    result = cli("tools", "call", srv.mcp_url, "list_notes", "--arg", "limit=3", env=creds(srv, "dev-read"))
    assert result.returncode == EXIT_OK, result.stderr
    doc = json.loads(result.stdout)
    assert doc["isError"] is False and isinstance(doc["structuredContent"]["notes"], list)


def test_tools_call_write_keeps_string_arguments_as_text(srv: DevServer) -> None:
    result = cli("tools", "call", srv.mcp_url, "create_note", "--arg", "title=from the CLI",
                 "--json-args", '{"body": "x"}', "--arg", "body=123", env=creds(srv, "dev-full"))
    assert result.returncode == EXIT_OK, result.stderr
    note = json.loads(result.stdout)["structuredContent"]
    assert note["title"] == "from the CLI" and note["body"] == "123"


def test_read_client_calling_create_note_exits_3_with_the_required_scope(srv: DevServer) -> None:
    result = cli("tools", "call", srv.mcp_url, "create_note", "--arg", "title=nope",
                 env=creds(srv, "dev-read"))
    assert result.returncode == EXIT_REFUSED, result.stderr
    assert result.stdout == ""
    assert "403" in result.stderr and "api_write_access" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tool_error_result_is_printed_and_exits_1(srv: DevServer) -> None:
    result = cli("tools", "call", srv.mcp_url, "get_note", "--arg", "note_id=999999",
                 env=creds(srv, "dev-read"))
    assert result.returncode == EXIT_REQUEST
    assert json.loads(result.stdout)["isError"] is True


def test_token_the_server_does_not_trust_is_a_request_error(srv: DevServer, tmp_path: Path) -> None:
    # Another dev server's issuer: the token is valid there, not here (401 invalid_token).
    with dev_server(tmp_path / "other.db") as other:
        result = cli("tools", "list", srv.mcp_url, env=creds(other, "dev-read"))
    assert result.returncode == EXIT_REQUEST
    assert "401" in result.stderr and "invalid_token" in result.stderr


def test_unreachable_mcp_server_is_a_request_error(srv: DevServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli("tools", "list", f"http://127.0.0.1:{port}/mcp", env=creds(srv, "dev-read"))
    assert result.returncode == EXIT_REQUEST and "cannot reach" in result.stderr


# --------------------------------------------------------------------------- pure helpers


SCHEMA = {"properties": {"title": {"type": "string"}, "limit": {"type": "integer"},
                         "tag": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                         "either": {"type": ["string", "integer"]}}}


def test_parse_arguments_follows_the_schema() -> None:
    args = ["title=123", "limit=5", "tag=true", "either=7", "free=[1, 2]", "text=hello", "empty="]
    assert parse_arguments(args, None, SCHEMA) == {
        "title": "123", "limit": 5, "tag": "true", "either": 7, "free": [1, 2], "text": "hello", "empty": "",
    }
    assert parse_arguments(["a=b=c"], '{"a": 1, "z": null}') == {"a": "b=c", "z": None}


@pytest.mark.parametrize(("pairs", "json_args", "setting"), [
    (["novalue"], None, "--arg"),
    (["=x"], None, "--arg"),
    ([], "{", "--json-args"),
    ([], '"text"', "--json-args"),
])
def test_parse_arguments_errors(pairs: list[str], json_args: str | None, setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_arguments(pairs, json_args)
    assert caught.value.setting == setting


def test_challenge_params() -> None:
    header = ('Bearer resource_metadata="https://h/.well-known/oauth-protected-resource/mcp", '
              'error="insufficient_scope", error_description="needs \\"more\\"", scope="a b"')
    assert challenge_params(header) == {
        "resource_metadata": "https://h/.well-known/oauth-protected-resource/mcp",
        "error": "insufficient_scope", "error_description": 'needs "more"', "scope": "a b"}


# --------------------------------------------------------------------------- python -m server --dev --mtls


@dataclass
class MTLSDev:
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path
    certs: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")



def _wait_healthy(dev: MTLSDev, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if dev.proc.poll() is not None:
            raise AssertionError(f"server exited with {dev.proc.returncode}:\n{dev.output()}")
        ca = dev.certs / "ca.pem"
        if ca.exists():
            with contextlib.suppress(httpx.TransportError, ssl.SSLError, OSError):
                ctx = ssl.create_default_context(cafile=str(ca))
                if httpx.get(dev.base_url + "/health", verify=ctx, timeout=1).status_code == 200:
                    return
        time.sleep(0.05)
    raise AssertionError(f"no /health within {deadline_s}s:\n{dev.output()}")


@pytest.fixture
def mtls_dev(tmp_path: Path) -> Iterator[MTLSDev]:
    port = _free_port()
    certs = tmp_path / "certs"
    log = tmp_path / "server.log"
    env = clean_env(PORT=str(port), MCP_DEV_CERTS_DIR=str(certs), MCP_NOTES_DB=str(tmp_path / "notes.db"),
                    PYTHONUNBUFFERED="1")
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--dev", "--mtls"], cwd=tmp_path, env=env,
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    dev = MTLSDev(proc, f"https://127.0.0.1:{port}", log, certs)
    try:
        _wait_healthy(dev)
        yield dev
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _banner_path(output: str, label: str) -> Path:
    match = re.search(rf"^\s*{label}:\s+(\S+)", output, re.MULTILINE)
    assert match, output
    return Path(match.group(1))


def test_dev_mtls_full_x509_flow_and_graceful_stop(mtls_dev: MTLSDev) -> None:
    out = mtls_dev.output()
    labels = ("CA certificate", "client certificate", "client key")
    ca, cert, key = (_banner_path(out, label) for label in labels)
    names = ("ca.pem", "client.pem", "client-key.pem")
    assert (ca, cert, key) == tuple((mtls_dev.certs / n).resolve() for n in names)
    assert all(p.is_file() for p in (ca, cert, key))
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert f"--cacert {ca} --cert {cert} --key {key}" in out
    assert f"-d client_id=dev-x509 {mtls_dev.base_url}/dev-ias/oauth2/token" in out
    thumbprint = certificate_thumbprint(
        x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER))

    # The token over mutual TLS (tls_client_auth), with httpx as curl would do it: bound to the cert.
    with_cert = ssl.create_default_context(cafile=str(ca))
    with_cert.load_cert_chain(str(cert), str(key))
    response = httpx.post(f"{mtls_dev.base_url}/dev-ias/oauth2/token", verify=with_cert, timeout=10,
                          data={"grant_type": "client_credentials", "client_id": "dev-x509"})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert jwt_claims(token)["cnf"] == {"x5t#S256": thumbprint}

    # The same token without the certificate is refused (cert_binding="if-bound").
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}
    no_cert = httpx.post(f"{mtls_dev.base_url}/mcp", json=call, headers=headers, timeout=10,
                         verify=ssl.create_default_context(cafile=str(ca)))
    assert no_cert.status_code == 401 and 'error="invalid_token"' in no_cert.headers["www-authenticate"]

    # The CLI does the whole flow itself: token over mTLS, then whoami presenting the same certificate.
    env = clean_env(MCP_CLIENT_ID="dev-x509", MCP_CLIENT_CERT=str(cert), MCP_CLIENT_KEY=str(key),
                    MCP_ISSUER=f"{mtls_dev.base_url}/dev-ias")
    result = cli("tools", "call", f"{mtls_dev.base_url}/mcp", "whoami", "--ca-bundle", str(ca), env=env)
    assert result.returncode == EXIT_OK, result.stderr
    me = json.loads(result.stdout)["structuredContent"]
    assert me["client_id"] == "dev-x509" and set(me["permissions"]) == {"api_read_access", "api_write_access"}
    untrusted = cli("token", env=env)  # the dev CA is not in the system trust store
    assert untrusted.returncode == EXIT_REQUEST and "not trusted" in untrusted.stderr

    began = time.monotonic()
    mtls_dev.proc.send_signal(signal.SIGTERM)
    assert mtls_dev.proc.wait(10) == 0, mtls_dev.output()
    assert time.monotonic() - began < 10
