"""Issue 15 item 3: ``GET /ready`` during a database outage costs one ping, however many probes wait.

A real server (uvicorn on 127.0.0.1) on the real PostgreSQL, which is stopped: each ping then
takes the whole store timeout (1 s here). The answer used to be stamped when its ping *started*,
so every waiting probe found it stale and pinged again in turn: 12 probes took 1, 2, ... 12 s
and wrote 12 log lines. Now they share one ping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest

from tests._postgres import PostgresServer

from .conftest import dev_server

pytestmark = pytest.mark.timeout(120)

PROBES = 12
TIMEOUT_S = 1.0


async def test_concurrent_probes_during_an_outage_share_one_ping_and_one_log_line(
    postgres: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"MCP_NOTES_DB": postgres.url(postgres.new_database()), "MCP_NOTES_DB_TIMEOUT": str(TIMEOUT_S)}
    with dev_server(tmp_path / "unused.db", env=env) as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=60) as http:
            assert (await http.get("/ready")).status_code == 200
            postgres.stop()
            try:
                await asyncio.sleep(1.1)  # the last answer ("ready") is no longer fresh
                caplog.clear()
                caplog.set_level(logging.WARNING, logger="tools.store")
                started = time.monotonic()

                async def probe() -> tuple[int, float]:
                    response = await http.get("/ready")
                    return response.status_code, time.monotonic() - started

                answers = await asyncio.gather(*(probe() for _ in range(PROBES)))
                pinged = [r.getMessage() for r in caplog.records if r.name == "tools.store"]
            finally:
                postgres.start()
            assert [status for status, _ in answers] == [503] * PROBES
            slowest = max(took for _, took in answers)
            assert slowest < 4 * TIMEOUT_S, answers  # one ping's time (plus a loaded machine's margin), not 12
            assert len(pinged) == 1 and pinged[0].startswith("notes store unavailable"), pinged
            deadline = time.monotonic() + 30
            while (await http.get("/ready")).status_code != 200:  # and it recovers by itself
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
