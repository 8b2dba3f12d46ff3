"""Issue 15 item 2: notes are kept apart by tenant, through a real uvicorn server on 127.0.0.1.

The server runs in IAS multi-tenant mode (trusted domain ``accounts.idp.test``), its verifier
reaching every tenant's keys over real HTTP (`tests._idp.TenantRouting`); tokens are real JWTs
signed by the local IdP. Four tenants: two IAS tenants (issuers ``alpha`` and ``beta``), each with
two application tenants (``app_tid``), so a key that left out the issuer or the tenant would mix
two of them. Every tool is called by each tenant on the others' note ids, on SQLite and on PostgreSQL.
Then the migration: a database written by 0.2.0 (schema 1) keeps its notes in single-tenant mode.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from auth import JWTVerifier
from server import create_app
from server._settings import load_server_settings
from tests._idp import IdP, TenantRouting, running_idp
from tests._live import running_server
from tests._notes_v1 import V1_CLIENT, create_postgres_v1, create_sqlite_v1
from tests._postgres import PostgresServer

from .conftest import JSON_HEADERS, LEGACY_HEADERS, tool_call

pytestmark = pytest.mark.timeout(120)

BACKENDS = ("sqlite", "postgres")
TID_1, TID_2 = "11111111-aaaa-4000-8000-000000000001", "22222222-bbbb-4000-8000-000000000002"


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with running_idp() as server:
        server.tenants.update({"alpha", "beta"})
        yield server


def _notes_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "notes.db")
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.url(pg.new_database())


@pytest.fixture(params=BACKENDS)
def notes_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _notes_db(request, tmp_path)


def _app(base_url: str, idp: IdP, notes_db: str, *, multi_tenant: bool) -> Any:
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(urlsplit(base_url).port),
        "MCP_AUTH_ISSUER": idp.issuer,
        "MCP_AUTH_AUDIENCE": "mcp-client",
        "MCP_RESOURCE_URL": base_url + "/mcp",
        "MCP_NOTES_DB": notes_db,
        **({"MCP_AUTH_MULTI_TENANT": "true", "MCP_AUTH_IAS_DOMAINS": idp.tenant_domain} if multi_tenant else {}),
    }
    settings = load_server_settings(env)
    assert any(i.domains for i in settings.auth.issuers) is multi_tenant
    verifier = JWTVerifier(settings.auth, client=httpx.AsyncClient(transport=TenantRouting(idp), timeout=10))
    return create_app(settings, verifier=verifier)


class Caller:
    """One client of one tenant, calling tools over HTTP with its own IdP-signed token."""

    def __init__(self, base_url: str, idp: IdP, *, issuer: str, tenant: str | None, client: str) -> None:
        self.base_url, self.client = base_url, client
        self.token = idp.mint(iss=issuer, app_tid=tenant, azp=client, sub=client)

    def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        response = httpx.post(self.base_url + "/mcp", json=tool_call(tool, arguments, modern=False), timeout=20,
                              headers={**JSON_HEADERS, **LEGACY_HEADERS, "Authorization": f"Bearer {self.token}"})
        assert response.status_code == 200, response.text
        return response.json()["result"]

    def ok(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = self.call(tool, **arguments)
        assert not result.get("isError"), result
        return result["structuredContent"]

    def error(self, tool: str, **arguments: Any) -> str:
        result = self.call(tool, **arguments)
        assert result.get("isError") is True, result
        return result["content"][0]["text"]

    def titles(self, marker: str) -> set[str]:
        listed = {n["title"] for n in self.ok("list_notes", limit=100)["notes"] if marker in n["title"]}
        found = {n["title"] for n in self.ok("search_notes", query=marker, limit=100)["notes"]}
        assert listed == found
        return found


def _missing(caller: Caller, note_id: int) -> dict[str, str]:
    """What each id-taking tool answers for ``note_id``: the error text, or the note when it exists."""
    return {
        "get_note": caller.error("get_note", note_id=note_id),
        "update_note": caller.error("update_note", note_id=note_id, title="taken over", body="by another tenant"),
        "delete_note": caller.error("delete_note", note_id=note_id),
    }


@pytest.fixture
def multi(idp: IdP, notes_db: str) -> Iterator[str]:
    with running_server(factory=lambda url: _app(url, idp, notes_db, multi_tenant=True), lifespan="on") as url:
        yield url


def test_each_tenant_sees_and_changes_only_its_own_notes(multi: str, idp: IdP) -> None:
    alpha, beta = idp.tenant_issuer("alpha"), idp.tenant_issuer("beta")
    tenants = {
        "alpha/1": Caller(multi, idp, issuer=alpha, tenant=TID_1, client="client-a1"),
        "alpha/2": Caller(multi, idp, issuer=alpha, tenant=TID_2, client="client-a2"),  # same IAS tenant
        "beta/1": Caller(multi, idp, issuer=beta, tenant=TID_1, client="client-b1"),  # same app_tid, other issuer
        "beta/none": Caller(multi, idp, issuer=beta, tenant=None, client="client-b0"),  # no tenant claim
    }
    marker = uuid.uuid4().hex[:10]
    notes = {name: c.ok("create_note", title=f"{marker} {name}", body=f"secret of {name}")
             for name, c in tenants.items()}
    assert len({n["id"] for n in notes.values()}) == 4
    never_used = max(n["id"] for n in notes.values()) + 1000

    for name, caller in tenants.items():
        assert caller.titles(marker) == {f"{marker} {name}"}  # list and search: its own note only
        assert caller.ok("get_note", note_id=notes[name]["id"])["body"] == f"secret of {name}"
        for other, note in notes.items():
            if other == name:
                continue
            # Another tenant's id answers exactly as an id never used does: no oracle.
            expected = {tool: text.replace(str(never_used), str(note["id"]))
                        for tool, text in _missing(caller, never_used).items()}
            assert _missing(caller, note["id"]) == expected
            assert expected["get_note"] == f"Error executing tool get_note: note {note['id']} does not exist"
            assert caller.ok("search_notes", query=f"secret of {other}")["notes"] == []

    for name, caller in tenants.items():  # nothing was changed or deleted by the others' attempts
        assert caller.ok("get_note", note_id=notes[name]["id"]) == notes[name]

    # A second client of the same tenant shares its notes (the tenant owns them, not the client).
    colleague = Caller(multi, idp, issuer=alpha, tenant=TID_1, client="client-a1-colleague")
    assert colleague.titles(marker) == {f"{marker} alpha/1"}
    updated = colleague.ok("update_note", note_id=notes["alpha/1"]["id"], title=f"{marker} alpha/1 v2", body="v2")
    assert (updated["created_by"], updated["updated_by"]) == ("client-a1", "client-a1-colleague")
    assert tenants["alpha/2"].titles(marker) == {f"{marker} alpha/2"}
    assert colleague.ok("delete_note", note_id=notes["alpha/1"]["id"])["title"] == f"{marker} alpha/1 v2"
    assert tenants["alpha/1"].titles(marker) == set()
    assert tenants["beta/1"].titles(marker) == {f"{marker} beta/1"}


def test_a_single_tenant_server_keeps_one_set_of_notes_for_every_caller(idp: IdP, notes_db: str) -> None:
    with running_server(factory=lambda url: _app(url, idp, notes_db, multi_tenant=False), lifespan="on") as url:
        first = Caller(url, idp, issuer=idp.issuer, tenant=TID_1, client="client-1")
        second = Caller(url, idp, issuer=idp.issuer, tenant=TID_2, client="client-2")
        marker = uuid.uuid4().hex[:10]
        note = first.ok("create_note", title=f"{marker} shared")
        assert second.titles(marker) == {f"{marker} shared"}
        assert second.ok("update_note", note_id=note["id"], title=f"{marker} shared", body="v2")["body"] == "v2"
        assert first.ok("get_note", note_id=note["id"])["updated_by"] == "client-2"


# -- migration from schema 1 (release 0.2.0) -------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def v1_db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """A schema-1 database with two live notes and a deleted one; and a query function to look inside."""
    titles, deleted = ["kept from 0.2", "also kept"], ["deleted in 0.2"]
    if request.param == "sqlite":
        path = create_sqlite_v1(tmp_path / "notes.db", titles, deleted=deleted)

        def sqlite_query(sql: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as conn:
                return conn.execute(sql).fetchall()

        return str(path), sqlite_query
    pg: PostgresServer = request.getfixturevalue("postgres")
    dbname = create_postgres_v1(pg, pg.new_database(), titles, deleted=deleted)

    def pg_query(sql: str) -> list[tuple[Any, ...]]:
        with pg.admin(dbname) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]

    return pg.url(dbname), pg_query


def test_a_schema_1_database_is_migrated_and_its_notes_stay_visible_in_single_tenant_mode(
    idp: IdP, v1_db: tuple[str, Any]
) -> None:
    notes_db, query = v1_db
    with running_server(factory=lambda url: _app(url, idp, notes_db, multi_tenant=False), lifespan="on") as url:
        caller = Caller(url, idp, issuer=idp.issuer, tenant=TID_1, client="client-1")
        listed = caller.ok("list_notes")["notes"]
        assert [(n["id"], n["title"], n["created_by"]) for n in listed] == [(2, "also kept", V1_CLIENT),
                                                                             (1, "kept from 0.2", V1_CLIENT)]
        assert [n["id"] for n in caller.ok("search_notes", query="KEPT")["notes"]] == [2, 1]
        assert caller.ok("get_note", note_id=1)["body"] == "kept from 0.2 body"
        assert caller.error("get_note", note_id=3).endswith(": note 3 does not exist")  # deleted in 0.2: still
        assert caller.ok("update_note", note_id=1, title="kept from 0.2", body="edited")["updated_by"] == "client-1"
        assert caller.ok("create_note", title="new")["id"] == 4  # ids go on where they were
    assert query("SELECT tenant_issuer, tenant_id, count(*) FROM notes GROUP BY 1, 2") == [("", "", 4)]
    # And a multi-tenant server on the same database: the old notes belong to no tenant of it.
    with running_server(factory=lambda url: _app(url, idp, notes_db, multi_tenant=True), lifespan="on") as url:
        tenant = Caller(url, idp, issuer=idp.tenant_issuer("alpha"), tenant=TID_1, client="client-a1")
        assert tenant.ok("list_notes")["notes"] == []
        assert tenant.error("get_note", note_id=1).endswith(": note 1 does not exist")
