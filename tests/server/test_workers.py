"""Every core: the default worker count from the cgroup (pure tables, fake cgroup folders) and
``python -m server`` with ``MCP_WORKERS=2``: two processes answer on one port, SIGTERM lets the
requests in flight on both finish and the parent exits 0, a failed worker is handled.

Which worker holds a connection is read from ``/proc`` (the server side of the TCP connection is a
socket inode; the worker whose file descriptors include that inode serves it): nothing is added
to the product for the test to see it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server._workers import (
    WORKER_MEMORY,
    cgroup_path,
    container_limits,
    default_workers,
    parse_cfs_quota,
    parse_cpu_max,
    parse_memory_limit,
)
from tests._idp import IdP, running_idp
from tests._live import free_port

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
GiB = 1024**3

# -- the default count ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "cpus"), [
    ("max 100000", None), ("max", None), ("200000 100000", 2.0), ("150000 100000", 1.5), ("50000 100000", 0.5),
    ("100000", 1.0), ("0 100000", None), ("-1 100000", None), ("abc 100000", None), ("", None), ("1 2 3", None),
    ("400000 100000\n", 4.0),
])
def test_parse_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(("quota", "period", "cpus"), [
    ("-1", "100000", None), ("200000", "100000", 2.0), ("50000\n", "100000\n", 0.5), ("x", "100000", None),
    ("100000", "0", None),
])
def test_parse_cfs_quota(quota: str, period: str, cpus: float | None) -> None:
    assert parse_cfs_quota(quota, period) == cpus


@pytest.mark.parametrize(("text", "limit"), [
    ("max\n", None), ("268435456\n", 256 * 1024 * 1024), ("9223372036854771712", None), ("0", None), ("-1", None),
    ("1G", None), ("", None),
])
def test_parse_memory_limit(text: str, limit: int | None) -> None:
    assert parse_memory_limit(text) == limit


PROC_V2 = "0::/kubepods/pod1/ctr\n"
PROC_V1 = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"


@pytest.mark.parametrize(("text", "controller", "path"), [
    (PROC_V2, None, "/kubepods/pod1/ctr"), (PROC_V2, "cpu", None), (PROC_V1, "cpu", "/docker/abc"),
    (PROC_V1, "memory", "/docker/abc"), (PROC_V1, None, None), ("", None, None), ("garbage", "cpu", None),
])
def test_cgroup_path(text: str, controller: str | None, path: str | None) -> None:
    assert cgroup_path(text, controller) == path


@pytest.mark.parametrize(("cpu", "cpus", "memory", "workers"), [
    (None, 2, None, 2),            # no quota: the CPUs we may run on
    (None, 32, None, 32),
    (2.0, 32, None, 2),            # the quota wins over the host's cores
    (1.5, 32, None, 1),            # rounded down: no worker throttled for want of a whole CPU
    (0.5, 8, None, 1),             # at least one
    (8.0, 4, None, 4),             # never more than the CPUs we may run on
    (None, 32, 256 * 1024**2, 1),  # a 256 MiB Cloud Foundry container on a big host: one
    (4.0, 8, 1 * GiB, 4),
    (None, 8, 1 * GiB, 4),
    (None, 200, None, 64),         # at most 64
    (None, 0, None, 1),
])
def test_default_workers(cpu: float | None, cpus: int, memory: int | None, workers: int) -> None:
    assert default_workers(cpu, cpus, memory) == workers
    assert WORKER_MEMORY == 256 * 1024**2


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_container_limits_v2_takes_the_smallest_limit_along_the_cgroup_ancestors(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup.controllers", "cpu memory\n")
    _write(tmp_path / "kubepods" / "cpu.max", "300000 100000\n")
    _write(tmp_path / "kubepods" / "memory.max", "max\n")
    _write(tmp_path / "kubepods" / "pod1" / "ctr" / "cpu.max", "max 100000\n")
    _write(tmp_path / "kubepods" / "pod1" / "ctr" / "memory.max", str(512 * 1024**2))
    assert container_limits(tmp_path, PROC_V2) == (3.0, 512 * 1024**2)
    cpu, memory = container_limits(tmp_path, PROC_V2)
    assert default_workers(cpu, 16, memory) == 2


def test_container_limits_v2_in_a_cgroup_namespace_reads_the_root(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup.controllers", "cpu memory\n")
    _write(tmp_path / "cpu.max", "200000 100000\n")
    _write(tmp_path / "memory.max", "max\n")
    assert container_limits(tmp_path, "0::/\n") == (2.0, None)
    assert container_limits(tmp_path, "0::/not/visible/here\n") == (2.0, None)


def test_container_limits_v1(tmp_path: Path) -> None:
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "150000\n")
    _write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(tmp_path / "memory" / "docker" / "abc" / "memory.limit_in_bytes", str(GiB))
    assert container_limits(tmp_path, PROC_V1) == (1.5, GiB)


def test_container_limits_without_cgroup_files(tmp_path: Path) -> None:
    assert container_limits(tmp_path / "absent", "") == (None, None)


# -- two workers on one port -----------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return sorted(int(p) for p in f.read().split())


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with running_idp() as server:
        yield server


@contextlib.contextmanager
def production(idp: IdP, folder: Path, workers: str = "2", **extra: str) -> Iterator[Server]:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(folder), "PYTHONPATH": str(REPO), "PORT": str(port),
           "MCP_AUTH_ISSUER": idp.issuer, "MCP_AUTH_AUDIENCE": "mcp-client",
           "MCP_RESOURCE_URL": f"http://127.0.0.1:{port}/mcp", "MCP_NOTES_DB": str(folder / "notes.db"),
           "MCP_WORKERS": workers, **extra}
    log = folder / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, server.output()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        assert "Traceback" not in server.output(), server.output()


def _request(port: int, token: str) -> tuple[bytes, bytes]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "whoami", "arguments": {}}}).encode()
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def _tcp_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server side of the connection from ``client_port`` (``/proc/net/tcp``)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                return int(fields[9])
    return None


def _owner(pids: list[int], inode: int) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def _read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def _in_flight_on_both_workers(server: Server, token: str, most: int = 60) -> tuple[list[socket.socket], set[int]]:
    """Open connections with half-sent requests until both workers hold some (each holds its requests)."""
    workers = server.workers()
    head, body = _request(server.port, token)
    held: list[socket.socket] = []
    owners: set[int] = set()
    for _ in range(most):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        sock.sendall(head + body[:10])
        held.append(sock)
        owner = None
        deadline = time.monotonic() + 5
        while owner is None and time.monotonic() < deadline:  # accepted by one of the workers
            inode = _tcp_inode(server.port, sock.getsockname()[1])
            owner = _owner(workers, inode) if inode is not None else None
            if owner is None:
                time.sleep(0.01)
        assert owner is not None and owner in workers
        owners.add(owner)
        if len(owners) == 2 and len(held) >= 4:
            break
        time.sleep(0.02)
    return held, owners


def test_two_workers_answer_on_one_port_and_sigterm_drains_both(idp: IdP, tmp_path: Path) -> None:
    with production(idp, tmp_path) as server:
        workers = server.workers()
        assert len(workers) == 2 and server.proc.pid not in workers
        token = idp.mint(azp="drained", sub="drained")
        held, owners = _in_flight_on_both_workers(server, token)
        assert owners == set(workers), "both workers hold requests in flight"
        _, body = _request(server.port, token)
        try:
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert server.proc.poll() is None  # draining: the workers wait for their requests
            assert all(os.path.exists(f"/proc/{pid}") for pid in workers)
            with pytest.raises(httpx.ConnectError):  # new connections are refused at once
                httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)
            for sock in held:
                sock.sendall(body[10:])
            answers = [_read_answer(sock) for sock in held]
        finally:
            for sock in held:
                sock.close()
        assert all(a.startswith(b"HTTP/1.1 200") and b"drained" in a for a in answers), answers[0][:300]
        assert server.proc.wait(20) == 0, server.output()
    lines = server.output()
    assert f"worker 0 started (pid {min(workers)})" in lines or f"worker 0 started (pid {max(workers)})" in lines
    assert "with 2 worker(s)" in lines
    assert all(not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid) for pid in workers)


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_each_worker_serves_whole_requests_and_verifies_tokens(idp: IdP, tmp_path: Path) -> None:
    with production(idp, tmp_path) as server:
        url = f"http://127.0.0.1:{server.port}/mcp"
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": "2025-11-25"}
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
        for n in range(20):  # a new connection each time: both workers get some
            with httpx.Client(timeout=10) as http:
                ok = http.post(url, json=call, headers={**headers, "Authorization": f"Bearer {idp.mint()}"})
                assert ok.status_code == 200 and ok.json()["result"]["isError"] is False
                bad = http.post(url, json=call, headers={**headers, "Authorization": f"Bearer {idp.mint()[:-3]}x{n}"})
                assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]


def test_a_worker_failing_right_after_start_stops_the_server(idp: IdP, tmp_path: Path) -> None:
    with production(idp, tmp_path) as server:
        victim = server.workers()[0]
        os.kill(victim, signal.SIGKILL)
        assert server.proc.wait(20) == 1, server.output()
    assert "exited with status -9" in server.output()


def test_a_worker_dying_after_serving_a_while_is_replaced(idp: IdP, tmp_path: Path) -> None:
    with production(idp, tmp_path) as server:
        first = server.workers()
        time.sleep(10.5)  # RESTART_AFTER_S
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (now := server.workers()) == first or len(now) < 2:
            assert server.proc.poll() is None and time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        assert first[1] in now and first[0] not in now
        assert httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5).status_code == 200


def test_workers_do_not_outlive_a_killed_parent(idp: IdP, tmp_path: Path) -> None:
    with production(idp, tmp_path) as server:
        workers = server.workers()
        server.proc.kill()
        server.proc.wait(10)
        deadline = time.monotonic() + 15
        while any(not _zombie_or_gone(pid) for pid in workers):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.1)


def test_dev_mode_refuses_more_than_one_worker(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(REPO), "PORT": "0",
           "MCP_WORKERS": "2"}
    result = subprocess.run([sys.executable, "-m", "server", "--dev"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "MCP_WORKERS" in result.stderr and "--dev" in result.stderr


def test_the_workers_of_an_instance_share_one_rate_limit_budget(idp: IdP, tmp_path: Path) -> None:
    with production(idp, tmp_path, MCP_RATE_LIMIT_WRITE="1/h:4") as server:
        url = f"http://127.0.0.1:{server.port}/mcp"
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": "2025-11-25", "Authorization": f"Bearer {idp.mint(azp='spread')}"}
        statuses = []
        for n in range(16):  # a new connection each time: the kernel spreads them over both workers
            call = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                    "params": {"name": "create_note", "arguments": {"title": f"n{n}"}}}
            with httpx.Client(timeout=10) as http:
                statuses.append(http.post(url, json=call, headers=headers).status_code)
        assert sorted(statuses) == [200] * 4 + [429] * 12, statuses  # per worker, it could be up to 8


def test_each_worker_exports_its_own_telemetry(idp: IdP, tmp_path: Path) -> None:
    from tests._otlp import otlp_receiver

    with otlp_receiver() as receiver:
        with production(idp, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="200",
                        OTEL_RESOURCE_ATTRIBUTES="service.instance.id=notes-7") as server:
            assert len(server.workers()) == 2  # telemetry threads start in each worker, after the fork
            url = f"http://127.0.0.1:{server.port}/mcp"
            headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                       "MCP-Protocol-Version": "2025-11-25", "Authorization": f"Bearer {idp.mint()}"}
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
            for _ in range(16):
                with httpx.Client(timeout=10) as http:
                    assert http.post(url, json=call, headers=headers).status_code == 200
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(20) == 0, server.output()  # each worker flushed its spans and metrics
        spans = [s for s in receiver.spans() if s.name == "POST /mcp"]
        assert len(spans) == 16
        assert {s.resource["service.instance.id"] for s in spans} == {"notes-7/worker-0", "notes-7/worker-1"}
        verified: dict[str, int] = {}  # per worker: its latest (cumulative) count of valid tokens
        for request in receiver.metric_requests:
            for resource in request.resource_metrics:
                (instance,) = [a.value.string_value for a in resource.resource.attributes
                               if a.key == "service.instance.id"]
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name == "mcp.auth.token.verifications":
                            verified[instance] = sum(p.as_int for p in metric.sum.data_points)
        assert set(verified) == {"notes-7/worker-0", "notes-7/worker-1"}
        assert sum(verified.values()) == 16  # the two workers' counters add up to every request


def test_a_prometheus_endpoint_means_one_worker(idp: IdP, tmp_path: Path) -> None:
    metrics_port = str(free_port())
    with production(idp, tmp_path, workers="auto", OTEL_METRICS_EXPORTER="prometheus",
                    OTEL_EXPORTER_PROMETHEUS_PORT=metrics_port) as server:
        assert server.workers() == []  # one process serves, the one that serves the scrape endpoint
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).status_code == 200
    assert "with 1 worker(s)" in server.output()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(REPO), "PORT": "0",
           "MCP_AUTH_ISSUER": idp.issuer, "MCP_AUTH_AUDIENCE": "mcp-client",
           "MCP_RESOURCE_URL": "http://127.0.0.1:1/mcp", "MCP_NOTES_DB": str(tmp_path / "n.db"), "MCP_WORKERS": "2",
           "OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": metrics_port}
    result = subprocess.run([sys.executable, "-m", "server"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "MCP_WORKERS" in result.stderr and "Prometheus" in result.stderr
