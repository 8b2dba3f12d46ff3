"""Cloud Foundry deployment: the files the buildpack reads, and a simulated ``cf push``."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests._idp import running_idp
from tests._live import free_port as _free_port
from tests._postgres import APP_ROLE, PostgresServer

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_HOST = "notes-mcp.cfapps.eu10.hana.ondemand.com"


def _manifest_value(key: str) -> str:
    match = re.search(rf"^\s+{key}:\s*(\S.*)$", (ROOT / "manifest.yml").read_text(), re.MULTILINE)
    assert match, f"manifest.yml has no {key}"
    return match.group(1).split(" #")[0].strip()  # without a trailing comment


def test_requirements_txt_is_in_sync_with_pyproject() -> None:
    result = subprocess.run([sys.executable, str(ROOT / ".ci/gen_requirements.py"), "--check"], check=False)
    assert result.returncode == 0, "requirements.txt is stale: run python .ci/gen_requirements.py"


def _ranges_and_pins() -> tuple[dict[str, Requirement], dict[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["server"]]
    ranges = {canonicalize_name(r.name): r for r in map(Requirement, declared)}
    pins = {canonicalize_name(r.name): r for r in map(Requirement, project["tool"]["deploy"]["pins"])}
    return ranges, pins


def test_runtime_dependencies_are_ranges_and_every_one_has_an_exact_pin_inside_it() -> None:
    ranges, pins = _ranges_and_pins()
    assert set(pins) == set(ranges), "pin exactly the runtime dependencies (library and server)"
    for name, pin in pins.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin} is not an exact pin"
        assert ranges[name].specifier.contains(spec.version), f"{pin} is outside {ranges[name]}"
        assert not any(s.operator == "==" for s in ranges[name].specifier), f"{ranges[name]} is a pin, not a range"


def test_pin_check_would_notice_a_pin_outside_its_range() -> None:
    ranges, _ = _ranges_and_pins()
    assert not ranges["mcp"].specifier.contains("3.0.0")
    assert not ranges["starlette"].specifier.contains("0.1.0")


def test_runtime_txt_names_the_python_the_tests_run_on() -> None:
    version = (ROOT / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.\d+\.(x|\d+)", version)
    assert version.split("-")[1].split(".")[:2] == [str(sys.version_info.major), str(sys.version_info.minor)]


def test_manifest_declares_http_health_check_memory_and_identity_binding() -> None:
    text = (ROOT / "manifest.yml").read_text()
    assert _manifest_value("command") == "python -m server"
    assert _manifest_value("memory") == "256M"
    assert _manifest_value("health-check-type") == "http"
    assert _manifest_value("health-check-http-endpoint") == "/health"
    assert "python_buildpack" in text
    assert "credential-type: X509_GENERATED" in text  # the X.509 alternative is shown


def test_manifest_runs_two_instances_on_a_postgresql_binding_with_a_readiness_check() -> None:
    text = (ROOT / "manifest.yml").read_text()
    assert _manifest_value("instances") == "2"
    assert re.search(r"^\s+- notes-mcp-db\b.*postgresql-db", text, re.MULTILINE)  # bound, with the create command
    assert "SQLite" in text and "instances: 1" in text  # the single-instance alternative is spelled out
    assert _manifest_value("readiness-health-check-type") == "http"
    assert _manifest_value("readiness-health-check-http-endpoint") == "/ready"


def _droplet(tmp: Path) -> Path:
    """Copy what `cf push` uploads (everything not in .cfignore)."""
    patterns = [p.strip().rstrip("/") for p in (ROOT / ".cfignore").read_text().splitlines() if p.strip()]

    def ignore(_: str, names: list[str]) -> list[str]:
        return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]

    target = tmp / "app"
    shutil.copytree(ROOT, target, ignore=ignore)
    assert not (target / "tests").exists() and (target / "requirements.txt").exists()
    return target



def _start_app(app_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # the manifest's command, through a shell as the platform runs it
        ["/bin/sh", "-c", "exec " + _manifest_value("command")],
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_healthy(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "exited"
        assert time.monotonic() < deadline, "no /health within 30 s"
        time.sleep(0.2)


def _call(base: str, token: str, name: str, arguments: dict[str, object]) -> dict[str, object]:
    response = httpx.post(
        f"{base}/mcp",
        headers={
            "Host": PUBLIC_HOST,
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25",
        },
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["isError"] is False, result
    return result["structuredContent"]


@pytest.mark.timeout(600)
def test_buildpack_simulation_two_instances_share_notes_through_the_postgresql_binding(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    app_dir = _droplet(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", "requirements.txt"],
        cwd=app_dir,
        check=True,
        timeout=540,
    )
    with running_idp() as idp:
        ports = [_free_port(), _free_port()]
        vcap_services = {
            "identity": [
                {
                    "label": "identity",
                    "plan": "application",
                    "name": "notes-mcp-ias",
                    "tags": [],
                    "credentials": {
                        "clientid": "mcp-client",
                        "clientsecret": "not-used-here",
                        "credential-type": "SECRET",
                        "url": idp.issuer,
                        "domains": ["accounts.ondemand.com"],
                        "app_tid": "7b20408e-3fe0-4ade-aa2e-ad97baac72e8",
                    },
                }
            ],
            "postgresql-db": [  # as BTP's hyperscaler option binds it, pointing at the local test server
                {
                    "label": "postgresql-db",
                    "plan": "trial",
                    "name": "notes-mcp-db",
                    "tags": ["relational", "database", "postgresql"],
                    "credentials": {
                        "hostname": "localhost",
                        "port": str(postgres.port),
                        "dbname": postgres.new_database(),
                        "username": APP_ROLE,
                        "password": postgres.app_password,
                        "sslrootcert": postgres.ca_pem,  # TLS verified against the binding's CA
                    },
                }
            ],
        }
        base_env = {
            "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
            "HOME": str(tmp_path),
            "HOST": "127.0.0.1",  # the platform binds 0.0.0.0; tests stay on loopback
            "VCAP_APPLICATION": json.dumps({"application_name": "notes-mcp", "application_uris": [PUBLIC_HOST]}),
            "VCAP_SERVICES": json.dumps(vcap_services),
        }
        procs = [_start_app(app_dir, {**base_env, "PORT": str(port), "CF_INSTANCE_INDEX": str(i)})
                 for i, port in enumerate(ports)]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            for proc, base in zip(procs, bases, strict=True):
                _wait_healthy(proc, base)
            public = {"Host": PUBLIC_HOST}
            meta = httpx.get(f"{bases[0]}/.well-known/oauth-protected-resource/mcp", headers=public).json()
            assert meta["resource"] == f"https://{PUBLIC_HOST}/mcp"
            assert meta["authorization_servers"] == [idp.issuer]
            unauthenticated = httpx.post(f"{bases[1]}/mcp", headers=public, json={})
            assert unauthenticated.status_code == 401
            assert (
                f'resource_metadata="https://{PUBLIC_HOST}/.well-known/oauth-protected-resource/mcp"'
                in (unauthenticated.headers["www-authenticate"])
            )
            assert [httpx.get(f"{b}/ready", timeout=10).status_code for b in bases] == [200, 200]
            token = idp.mint(aud=["mcp-client"], ias_apis=["api_read_access", "api_write_access"])
            created = _call(bases[0], token, "create_note", {"title": "pushed twice", "body": "shared"})
            assert _call(bases[1], token, "get_note", {"note_id": created["id"]}) == created
            updated = _call(bases[1], token, "update_note", {"note_id": created["id"], "title": "t2", "body": "b2"})
            assert _call(bases[0], token, "list_notes", {})["notes"] == [updated]
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
            outputs = []
            for proc in procs:
                assert proc.wait(timeout=15) == 0
                outputs.append(proc.stdout.read().decode(errors="replace") if proc.stdout else "")
        assert all(postgres.app_password not in out for out in outputs)
        assert all("connection requested" not in out for out in outputs)  # no pool chatter per call at INFO
        assert all("notes store: postgresql://notes_app@localhost" in out for out in outputs), outputs[0][-2000:]
