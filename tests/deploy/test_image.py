"""The container image: built from the Dockerfile, run as its non-root user on a read-only root with a
bindings folder mounted as Kyma mounts the operator's Secrets, and attacked like the deployed server.

The identity binding names a local test issuer (`tests._idp`), the PostgreSQL binding the test
cluster (`tests._postgres`) with its CA; so ``/ready`` and a tool call exercise the whole path:
binding files -> settings -> verified TLS to the database -> token validation -> per-tool groups.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._idp import IdP, running_idp
from tests._live import free_port
from tests._postgres import APP_ROLE, PostgresServer
from tests.deploy import _image
from tests.deploy._bindings import mount_secret, operator_secret

pytestmark = pytest.mark.timeout(1800)
PUBLIC = "notes-mcp.c-1a2b3c.kyma.ondemand.com"
CLIENT_ID = "21ad7bc4-79b2-48a7-8346-6806d385bf15"
JSON = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25", "Host": PUBLIC}


@pytest.fixture(scope="module")
def image() -> str:
    reason = _image.ensure_tools()
    if reason:
        pytest.skip(reason)
    return _image.build_image()


def test_image_is_labelled_non_root_and_lean(image: str) -> None:
    oci = _image.inspect(image)
    config = oci["config"]
    user, group = config["User"].split(":")
    assert user.isdigit() and group.isdigit() and int(user) != 0 and int(group) != 0
    assert config["Entrypoint"] == ["/opt/venv/bin/python", "-m", "server"] and config["WorkingDir"] == "/app"
    assert "8080/tcp" in config["ExposedPorts"] and config["StopSignal"] == "SIGTERM"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert (env["HOST"], env["PORT"]) == ("0.0.0.0", "8080") and "MCP_NOTES_DB" not in env  # a binding may win
    labels = config["Labels"]
    for key in ("title", "description", "licenses", "version", "revision", "base.name"):
        assert labels[f"org.opencontainers.image.{key}"], key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.revision"] == "test"
    assert _image.listing(image, "/opt/venv/bin", "/usr/bin").isdisjoint({"pip", "pip3", "gcc", "cc", "make"})
    assert not _image.listing(image, "/opt/venv/lib/python3.11/site-packages") & {"pip", "setuptools"}
    size = _image.image_size(image)
    base = _image.image_size(_image.BASE_IMAGE)
    print(f"\nimage {image}: {size / 1e6:.0f} MB, of which {(size - base) / 1e6:.0f} MB over the base")
    assert size - base < 150e6  # the venv and the app; no compilers, caches or build tools


@pytest.fixture
def bindings(tmp_path: Path, postgres: PostgresServer) -> Iterator[tuple[Path, IdP]]:
    """/bindings as Kyma mounts it: one folder per ServiceBinding Secret, files 0440 of group 10001 (fsGroup)."""
    with running_idp() as idp:
        root = tmp_path / "bindings"
        identity = {"clientid": CLIENT_ID, "credential-type": "X509_GENERATED", "url": idp.issuer,
                    "certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                    "key": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
                    "domains": ["accounts.ondemand.com"], "app_tid": "7b20408e-3fe0-4ade-aa2e-ad97baac72e8"}
        database = {"hostname": "127.0.0.1", "port": str(postgres.port), "dbname": postgres.new_database(),
                    "username": APP_ROLE, "password": postgres.app_password, "sslrootcert": postgres.ca_pem}
        mount_secret(root, "notes-mcp-ias", operator_secret(
            identity, offering="identity", instance_name="notes-mcp-ias", plan="application"))
        mount_secret(root, "notes-mcp-db", operator_secret(
            database, offering="postgresql-db", instance_name="notes-mcp-db", plan="trial",
            tags=["relational", "database", "postgresql"]))
        gid = 10001
        for path in [root, *root.rglob("*")]:
            os.chown(path, 0, gid, follow_symlinks=False)
            if not path.is_symlink():
                os.chmod(path, 0o550 if path.is_dir() else 0o440)
        yield root, idp


def _wait(running: _image.Running, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert running.proc.poll() is None, running.output()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, running.output()[-3000:]
        time.sleep(0.2)


def _call(base: str, token: str | None, name: str, arguments: dict[str, Any]) -> httpx.Response:
    headers = dict(JSON) | ({"Authorization": f"Bearer {token}"} if token else {})
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    return httpx.post(f"{base}/mcp", headers=headers, json=body, timeout=30)


def test_image_serves_as_its_user_on_a_read_only_root_with_kubernetes_bindings(
        image: str, bindings: tuple[Path, IdP], tmp_path: Path, postgres: PostgresServer) -> None:
    root, idp = bindings
    port = free_port()
    env = {"HOST": "127.0.0.1", "PORT": str(port),  # tests stay on loopback; the image's default is 0.0.0.0
           "SERVICE_BINDING_ROOT": "/bindings", "MCP_RESOURCE_URL": f"https://{PUBLIC}/mcp"}
    running = _image.start(image, env, root, tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    status: int | None = None
    try:
        _wait(running, f"{base}/health")
        # as the image's numeric user, on a read-only root
        proc_status = Path(f"/proc/{running.proc.pid}/status").read_text()
        uid_line = next(line for line in proc_status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["10001"] * 4
        root_mount = next(line.split() for line in Path(f"/proc/{running.proc.pid}/mountinfo").read_text().splitlines()
                          if line.split()[4] == "/")
        assert "ro" in root_mount[5].split(",")

        assert httpx.get(f"{base}/ready", timeout=10).status_code == 200  # PostgreSQL through the binding, TLS
        meta = httpx.get(f"{base}/.well-known/oauth-protected-resource/mcp", headers={"Host": PUBLIC}).json()
        assert meta["resource"] == f"https://{PUBLIC}/mcp" and meta["authorization_servers"] == [idp.issuer]

        missing = _call(base, None, "list_notes", {})
        assert missing.status_code == 401
        assert f'resource_metadata="https://{PUBLIC}/.well-known/oauth-protected-resource/mcp"' in (
            missing.headers["www-authenticate"])
        forged = _call(base, idp.mint(aud=["someone-else"]), "list_notes", {})
        assert forged.status_code == 401 and 'error="invalid_token"' in forged.headers["www-authenticate"]
        reader = idp.mint(aud=[CLIENT_ID], ias_apis=["api_read_access"])
        refused = _call(base, reader, "create_note", {"title": "t", "body": "b"})
        assert refused.status_code == 403 and 'error="insufficient_scope"' in refused.headers["www-authenticate"]

        writer = idp.mint(aud=[CLIENT_ID], ias_apis=["api_read_access", "api_write_access"])
        created = _call(base, writer, "create_note", {"title": "from the image", "body": "via bindings"})
        assert created.status_code == 200, created.text
        note = created.json()["result"]["structuredContent"]
        assert note["title"] == "from the image" and note["created_by"] == "consumer-client"
        listed = _call(base, reader, "list_notes", {})
        assert listed.json()["result"]["structuredContent"]["notes"][0]["id"] == note["id"]
    finally:
        status = _image.stop(running)
    log = running.output()
    assert status == 0, log[-3000:]  # SIGTERM: drained and exited cleanly
    assert postgres.app_password not in log
    assert "notes store: postgresql://notes_app@127.0.0.1" in log and "sslmode=verify-ca" in log
    summary = next(json.loads(line) for line in log.splitlines() if '"auth configuration"' in line)
    assert summary["issuers"][0]["audiences"][0] == CLIENT_ID


def test_image_without_a_database_binding_fails_clearly_on_its_read_only_root(
        image: str, tmp_path: Path) -> None:
    """No PostgreSQL binding: the SQLite default lies in the read-only image, and the start says so."""
    root = tmp_path / "bindings"
    mount_secret(root, "ias", {"type": "identity", "url": "https://t.accounts.ondemand.com", "clientid": "c"})
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    env = {"HOST": "127.0.0.1", "PORT": str(free_port()), "SERVICE_BINDING_ROOT": "/bindings",
           "MCP_RESOURCE_URL": f"https://{PUBLIC}/mcp"}
    running = _image.start(image, env, root, tmp_path / "server.log")
    try:
        running.proc.wait(60)
    finally:
        _image.stop(running)
    assert running.proc.returncode == 2
    assert "Read-only file system" in running.output()
