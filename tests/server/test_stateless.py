"""Stateless serving: any instance answers any request, and the notes live only in the shared file.

Two instances in one process share one SQLite file and trust one issuer (instance A's, whose
keys instance B fetches over HTTP), like two Cloud Foundry instances behind the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests._live import running_server

from .conftest import MODES, DevServer, build_dev_app, dev_server, mcp_client

pytestmark = pytest.mark.timeout(60)


@dataclass
class Pair:
    a: DevServer
    b: DevServer


@contextlib.contextmanager
def two_instances(db: Path) -> Iterator[Pair]:
    """Instance A mounts the issuer; instance B trusts it and serves the same notes file."""
    with dev_server(db) as a:
        built: list[DevServer] = []

        def factory(base_url: str):
            built.append(build_dev_app(base_url, db, issuer=a.issuer, mount_issuer=False))
            return built[0].app

        with running_server(factory=factory, lifespan="on"):
            yield Pair(a, built[0])


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer without affinity: each request goes to the next instance (Host rewritten)."""

    def __init__(self, *base_urls: str) -> None:
        self._targets = itertools.cycle([httpx2.URL(u) for u in base_urls])
        self._inner = httpx2.AsyncHTTPTransport()
        self.served: list[tuple[int, str]] = []  # (port, JSON-RPC method) per request

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        target = next(self._targets)
        request.url = request.url.copy_with(host=target.host, port=target.port)
        request.headers["host"] = f"{target.host}:{target.port}"
        method = request.headers.get("mcp-method") or ("GET" if request.method == "GET" else "?")
        if method == "?":
            body = request.content
            method = "tools/call" if b'"tools/call"' in body else body[:60].decode(errors="replace")
        self.served.append((target.port, method))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("mode", MODES)
async def test_one_client_alternating_between_instances_sees_one_consistent_store(
    tmp_path: Path, mode: str
) -> None:
    with two_instances(tmp_path / "shared.db") as pair:
        token = pair.a.token("dev-full")
        balancer = RoundRobin(pair.a.base_url, pair.b.base_url)
        async with mcp_client(pair.a.mcp_url, token, mode, transport=balancer) as client:
            created = await client.call_tool("create_note", {"title": "round robin", "body": "v1"})
            assert not created.is_error, created
            note_id = created.structured_content["id"]
            for step in range(6):  # each read lands on the other instance than the write before it
                got = await client.call_tool("get_note", {"note_id": note_id})
                assert not got.is_error, (step, got)
                assert got.structured_content["body"] == f"v{step + 1}"
                updated = await client.call_tool(
                    "update_note", {"note_id": note_id, "title": "round robin", "body": f"v{step + 2}"}
                )
                assert not updated.is_error, (step, updated)
            listed = await client.call_tool("list_notes", {})
            assert [n["id"] for n in listed.structured_content["notes"]] == [note_id]

        ports = [port for port, _ in balancer.served]
        assert all(x != y for x, y in itertools.pairwise(ports)), ports  # strict alternation, no affinity
        calls = {port for port, method in balancer.served if method == "tools/call"}
        assert calls == {httpx2.URL(pair.a.base_url).port, httpx2.URL(pair.b.base_url).port}


@pytest.mark.parametrize("mode", MODES)
async def test_note_created_on_instance_a_is_read_on_instance_b(tmp_path: Path, mode: str) -> None:
    with two_instances(tmp_path / "shared.db") as pair:
        token = pair.a.token("dev-full")  # one token, accepted by both instances
        async with (
            mcp_client(pair.a.mcp_url, token, mode) as on_a,
            mcp_client(pair.b.mcp_url, token, mode) as on_b,
        ):
            created = (await on_a.call_tool("create_note", {"title": "made on A"})).structured_content
            seen = await on_b.call_tool("get_note", {"note_id": created["id"]})
            assert seen.structured_content == created
            deleted = await on_b.call_tool("delete_note", {"note_id": created["id"]})
            assert not deleted.is_error
            gone = await on_a.call_tool("get_note", {"note_id": created["id"]})
            assert gone.is_error


async def test_instance_b_enforces_the_same_permissions(tmp_path: Path) -> None:
    with two_instances(tmp_path / "shared.db") as pair:
        async with mcp_client(pair.b.mcp_url, pair.a.token("dev-read"), "2026-07-28") as client:
            assert {t.name for t in (await client.list_tools()).tools} == {
                "whoami", "list_notes", "search_notes", "get_note"}
            with pytest.raises(MCPError):
                await client.call_tool("create_note", {"title": "nope"})
            assert (await client.call_tool("list_notes", {})).structured_content == {"notes": []}


@pytest.mark.parametrize("mode", MODES)
async def test_notes_survive_a_server_restart(tmp_path: Path, mode: str) -> None:
    db = tmp_path / "notes.db"
    with dev_server(db) as first:
        async with mcp_client(first.mcp_url, first.token("dev-full"), mode) as client:
            made = await client.call_tool("create_note", {"title": "kept", "body": "across restarts"})
            kept = made.structured_content
            dropped = (await client.call_tool("create_note", {"title": "dropped"})).structured_content
            await client.call_tool("delete_note", {"note_id": dropped["id"]})
        first_url = first.base_url
    with dev_server(db) as second:  # a new process-equivalent: new port, new issuer key, same file
        assert second.base_url != first_url
        async with mcp_client(second.mcp_url, second.token("dev-read"), mode) as client:
            assert (await client.call_tool("get_note", {"note_id": kept["id"]})).structured_content == kept
            assert (await client.call_tool("get_note", {"note_id": dropped["id"]})).is_error
            listed = (await client.call_tool("list_notes", {})).structured_content["notes"]
            assert [n["id"] for n in listed] == [kept["id"]]


async def test_concurrent_writes_from_four_clients_on_two_instances_lose_nothing(tmp_path: Path) -> None:
    clients, per_client = 4, 25
    with two_instances(tmp_path / "shared.db") as pair:
        token = pair.a.token("dev-full")

        async def writer(index: int) -> list[int]:
            target = (pair.a, pair.b)[index % 2]
            mode = MODES[(index // 2) % 2]
            async with mcp_client(target.mcp_url, token, mode) as client:
                results = await asyncio.gather(*(
                    client.call_tool("create_note", {"title": f"w{index}-{n}"}) for n in range(per_client)
                ))
            assert not any(r.is_error for r in results), [r for r in results if r.is_error][:1]
            return [r.structured_content["id"] for r in results]

        ids = [i for batch in await asyncio.gather(*(writer(i) for i in range(clients))) for i in batch]
        assert len(ids) == len(set(ids)) == clients * per_client

        async with mcp_client(pair.b.mcp_url, token, "legacy") as reader:
            notes = (await reader.call_tool("list_notes", {"limit": 100})).structured_content["notes"]
        assert len(notes) == clients * per_client
        assert {n["title"] for n in notes} == {f"w{i}-{n}" for i in range(clients) for n in range(per_client)}
        assert {n["id"] for n in notes} == set(ids)
