"""``btp-mcp-issuer`` on the user's path: one issuer, two instances of a user's own MCP server.

The user's app is a small ``MCPServer`` with ``auth.mcp.protect`` written into a temporary folder
outside the checkout and served by ``uvicorn`` in its own processes; the issuer runs as the console
script (and as ``python -m auth.testing``). Everything talks real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests._live import free_port, stop_process

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AUDIENCE = "inventory"
READER = ("stock-reader", "reader-pw")
WRITER = ("stock-writer", "writer-pw")

USER_APP = '''\
"""A user's own MCP server: it trusts the issuer MCP_AUTH_ISSUER names, for audience MCP_AUTH_AUDIENCE."""
import os

from mcp.server.mcpserver import MCPServer

from auth import current_token, load_settings
from auth.mcp import protect, requires

mcp = MCPServer("inventory")


@mcp.tool()
@requires("api_read_access")
async def whoami() -> dict[str, object]:
    """Who is calling, and which instance answers."""
    token = current_token()
    return {"client_id": token.client_id, "aud": list(token.audience), "port": os.environ["PORT"]}


@mcp.tool()
@requires("api_write_access")
async def restock(item: str) -> dict[str, str]:
    """Restock an item."""
    return {"restocked": item}


settings = load_settings(os.environ)
app = protect(mcp, settings, app=mcp.streamable_http_app(
    streamable_http_path="/mcp", stateless_http=True, json_response=True))
'''

MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a process outside the checkout: nothing of the repository on its path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MCP_", "VCAP_")) and k not in ("PYTHONPATH", "HOST", "PORT")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def wait_for(url: str, proc: subprocess.Popen[Any], log: Path, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{url} not up within {timeout} s:\n{log.read_text(errors='replace')}"
        time.sleep(0.1)


@contextlib.contextmanager
def process(args: Sequence[str], log: Path, cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as sink:
        proc = subprocess.Popen(list(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            stop_process(proc)


@dataclass
class Issuer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def token(self, client: tuple[str, str], **data: str) -> httpx.Response:
        return httpx.post(self.url + "/oauth2/token", data={"grant_type": "client_credentials", **data},
                          auth=client, timeout=10)


@contextlib.contextmanager
def issuer_process(workdir: Path, *args: str, port: int | None = None, command: Sequence[str] | None = None,
                   ) -> Iterator[Issuer]:
    port = port or free_port()
    command = command or [str(BIN / "btp-mcp-issuer")]
    log = workdir / f"issuer-{port}.log"
    with process([*command, "--port", str(port), *args], log, workdir, user_env()) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/.well-known/openid-configuration", proc, log)
        yield Issuer(url, proc, log)


@dataclass
class App:
    base_url: str
    proc: subprocess.Popen[bytes]

    def call(self, token: str | None, tool: str, arguments: dict[str, Any] | None = None) -> httpx.Response:
        params = {"name": tool, "arguments": arguments or {}}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        headers = dict(MCP_HEADERS) | ({"Authorization": f"Bearer {token}"} if token else {})
        return httpx.post(self.base_url + "/mcp", json=body, headers=headers, timeout=20)


@contextlib.contextmanager
def user_app(appdir: Path, issuer_url: str, port: int) -> Iterator[App]:
    base_url = f"http://127.0.0.1:{port}"
    env = user_env(MCP_AUTH_ISSUER=issuer_url, MCP_AUTH_AUDIENCE=AUDIENCE, MCP_RESOURCE_URL=base_url + "/mcp",
                   PORT=str(port))
    log = appdir / f"app-{port}.log"
    args = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]
    with process(args, log, appdir, env) as proc:
        wait_for(base_url + "/.well-known/oauth-protected-resource/mcp", proc, log)
        yield App(base_url, proc)


@pytest.fixture(scope="module")
def appdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user-project")
    assert not folder.resolve().is_relative_to(REPO)
    (folder / "app.py").write_text(USER_APP)
    return folder


@dataclass
class Setup:
    issuer: Issuer
    apps: tuple[App, App]


@pytest.fixture(scope="module")
def setup(appdir: Path) -> Iterator[Setup]:
    ports = free_port(), free_port()
    resources = [arg for p in ports for arg in ("--resource", f"http://127.0.0.1:{p}/mcp")]
    clients = ["--client", f"{READER[0]}:{READER[1]}:api_read_access",
               "--client", f"{WRITER[0]}:{WRITER[1]}:api_read_access+api_write_access"]
    with issuer_process(appdir, "--key-file", str(appdir / "keys" / "issuer.pem"), "--audience", AUDIENCE,
                        *resources, *clients) as issuer:
        with user_app(appdir, issuer.url, ports[0]) as one, user_app(appdir, issuer.url, ports[1]) as two:
            yield Setup(issuer, (one, two))


def result(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert "error" not in body and not body["result"].get("isError"), body
    return body["result"]["structuredContent"]


def test_both_instances_accept_one_token_from_the_one_issuer(setup: Setup) -> None:
    response = setup.issuer.token(READER)
    assert response.status_code == 200
    token = response.json()["access_token"]
    answers = [result(app.call(token, "whoami")) for app in setup.apps]
    assert [a["port"] for a in answers] == [app.base_url.rsplit(":", 1)[1] for app in setup.apps]
    assert all(a["client_id"] == READER[0] and a["aud"] == [AUDIENCE] for a in answers)


def test_the_servers_url_as_resource_gives_a_token_it_accepts(setup: Setup) -> None:
    one = setup.apps[0]
    response = setup.issuer.token(READER, resource=one.base_url + "/mcp")
    assert response.status_code == 200
    token = response.json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == [AUDIENCE, one.base_url + "/mcp"]
    assert result(one.call(token, "whoami"))["aud"] == [AUDIENCE, one.base_url + "/mcp"]


def test_an_unknown_resource_is_refused_with_invalid_target(setup: Setup) -> None:
    response = setup.issuer.token(READER, resource=f"http://127.0.0.1:{free_port()}/mcp")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


def test_a_wrong_secret_is_refused_with_invalid_client(setup: Setup) -> None:
    response = setup.issuer.token((READER[0], "not-the-secret"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "not-the-secret" not in setup.issuer.log.read_text()


def test_permissions_come_from_the_clients_groups(setup: Setup) -> None:
    reader = setup.issuer.token(READER).json()["access_token"]
    writer = setup.issuer.token(WRITER).json()["access_token"]
    refused = setup.apps[1].call(reader, "restock", {"item": "bolts"})
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert 'scope="api_write_access"' in refused.headers["www-authenticate"]
    assert result(setup.apps[1].call(writer, "restock", {"item": "bolts"})) == {"restocked": "bolts"}


def test_a_token_of_another_issuer_or_none_is_401(setup: Setup, appdir: Path) -> None:
    with issuer_process(appdir, "--key-file", str(appdir / "other.pem"), "--audience", AUDIENCE) as other:
        foreign = other.token(("dev-full", "dev-full-secret")).json()["access_token"]
    for token in (foreign, None):
        response = setup.apps[0].call(token, "whoami")
        assert response.status_code == 401
        if token:
            assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_the_banner_says_how_to_trust_it_and_get_a_token_without_printing_a_users_secret(setup: Setup) -> None:
    text = setup.issuer.log.read_text()
    assert f"Local issuer (IAS look-alike): {setup.issuer.url}" in text
    assert f"MCP_AUTH_ISSUER={setup.issuer.url} MCP_AUTH_AUDIENCE={AUDIENCE}" in text
    assert "curl -s -u dev-read:dev-read-secret -d grant_type=client_credentials -d resource=" in text
    assert READER[1] not in text and WRITER[1] not in text


def test_the_key_file_keeps_tokens_valid_across_a_restart(appdir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "issuer.pem"
    port = free_port()
    module = [sys.executable, "-m", "auth.testing"]
    with issuer_process(tmp_path, "--key-file", str(key_file), "--audience", AUDIENCE, port=port,
                        command=module) as first:
        before = first.token(("dev-read", "dev-read-secret")).json()["access_token"]
        assert stop_process(first.proc) == 0
    with issuer_process(tmp_path, "--key-file", str(key_file), "--audience", AUDIENCE, port=port,
                        command=module) as second:
        after = second.token(("dev-read", "dev-read-secret")).json()["access_token"]
        with user_app(appdir, second.url, free_port()) as fresh:  # no keys cached from before the restart
            assert result(fresh.call(before, "whoami"))["client_id"] == "dev-read"
            assert result(fresh.call(after, "whoami"))["client_id"] == "dev-read"
    assert jwt.get_unverified_header(before)["kid"] == jwt.get_unverified_header(after)["kid"]


def test_sigterm_stops_it_with_exit_0_and_removes_the_url_file(tmp_path: Path) -> None:
    url_file = tmp_path / "issuer.url"
    with issuer_process(tmp_path, "--key-file", str(tmp_path / "k.pem"), "--url-file", str(url_file)) as issuer:
        assert url_file.read_text().strip() == issuer.url
        assert stop_process(issuer.proc, timeout=10) == 0
    assert not url_file.exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(issuer.url + "/oauth2/certs", timeout=1)


def run_issuer(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "btp-mcp-issuer"), *args], cwd=tmp_path, env=user_env(**env),
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--host", "0.0.0.0"], {}, "--host"),
    ([], {"MCP_ISSUER_HOST": "0.0.0.0"}, "MCP_ISSUER_HOST"),
    (["--host", "::"], {}, "--host"),
])
def test_a_non_loopback_address_is_refused_before_binding(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    port = free_port()
    done = run_issuer(tmp_path, "--port", str(port), *args, **env)
    assert done.returncode == 2
    assert f"configuration error: {named}:" in done.stderr and "loopback" in done.stderr
    assert "--allow-non-loopback" in done.stderr
    assert not (tmp_path / ".mcp-issuer").exists()  # refused before creating a key
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # nothing holds the port


@pytest.mark.parametrize(("args", "named"), [
    (["--client", "no-colons"], "--client"),
    (["--client", "dev-read:pw:api_read_access"], "--client"),  # clashes with a default client
    (["--resource", "ftp://127.0.0.1/mcp"], "--resource"),
    (["--port", "70000"], "--port"),
    (["--lifetime", "soon"], "--lifetime"),
    (["--audience", "a b"], "--audience"),
])
def test_bad_flags_are_named(tmp_path: Path, args: list[str], named: str) -> None:
    done = run_issuer(tmp_path, "--port", "0", *args)
    assert done.returncode == 2, done.stderr
    assert f"configuration error: {named}:" in done.stderr


def test_a_secret_in_a_bad_client_entry_is_masked(tmp_path: Path) -> None:
    done = run_issuer(tmp_path, "--port", "0", "--client", "good:hunter2:bad group")
    assert done.returncode == 2 and "hunter2" not in done.stderr and "good:***" in done.stderr
