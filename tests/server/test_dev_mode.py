"""``python -m server --dev`` as a real subprocess: start, serve, refuse, stop gracefully."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests._live import free_port

from .conftest import LEGACY_HEADERS, REPO, challenge_params, mcp_client, tool_call

pytestmark = pytest.mark.timeout(90)

STARTUP_TIMEOUT = 30.0



def server_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    dropped = ("VCAP_APPLICATION", "VCAP_SERVICES", "HOST", "PORT")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update({
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "MCP_NOTES_DB": str(tmp_path / "notes.db"),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(overrides)
    return env


@dataclass
class DevProcess:
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def token(self, client_id: str, secret: str) -> str:
        response = httpx.post(self.base_url + "/dev-ias/oauth2/token",
                              data={"grant_type": "client_credentials"},
                              auth=(client_id, secret), timeout=10)  # HTTP Basic
        assert response.status_code == 200, response.text
        return response.json()["access_token"]


def start(tmp_path: Path, name: str, env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--dev"], cwd=tmp_path, env=dict(env),
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    return proc, log


def wait_healthy(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"no /health within {STARTUP_TIMEOUT}s:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM and wait; kill (and fail) if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"no exit within {timeout}s of SIGTERM") from None


@contextlib.contextmanager
def dev_processes(tmp_path: Path, count: int = 1, host: str = "127.0.0.1") -> Iterator[list[DevProcess]]:
    """Start ``count`` dev servers side by side (each its own PORT and notes file)."""
    started: list[DevProcess] = []
    try:
        for i in range(count):
            port = free_port()
            workdir = tmp_path / f"dev{i}"
            workdir.mkdir()
            proc, log = start(workdir, "server", server_env(workdir, HOST=host, PORT=str(port)))
            started.append(DevProcess(proc, f"http://{host}:{port}", log))
        for dev in started:
            wait_healthy(dev.proc, dev.base_url, dev.log)
        yield started
    finally:
        for dev in started:
            if dev.proc.poll() is None:
                dev.proc.kill()
                dev.proc.wait(5)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    with dev_processes(tmp_path_factory.mktemp("devmode")) as (process,):
        yield process


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_dev_read_token_lists_notes_and_is_refused_create(dev: DevProcess, mode: str) -> None:
    token = dev.token("dev-read", "dev-read-secret")
    async with mcp_client(dev.base_url + "/mcp", token, mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {
            "whoami", "list_notes", "search_notes", "get_note", "downstream_whoami"}  # --dev calls onward too
        listed = await client.call_tool("list_notes", {})
        assert not listed.is_error and listed.structured_content == {"notes": []}
        with pytest.raises(MCPError):
            await client.call_tool("create_note", {"title": "not allowed"})

    response = httpx.post(dev.base_url + "/mcp", json=tool_call("create_note", {"title": "x"}, modern=False),
                          headers={"Authorization": f"Bearer {token}", **LEGACY_HEADERS,
                                   "Accept": "application/json, text/event-stream"})
    assert response.status_code == 403
    assert challenge_params(response.headers["www-authenticate"])["scope"] == "api_write_access"


def test_dev_startup_prints_the_banner_and_logs_json(dev: DevProcess) -> None:
    out = dev.output()
    assert f"Dev issuer (IAS look-alike): {dev.base_url}/dev-ias" in out
    assert '"logger": "server"' in out  # JSON log lines


def test_dev_metadata_points_at_the_embedded_issuer(dev: DevProcess) -> None:
    doc = httpx.get(dev.base_url + "/.well-known/oauth-protected-resource/mcp").json()
    assert doc["resource"] == dev.base_url + "/mcp"
    assert doc["authorization_servers"] == [dev.base_url + "/dev-ias"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"VCAP_APPLICATION": '{"application_uris": ["notes.cfapps.example.com"]}'},
     "refuses to run on Cloud Foundry"),
    ({"HOST": "0.0.0.0"}, "--dev binds only to a loopback address"),
])
def test_dev_mode_refuses_unsafe_environments(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    result = subprocess.run([sys.executable, "-m", "server", "--dev"], cwd=tmp_path,
                            capture_output=True, text=True,
                            env=server_env(tmp_path, PORT=str(free_port()), **overrides), timeout=30)
    assert result.returncode != 0
    assert "configuration error" in result.stderr and message in result.stderr, result.stderr
    assert not (tmp_path / "notes.db").exists()  # refused before touching anything


def test_sigterm_stops_the_dev_server_gracefully_with_exit_0(tmp_path: Path) -> None:
    with dev_processes(tmp_path) as (process,):
        token = process.token("dev-full", "dev-full-secret")
        response = httpx.post(process.base_url + "/mcp", json=tool_call("whoami", {}, modern=False),
                              headers={"Authorization": f"Bearer {token}", **LEGACY_HEADERS,
                                       "Accept": "application/json, text/event-stream"})
        assert response.status_code == 200
        began = time.monotonic()
        code = stop(process.proc, timeout=10)
        assert code == 0, process.output()
        assert time.monotonic() - began < 10
        with pytest.raises(httpx.TransportError):
            httpx.get(process.base_url + "/health", timeout=1)


async def test_two_dev_instances_run_side_by_side_with_their_own_issuers(tmp_path: Path) -> None:
    with dev_processes(tmp_path, count=2) as (first, second):
        assert first.base_url != second.base_url
        tokens = [p.token("dev-read", "dev-read-secret") for p in (first, second)]
        for process, token in zip((first, second), tokens, strict=True):
            async with mcp_client(process.base_url + "/mcp", token, "2026-07-28") as client:
                me = (await client.call_tool("whoami", {})).structured_content
                assert me["client_id"] == "dev-read"
        # Each instance trusts only its own embedded issuer.
        crossed = httpx.post(second.base_url + "/mcp", json=tool_call("whoami", {}, modern=False),
                             headers={"Authorization": f"Bearer {tokens[0]}", **LEGACY_HEADERS,
                                      "Accept": "application/json, text/event-stream"})
        assert crossed.status_code == 401
        assert challenge_params(crossed.headers["www-authenticate"])["error"] == "invalid_token"
        for process in (first, second):
            assert stop(process.proc) == 0
