"""``python -m server --dev`` with ``MCP_DEV_ISSUER``: two instances trust one standalone local issuer."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._live import free_port, stop_process

from .conftest import LEGACY_HEADERS, challenge_params, tool_call
from .test_dev_mode import server_env, start, stop, wait_healthy

pytestmark = pytest.mark.timeout(120)

JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **LEGACY_HEADERS}


@contextlib.contextmanager
def standalone_issuer(tmp_path: Path, *args: str) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "issuer.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "auth.testing", "--port", str(port),
                                 "--key-file", str(tmp_path / "issuer.pem"), *args],
                                cwd=tmp_path, env=server_env(tmp_path), stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy_issuer(proc, url, log)
        yield url
    finally:
        stop_process(proc)


def wait_healthy_issuer(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/oauth2/certs", timeout=1).status_code == 200:
                return
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def whoami(base_url: str, token: str) -> httpx.Response:
    return httpx.post(base_url + "/mcp", json=tool_call("whoami", {}, modern=False),
                      headers={"Authorization": f"Bearer {token}", **JSON}, timeout=20)


def token(issuer: str, client: tuple[str, str], **data: str) -> str:
    response = httpx.post(issuer + "/oauth2/token", data={"grant_type": "client_credentials", **data},
                          auth=client, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def test_two_dev_instances_accept_one_token_from_a_shared_issuer(tmp_path: Path) -> None:
    ports = free_port(), free_port()
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with standalone_issuer(tmp_path, *(a for u in urls for a in ("--resource", u + "/mcp"))) as issuer:
        procs = []
        try:
            for i, port in enumerate(ports):
                workdir = tmp_path / f"dev{i}"
                workdir.mkdir()
                env = server_env(workdir, PORT=str(port), HOST="127.0.0.1", MCP_DEV_ISSUER=issuer)
                procs.append(start(workdir, "server", env))
            for (proc, log), url in zip(procs, urls, strict=True):
                wait_healthy(proc, url, log)

            shared = token(issuer, ("dev-read", "dev-read-secret"))
            for url in urls:
                response = whoami(url, shared)
                assert response.status_code == 200, response.text
                assert response.json()["result"]["structuredContent"]["client_id"] == "dev-read"
            # RFC 8707: the first instance's URL as resource, as mcp-remote sends it.
            addressed = token(issuer, ("dev-full", "dev-full-secret"), resource=urls[0] + "/mcp")
            assert whoami(urls[0], addressed).status_code == 200
            # The metadata sends clients to the shared issuer; the embedded one is not mounted.
            doc = httpx.get(urls[1] + "/.well-known/oauth-protected-resource/mcp", timeout=10).json()
            assert doc["authorization_servers"] == [issuer]
            assert httpx.get(urls[1] + "/dev-ias/oauth2/certs", timeout=10).status_code != 200
            # A token of another issuer is still refused.
            with standalone_issuer(tmp_path / "dev0") as other:
                foreign = token(other, ("dev-read", "dev-read-secret"))
            refused = whoami(urls[1], foreign)
            assert refused.status_code == 401
            assert challenge_params(refused.headers["www-authenticate"])["error"] == "invalid_token"
            banner = procs[0][1].read_text()
            assert f"Dev issuer (IAS look-alike): {issuer} (shared, MCP_DEV_ISSUER" in banner
            assert f"{issuer}/oauth2/token" in banner
            for proc, _ in procs:
                assert stop(proc) == 0
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)


@pytest.mark.parametrize(("args", "overrides", "message"), [
    ([], {"MCP_DEV_ISSUER": "http://192.0.2.1:8090"}, "MCP_DEV_ISSUER: must be a local issuer"),
    ([], {"MCP_DEV_ISSUER": "ftp://127.0.0.1:8090"}, "MCP_DEV_ISSUER: must be a local issuer"),
    (["--mtls"], {"MCP_DEV_ISSUER": "http://127.0.0.1:8090"}, "MCP_DEV_ISSUER: is not used with --mtls"),
    ([], {"MCP_DEV_ISSUER": "http://127.0.0.1:8090", "MCP_DEV_CLIENTS": "a:b:c"},
     "MCP_DEV_CLIENTS: is not used with MCP_DEV_ISSUER"),
])
def test_shared_issuer_settings_are_checked_before_anything_starts(
    tmp_path: Path, args: list[str], overrides: dict[str, str], message: str
) -> None:
    result = subprocess.run([sys.executable, "-m", "server", "--dev", *args], cwd=tmp_path, capture_output=True,
                            text=True, env=server_env(tmp_path, PORT=str(free_port()), **overrides), timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"configuration error: {message}" in result.stderr
    assert not (tmp_path / "notes.db").exists() and not (tmp_path / "data").exists()


def test_shared_issuer_setting_is_refused_outside_dev_mode(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "server"], cwd=tmp_path, capture_output=True, text=True,
                            env=server_env(tmp_path, MCP_DEV_ISSUER="http://127.0.0.1:8090"), timeout=30)
    assert result.returncode == 2
    assert "MCP_DEV_ISSUER: is only used with --dev" in result.stderr
