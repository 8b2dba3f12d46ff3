"""Scale-out: three real ``python -m server`` processes (production mode) over one PostgreSQL database.

A round-robin balancer without affinity spreads every request of the real `mcp` client (both
protocol generations) over the instances, as the Cloud Foundry router does. Then: concurrent
writers on all three, one instance killed with SIGKILL in the middle of a write burst, and the
database restarted mid-run. Tokens come from the IAS-like key server in ``tests/_idp.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._idp import IdP, running_idp
from tests._live import free_port as _free_port
from tests._postgres import PostgresServer

from .conftest import JSON_HEADERS, LEGACY_HEADERS, MODES, mcp_client, tool_call
from .test_stateless import RoundRobin

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
UNAVAILABLE = "the notes store is unavailable"



@dataclass
class Instance:
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return self.base_url + "/mcp"


@dataclass
class Cluster:
    """Instances of the production server sharing one database URL and one IdP."""

    env: dict[str, str]
    instances: list[Instance] = field(default_factory=list)

    def start(self, instance: Instance) -> None:
        env = {**self.env, "PORT": str(instance.port)}
        with instance.log.open("ab") as log:
            instance.proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, instance: Instance, timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert instance.proc is not None and instance.proc.poll() is None, instance.log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(instance.base_url + "/health", timeout=1).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"no /health within {timeout} s:\n{instance.log.read_text()}"
            time.sleep(0.2)

    @property
    def urls(self) -> list[str]:
        return [i.base_url for i in self.instances if i.proc is not None and i.proc.poll() is None]

    def stop_all(self) -> None:
        for instance in self.instances:
            if instance.proc is not None and instance.proc.poll() is None:
                os.killpg(instance.proc.pid, signal.SIGTERM)
        for instance in self.instances:
            if instance.proc is not None:
                try:
                    instance.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(instance.proc.pid, signal.SIGKILL)
                    instance.proc.wait(timeout=5)


@contextlib.contextmanager
def cluster(postgres: PostgresServer, idp: IdP, folder: Path, count: int = 3) -> Iterator[Cluster]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        "HOST": "127.0.0.1",
        "MCP_AUTH_ISSUER": idp.issuer,
        "MCP_AUTH_AUDIENCE": "mcp-client",
        "MCP_RESOURCE_URL": "https://notes.example/mcp",
        "MCP_NOTES_DB": postgres.url(postgres.new_database()),
        "MCP_NOTES_DB_TIMEOUT": "1",
        "MCP_LOG_LEVEL": "DEBUG",  # everything the store logs, to look for the password in it
        "MCP_WORKERS": "1",  # /ready and a pool's recovery are per process: one per instance keeps probes exact
    }
    made = Cluster(env, [Instance(_free_port(), folder / f"instance-{i}.log") for i in range(count)])
    try:
        for instance in made.instances:  # all at once: the schema migration races too
            made.start(instance)
        for instance in made.instances:
            made.wait_healthy(instance)
        yield made
    finally:
        made.stop_all()
    logs = "".join(i.log.read_text(errors="replace") for i in made.instances)
    assert postgres.app_password not in logs
    assert "Traceback" not in logs, logs[-4000:]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with running_idp() as server:
        yield server


@pytest.fixture(scope="module")
def three(postgres: PostgresServer, idp: IdP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(postgres, idp, tmp_path_factory.mktemp("instances")) as made:
        yield made


def _token(idp: IdP, client: str = "consumer-client") -> str:
    return idp.mint(azp=client, sub=client)


def _ok(result: Any) -> dict[str, Any]:
    assert not result.is_error, result
    return result.structured_content


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- round robin, both protocol generations ---------------------------------------------------


@pytest.mark.parametrize(("writer_mode", "reader_mode"), [(MODES[0], MODES[1]), (MODES[1], MODES[0])])
async def test_every_operation_round_robin_sees_one_store(
    three: Cluster, idp: IdP, writer_mode: str, reader_mode: str
) -> None:
    token = _token(idp)
    title = _unique("shared")
    writer_lb, reader_lb = RoundRobin(*three.urls), RoundRobin(*reversed(three.urls))
    async with mcp_client(three.instances[0].mcp_url, token, writer_mode, transport=writer_lb) as writer, \
            mcp_client(three.instances[0].mcp_url, token, reader_mode, transport=reader_lb) as reader:
        created = _ok(await writer.call_tool("create_note", {"title": title, "body": "v1"}))
        for step in range(3):  # each call lands on the next instance
            assert _ok(await reader.call_tool("get_note", {"note_id": created["id"]}))["body"] == f"v{step + 1}"
            found = _ok(await reader.call_tool("search_notes", {"query": title.upper()}))["notes"]
            assert [n["id"] for n in found] == [created["id"]]
            _ok(await writer.call_tool("update_note", {"note_id": created["id"], "title": title,
                                                       "body": f"v{step + 2}"}))
        deleted = _ok(await writer.call_tool("delete_note", {"note_id": created["id"]}))
        assert (deleted["body"], deleted["created_by"], deleted["updated_by"]) == ("v4", "consumer-client",
                                                                                   "consumer-client")
        for _ in range(3):
            gone = await reader.call_tool("get_note", {"note_id": created["id"]})
            assert gone.is_error and f"note {created['id']} does not exist" in gone.content[0].text
            again = await writer.call_tool("delete_note", {"note_id": created["id"]})
            assert again.is_error and "does not exist" in again.content[0].text
    served = {port for port, method in writer_lb.served + reader_lb.served if method == "tools/call"}
    assert served == {i.port for i in three.instances}


async def test_concurrent_writers_on_all_instances_lose_nothing_and_all_list_the_same(
    three: Cluster, idp: IdP
) -> None:
    marker = _unique("concurrent")

    async def writer(n: int) -> list[int]:
        mode = MODES[n % 2]
        instance = three.instances[n % 3]
        async with mcp_client(instance.mcp_url, _token(idp, f"writer-{n}"), mode) as client:
            return [_ok(await client.call_tool("create_note", {"title": f"{marker} {n}-{i}"}))["id"]
                    for i in range(12)]

    ids = [i for batch in await asyncio.gather(*(writer(n) for n in range(6))) for i in batch]
    assert len(ids) == len(set(ids)) == 72
    seen = []
    for instance in three.instances:
        async with mcp_client(instance.mcp_url, _token(idp), "legacy") as client:
            notes = _ok(await client.call_tool("search_notes", {"query": marker, "limit": 100}))["notes"]
        seen.append(sorted(n["id"] for n in notes))
    assert seen == [sorted(ids)] * 3


# -- faults ----------------------------------------------------------------------------------


async def test_database_restart_mid_run_fails_calls_cleanly_then_recovers(
    three: Cluster, idp: IdP, postgres: PostgresServer
) -> None:
    token = _token(idp)
    headers = {**JSON_HEADERS, **LEGACY_HEADERS, "Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as http:
        for instance in three.instances:
            assert (await http.get(instance.base_url + "/ready")).status_code == 200
        postgres.stop()
        try:
            for n, instance in enumerate(three.instances):
                started = time.monotonic()
                response = await http.post(instance.mcp_url, headers=headers,
                                           json=tool_call("create_note", {"title": f"during outage {n}"},
                                                          modern=False))
                assert time.monotonic() - started < 15  # 1 s store timeout; generous margin, never a hang
                assert response.status_code == 200, response.text  # a tool error, not an HTTP 500
                result = response.json()["result"]
                assert result["isError"] is True and UNAVAILABLE in result["content"][0]["text"]
                deadline = time.monotonic() + 15  # the answer is reused for up to a second
                while (ready := await http.get(instance.base_url + "/ready")).status_code == 200:
                    assert time.monotonic() < deadline, "still ready while the database is down"
                    await asyncio.sleep(0.2)
                assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
                assert (await http.get(instance.base_url + "/health")).status_code == 200  # liveness unchanged
        finally:
            postgres.start()
        for instance in three.instances:  # no restart of the instances: each recovers by itself
            deadline = time.monotonic() + 30
            while (await http.get(instance.base_url + "/ready")).status_code != 200:
                assert time.monotonic() < deadline, "instance not ready 30 s after the database returned"
                await asyncio.sleep(0.2)
    for mode, instance in zip(MODES * 2, three.instances, strict=False):
        async with mcp_client(instance.mcp_url, token, mode) as client:
            created = _ok(await client.call_tool("create_note", {"title": _unique("after outage")}))
            assert _ok(await client.call_tool("get_note", {"note_id": created["id"]}))["id"] == created["id"]


async def test_ready_is_answered_whatever_the_host_header(three: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        ready = await http.get(three.instances[0].base_url + "/ready", headers={"Host": "10.0.0.7:8080"})
        probe = await http.get(three.instances[0].base_url + "/.well-known/oauth-protected-resource/mcp",
                               headers={"Host": "10.0.0.7:8080"})
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert probe.status_code == 421  # other paths still check the Host


async def test_sigkill_of_one_instance_mid_burst_loses_no_acknowledged_write(three: Cluster, idp: IdP) -> None:
    # Last in the module: it leaves two instances running.
    marker = _unique("burst")
    acked: dict[str, int] = {}  # title -> id, for every create that returned a result
    failed = 0
    acked_at_kill = 0
    victim = three.instances[1]
    killed = asyncio.Event()

    async def writer(n: int) -> None:
        nonlocal failed, acked_at_kill
        mode = MODES[n % 2]
        urls = [i.base_url for i in three.instances]
        for i in range(25):
            title = f"{marker} {n}-{i}"
            # A client per call: the SDK client ends its session on a transport error.
            balancer = RoundRobin(*urls[i % 3:], *urls[:i % 3])
            try:
                async with mcp_client(three.instances[0].mcp_url, _token(idp, f"w{n}"), mode,
                                      transport=balancer) as client:
                    result = await asyncio.wait_for(client.call_tool("create_note", {"title": title}), 20)
            except Exception:  # noqa: BLE001 - the killed instance: refused or cut connection
                failed += 1
                continue
            if not result.is_error:
                acked[title] = result.structured_content["id"]
            if len(acked) >= 20 and not killed.is_set():
                killed.set()
                acked_at_kill = len(acked)
                os.killpg(victim.proc.pid, signal.SIGKILL)

    await asyncio.gather(*(writer(n) for n in range(4)))
    assert killed.is_set() and victim.proc.wait(timeout=10) == -signal.SIGKILL
    assert failed > 0  # some calls did land on the dead instance
    assert len(acked) > acked_at_kill  # and the burst went on over the survivors
    survivors = [i for i in three.instances if i is not victim]
    listings = []
    for instance in survivors:
        async with mcp_client(instance.mcp_url, _token(idp), MODES[1]) as client:
            notes = _ok(await client.call_tool("search_notes", {"query": marker, "limit": 100}))["notes"]
        listings.append(sorted((n["title"], n["id"]) for n in notes))
    assert listings[0] == listings[1]  # every instance lists the same notes
    titles = [title for title, _ in listings[0]]
    assert len(titles) == len(set(titles))  # none duplicated
    assert set(acked.items()) <= set(listings[0])  # every acknowledged write is there, with its id
