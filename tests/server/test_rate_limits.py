"""Per-client rate limits of the server: settings, one instance, and three instances sharing PostgreSQL.

A flooding client gets 429 (``Retry-After`` in whole seconds, JSON-RPC error -32029) while another
client's calls all succeed; reads and writes are limited separately. With PostgreSQL as the store
the budget is one for all instances: a write limit of 6 admits exactly 6 writes whichever
instance serves them, and a read limit with leases stays within the documented bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from auth import ConfigError
from auth._ratelimit import lease_size
from auth.mcp import Rate
from server._limits import RateLimitSettings, rate_limit_settings, workers_setting
from server._settings import parse_postgres_url
from tests._idp import IdP, running_idp
from tests._live import free_port
from tests._postgres import PostgresServer

from .conftest import LEGACY_HEADERS, DevServer, dev_server, modern_headers, tool_call
from .test_multi_instance import Cluster, Instance

pytestmark = pytest.mark.timeout(120)

RATE_LIMITED = -32029
PG = parse_postgres_url("postgresql://u:p@127.0.0.1/db", "MCP_NOTES_DB")


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "expected"), [
    ({}, RateLimitSettings()),
    ({"MCP_RATE_LIMIT_READ": "off", "MCP_RATE_LIMIT_WRITE": ""}, RateLimitSettings()),
    ({"MCP_RATE_LIMIT_READ": "20/s:40"}, RateLimitSettings(read=Rate(20, 40))),
    ({"MCP_RATE_LIMIT_WRITE": "120/m", "MCP_RATE_LIMIT_CLIENTS": "500"},
     RateLimitSettings(write=Rate(2, 120), max_clients=500)),
])
def test_rate_limit_settings_on_sqlite(env: dict[str, str], expected: RateLimitSettings) -> None:
    assert rate_limit_settings(env, Path("notes.db")) == expected


@pytest.mark.parametrize(("shared", "where", "expected"), [
    ("", PG, "postgresql"), ("true", PG, "postgresql"), ("false", PG, "no"), ("0", PG, "no"),
    ("", Path("notes.db"), "workers"), ("false", Path("notes.db"), "no"),
])
def test_rate_limits_are_shared_through_the_store_unless_switched_off(shared: str, where: Any, expected: str) -> None:
    env = {"MCP_RATE_LIMIT_READ": "5/s", "MCP_RATE_LIMIT_SHARED": shared}
    assert rate_limit_settings(env, where).shared == expected


@pytest.mark.parametrize(("env", "setting"), [
    ({"MCP_RATE_LIMIT_READ": "fast"}, "MCP_RATE_LIMIT_READ"),
    ({"MCP_RATE_LIMIT_WRITE": "5/s:0"}, "MCP_RATE_LIMIT_WRITE"),
    ({"MCP_RATE_LIMIT_CLIENTS": "0"}, "MCP_RATE_LIMIT_CLIENTS"),
    ({"MCP_RATE_LIMIT_CLIENTS": "lots"}, "MCP_RATE_LIMIT_CLIENTS"),
    ({"MCP_RATE_LIMIT_SHARED": "true"}, "MCP_RATE_LIMIT_SHARED"),  # SQLite: nothing to share through
    ({"MCP_RATE_LIMIT_SHARED": "maybe"}, "MCP_RATE_LIMIT_SHARED"),
])
def test_bad_rate_limit_settings_are_named(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        rate_limit_settings(env, Path("notes.db"))
    assert caught.value.setting == setting


@pytest.mark.parametrize(("raw", "expected"), [("", None), ("auto", None), ("AUTO", None), ("1", 1), ("8", 8),
                                               ("64", 64)])
def test_workers_setting(raw: str, expected: int | None) -> None:
    assert workers_setting({"MCP_WORKERS": raw}) == expected


@pytest.mark.parametrize("raw", ["0", "65", "-1", "two", "1.5", "٢"])
def test_bad_workers_setting_is_named(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        workers_setting({"MCP_WORKERS": raw})
    assert caught.value.setting == "MCP_WORKERS"


# -- one instance ----------------------------------------------------------------------------------


def _post(url: str, token: str, name: str, args: dict[str, Any], *, modern: bool, request_id: int = 1,
          client: httpx.Client | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {token}", **(modern_headers(name) if modern else LEGACY_HEADERS)}
    body = tool_call(name, args, modern=modern, id=request_id)
    return (client or httpx).post(url, json=body, headers=headers, timeout=10)


def _assert_429(response: httpx.Response, request_id: int, limit: str) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"].isdigit() and int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert response.json()["id"] == request_id and error["code"] == RATE_LIMITED
    assert error["data"]["error"] == "rate_limited" and error["data"]["limit"] == limit


CLIENTS = {name: (f"{name}-secret", ["api_read_access", "api_write_access"])
           for name in ("flood-2025", "flood-2026", "other-2025", "other-2026", "writer")}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    env = {"MCP_RATE_LIMIT_READ": "1/h:8", "MCP_RATE_LIMIT_WRITE": "1/h:3"}  # nothing refills during the test
    with dev_server(tmp_path_factory.mktemp("limited") / "notes.db", env=env, extra_clients=CLIENTS) as srv:
        yield srv


@pytest.mark.parametrize("framing", ["2025", "2026"])
def test_one_instance_refuses_the_flooder_and_serves_the_other_client(limited: DevServer, framing: str) -> None:
    modern = framing == "2026"
    flooder, other = limited.token(f"flood-{framing}"), limited.token(f"other-{framing}")
    flooder_statuses, other_statuses = [], []
    for n in range(20):
        response = _post(limited.mcp_url, flooder, "whoami", {}, modern=modern, request_id=n)
        flooder_statuses.append(response.status_code)
        if response.status_code == 429:
            _assert_429(response, n, "read")
        else:
            assert response.json()["result"]["structuredContent"]["client_id"] == f"flood-{framing}"
        if n % 4 == 0:
            other_statuses.append(_post(limited.mcp_url, other, "list_notes", {}, modern=modern).status_code)
    assert flooder_statuses == [200] * 8 + [429] * 12
    assert other_statuses == [200] * 5


def test_one_instance_limits_writes_apart_from_reads(limited: DevServer) -> None:
    writer = limited.token("writer")
    statuses = [_post(limited.mcp_url, writer, "create_note", {"title": f"w{n}"}, modern=bool(n % 2),
                      request_id=n).status_code for n in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    _assert_429(_post(limited.mcp_url, writer, "delete_note", {"note_id": 1}, modern=False, request_id=7), 7,
                "write")
    assert [_post(limited.mcp_url, writer, "get_note", {"note_id": 1}, modern=False).status_code
            for _ in range(8)] == [200] * 8  # reads have their own bucket
    _assert_429(_post(limited.mcp_url, writer, "list_notes", {}, modern=True, request_id=9), 9, "read")


# -- three instances, one PostgreSQL ---------------------------------------------------------------


@contextlib.contextmanager
def limited_cluster(postgres: PostgresServer, idp: IdP, folder: Path, db: str, **extra: str) -> Iterator[Cluster]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        "HOST": "127.0.0.1",
        "MCP_AUTH_ISSUER": idp.issuer,
        "MCP_AUTH_AUDIENCE": "mcp-client",
        "MCP_RESOURCE_URL": "https://notes.example/mcp",
        "MCP_NOTES_DB": postgres.url(db),
        "MCP_NOTES_DB_TIMEOUT": "2",
        "MCP_WORKERS": "1",
        **extra,
    }
    made = Cluster(env, [Instance(free_port(), folder / f"instance-{i}.log") for i in range(3)])
    try:
        for instance in made.instances:
            made.start(instance)
        for instance in made.instances:
            made.wait_healthy(instance)
        yield made
    finally:
        made.stop_all()
    logs = "".join(i.log.read_text(errors="replace") for i in made.instances)
    assert "Traceback" not in logs, logs[-4000:]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with running_idp() as server:
        yield server


WRITE_LIMIT = "1/h:6"  # lease size 1: every write is one statement, so the count is exact
READ_LIMIT = "20/s:100"  # lease size 4: bounded over-admission


async def test_three_instances_share_one_budget_per_client(postgres: PostgresServer, idp: IdP,
                                                           tmp_path: Path) -> None:
    db = postgres.new_database()
    with limited_cluster(postgres, idp, tmp_path, db, MCP_RATE_LIMIT_WRITE=WRITE_LIMIT,
                         MCP_RATE_LIMIT_READ=READ_LIMIT) as three:
        urls = [i.mcp_url for i in three.instances]
        flooder, other = idp.mint(azp="flooder", sub="flooder"), idp.mint(azp="other", sub="other")
        async with httpx.AsyncClient(timeout=20) as http:

            async def call(url: str, token: str, name: str, args: dict[str, Any], n: int) -> httpx.Response:
                modern = bool(n % 2)
                headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                           "Authorization": f"Bearer {token}", **(modern_headers(name) if modern else LEGACY_HEADERS)}
                return await http.post(url, json=tool_call(name, args, modern=modern, id=n), headers=headers)

            # Writes: 30 by the flooder, round robin, 10 at a time; 6 admitted in all.
            writes: list[httpx.Response] = []
            for start in range(0, 30, 10):
                writes += await asyncio.gather(*(call(urls[n % 3], flooder, "create_note", {"title": f"f{n}"}, n)
                                                 for n in range(start, start + 10)))
            assert sum(r.status_code == 200 for r in writes) == 6
            for n, response in enumerate(writes):
                if response.status_code != 200:
                    _assert_429(response, n, "write")
            # ... while the other client's writes, on every instance, all go through.
            others = [await call(urls[n % 3], other, "create_note", {"title": f"o{n}"}, n) for n in range(6)]
            assert [r.status_code for r in others] == [200] * 6
            assert all(r.json()["result"]["isError"] is False for r in others)

            # Reads: the flooder's write budget is spent, its reads are not.
            started = time.monotonic()
            reads: list[httpx.Response] = []
            for start in range(0, 240, 20):
                reads += await asyncio.gather(*(call(urls[n % 3], flooder, "whoami", {}, n)
                                                for n in range(start, start + 20)))
            elapsed = time.monotonic() - started
            admitted = sum(r.status_code == 200 for r in reads)
            rate = Rate(20, 100)
            bound = rate.burst + rate.per_second * (elapsed + 1) + 3 * (lease_size(rate) - 1)
            assert rate.burst - 3 * lease_size(rate) <= admitted <= bound, (admitted, elapsed)
            assert {r.status_code for r in reads} == {200, 429}
            assert [(await call(u, other, "whoami", {}, n)).status_code for n, u in enumerate(urls * 2)] == [200] * 6

    with psycopg.connect(postgres.url(db), connect_timeout=10) as conn:
        rows = conn.execute("SELECT count(*) FROM mcp_rate_buckets").fetchone()
    assert rows is not None and rows[0] == 4  # flooder and other, reads and writes: digests, no client ids
    with psycopg.connect(postgres.url(db), connect_timeout=10) as conn:
        keys = [r[0] for r in conn.execute("SELECT bucket FROM mcp_rate_buckets").fetchall()]
    assert all(len(k) == 64 and "flooder" not in k for k in keys)
