"""``python -m server`` as an operator starts it: the start-up log line and the first errors.

Each test runs the real entry point in a child process (its own environment, a free port) and
reads its stderr: JSON log lines, or the one ``configuration error:`` line and exit status 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._idp import running_idp
from tests._live import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0



def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(PYTHONPATH=str(REPO), MCP_NOTES_DB=str(tmp_path / "notes.db"), HOME=str(tmp_path), **extra)
    return env


def run_to_exit(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], env=dict(env), cwd=REPO, capture_output=True,
                          text=True, timeout=START_TIMEOUT, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def started(args: list[str], env: Mapping[str, str], port: int) -> Iterator[subprocess.Popen[str]]:
    """Start the server, wait until /health answers, stop it with SIGTERM afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "server", *args], env=dict(env), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc)


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                out.append(doc)
    return out


def test_production_start_logs_issuers_audiences_resource_profile_and_binding_mode(tmp_path: Path) -> None:
    port = free_port()
    with running_idp() as idp:
        env = base_env(tmp_path, PORT=str(port), MCP_AUTH_ISSUER=idp.issuer, MCP_AUTH_AUDIENCE="mcp-client",
                       MCP_RESOURCE_URL=f"http://127.0.0.1:{port}/mcp", MCP_AUTH_CERT_BINDING="if-bound",
                       MCP_CLIENT_SECRET="must-not-appear")
        with started([], env, port) as proc:
            pass
        stderr = proc.stderr.read() if proc.stderr else ""
    lines = [d for d in json_lines(stderr) if d.get("msg") == "auth configuration"]
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line["level"] == "info"
    assert line["issuers"] == [{"issuer": idp.issuer, "profile": "ias", "jwks_uri": "discovered",
                                "audiences": ["mcp-client", f"http://127.0.0.1:{port}/mcp"]}]
    assert line["resource_url"] == f"http://127.0.0.1:{port}/mcp"
    assert line["profiles"] == ["ias"]
    assert line["cert_binding"] == "if-bound"
    assert line["ca_file"] is None
    assert "must-not-appear" not in stderr


def test_start_with_nothing_configured_names_the_missing_issuer_first(tmp_path: Path) -> None:
    proc = run_to_exit([], base_env(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("configuration error: MCP_AUTH_ISSUER:"), proc.stderr
    assert "MCP_RESOURCE_URL" not in proc.stderr.splitlines()[0].split(":", 2)[1]


def test_start_with_two_identity_bindings_and_no_choice_names_the_setting(tmp_path: Path) -> None:
    bindings = [{"name": n, "credentials": {"url": f"https://{n}.accounts.ondemand.com", "clientid": n}}
                for n in ("ias-a", "ias-b")]
    env = base_env(tmp_path, VCAP_SERVICES=json.dumps({"identity": bindings}),
                   MCP_RESOURCE_URL="https://notes.example.com/mcp")
    proc = run_to_exit([], env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("configuration error: MCP_AUTH_IDENTITY_SERVICE:"), proc.stderr


def test_malformed_dev_clients_setting_stops_the_dev_start_naming_it(tmp_path: Path) -> None:
    proc = run_to_exit(["--dev"], base_env(tmp_path, PORT=str(free_port()), MCP_DEV_CLIENTS="archiver:s3cret"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("configuration error: MCP_DEV_CLIENTS:"), proc.stderr
    assert "s3cret" not in proc.stderr


def test_dev_clients_setting_outside_dev_mode_is_refused(tmp_path: Path) -> None:
    env = base_env(tmp_path, MCP_AUTH_ISSUER="https://a.accounts.ondemand.com", MCP_AUTH_AUDIENCE="x",
                   MCP_RESOURCE_URL="https://notes.example.com/mcp", MCP_DEV_CLIENTS="a:b:c")
    proc = run_to_exit([], env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("configuration error: MCP_DEV_CLIENTS:"), proc.stderr


def test_dev_client_from_the_setting_gets_a_token_with_its_groups(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(tmp_path, PORT=str(port), MCP_DEV_CLIENTS="archiver:arch-pw:api_read_access+api_archive")
    with started(["--dev"], env, port) as proc:
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/dev-ias/oauth2/token", data={"grant_type": "client_credentials"},
                           auth=("archiver", "arch-pw"), timeout=10).json()["access_token"]
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
        r = httpx.post(f"{base}/mcp", json=call, timeout=10, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25"})
        assert r.status_code == 200, r.text
        who = r.json()["result"]["structuredContent"]
        wrong = httpx.post(f"{base}/dev-ias/oauth2/token", data={"grant_type": "client_credentials"},
                           auth=("archiver", "other"), timeout=10)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert who["client_id"] == "archiver"
    assert sorted(who["permissions"]) == ["api_archive", "api_read_access"]
    assert wrong.status_code == 401
    assert "archiver (api_read_access+api_archive, MCP_DEV_CLIENTS)" in stderr
    assert "arch-pw" not in stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("archiver:pw:api_read_access+api_archive", {"archiver": ("api_read_access", "api_archive")}),
        (" a:x:g1 , b:y: ", {"a": ("g1",), "b": ()}),
        ("", {}),
    ],
)
def test_dev_clients_syntax_is_id_secret_and_plus_joined_groups(
    value: str, expected: dict[str, tuple[str, ...]]
) -> None:
    from server._dev_issuer import parse_dev_clients

    parsed = parse_dev_clients(value)
    assert {cid: c.apis for cid, c in parsed.items()} == expected


@pytest.mark.parametrize(
    "value",
    ["archiver", "archiver:pw", "a:b:c:d", "bad id:pw:g", "a::g", "a:pw:g h", "a:pw:g+", "dev-full:pw:g",
     "a:p:g,a:q:g"],
)
def test_malformed_dev_clients_raise_a_config_error_naming_the_setting(value: str) -> None:
    from auth import ConfigError
    from server._dev_issuer import parse_dev_clients

    with pytest.raises(ConfigError) as err:
        parse_dev_clients(value)
    assert err.value.setting == "MCP_DEV_CLIENTS"


def test_a_notes_file_that_cannot_be_written_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    """Checked once before any worker starts: exit 2 and the reason, never a traceback per worker."""
    import subprocess
    import sys

    from tests._live import free_port

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MCP_")}, "HOST": "127.0.0.1",
           "PORT": str(free_port()), "MCP_AUTH_ISSUER": "https://t.accounts.ondemand.com", "MCP_AUTH_AUDIENCE": "c",
           "MCP_RESOURCE_URL": "https://notes.example/mcp", "MCP_WORKERS": "2",
           "MCP_NOTES_DB": str(blocker / "notes.db"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "server"], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error: MCP_NOTES_DB: cannot open the notes database" in proc.stderr
    assert "File exists" in proc.stderr and "Traceback" not in proc.stderr  # the folder is a file
