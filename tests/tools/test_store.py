"""The store suite, run against both back ends (SQLite and a real PostgreSQL): input limits, unknown
ids, LIKE escaping, cross-instance reads, atomic concurrent writes; then SQLite's file handling.

Every message a model can see is the same on both back ends, so the same assertions hold.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from server._settings import parse_postgres_url
from tests._notes_v1 import V1_CLIENT, create_postgres_v1, create_sqlite_v1
from tests._postgres import PostgresServer
from tools import SINGLE_TENANT, NotesStore, PostgresStore, Readiness, SQLiteStore, TenantKey, open_store
from tools._store import BODY_MAX, LIMIT_MAX, QUERY_MAX, TITLE_MAX, Note, NoteError, SQLiteNotes

T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
BACKENDS = ("sqlite", "postgres")


class StepClock:
    """Advances one second per reading, so timestamps differ without sleeping."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@dataclass
class Raw:
    """Looks under the store, at what it wrote (rows a store hides, like deleted ones)."""

    query: Callable[[str, tuple[object, ...]], list[tuple[object, ...]]]
    new_store: Callable[[], NotesStore]  # a second, independent store on the same database ("another instance")

    def count_rows(self) -> int:
        return int(self.query("SELECT count(*) FROM notes", ())[0][0])

    def deleted_by(self, note_id: int) -> object:
        return self.query("SELECT deleted_by FROM notes WHERE id = %s", (note_id,))[0][0]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Callable[[], NotesStore], Raw]:
    if request.param == "sqlite":
        path = tmp_path / "notes.db"

        def sqlite_query(sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
            with sqlite3.connect(path) as conn:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()

        def make_sqlite() -> NotesStore:
            return SQLiteStore(path, clock=StepClock())

        return make_sqlite, Raw(sqlite_query, make_sqlite)
    pg: PostgresServer = request.getfixturevalue("postgres")
    dbname = pg.new_database()
    config = parse_postgres_url(pg.url(dbname), "MCP_NOTES_DB")

    def pg_query(sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        with pg.admin(dbname) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def make_pg() -> NotesStore:
        return PostgresStore(config, timeout=10, clock=StepClock())

    return make_pg, Raw(pg_query, make_pg)


@pytest.fixture
async def store(backend: tuple[Callable[[], NotesStore], Raw]) -> AsyncIterator[NotesStore]:
    made = backend[0]()
    await made.open()
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
def raw(backend: tuple[Callable[[], NotesStore], Raw]) -> Raw:
    return backend[1]


# -- limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "message"),
    [
        ("", "title must not be empty"),
        ("   \n\t", "title must not be empty"),
        ("x" * (TITLE_MAX + 1), f"title is longer than {TITLE_MAX} characters"),
        (None, "title must be a string"),
    ],
)
async def test_create_rejects_bad_title(store: NotesStore, title: object, message: str) -> None:
    with pytest.raises(NoteError, match=f"^{message}$"):
        await store.create(SINGLE_TENANT, title, "", "app")  # type: ignore[arg-type]
    assert await store.list(SINGLE_TENANT, LIMIT_MAX) == []


async def test_title_limit_counts_characters_after_stripping(store: NotesStore) -> None:
    note = await store.create(SINGLE_TENANT, "  " + "é" * TITLE_MAX + "  ", "", "app")
    assert note.title == "é" * TITLE_MAX


async def test_body_may_be_empty_or_exactly_the_maximum(store: NotesStore) -> None:
    assert (await store.create(SINGLE_TENANT, "a", "", "app")).body == ""
    assert len((await store.create(SINGLE_TENANT, "b", "y" * BODY_MAX, "app")).body) == BODY_MAX


async def test_create_rejects_body_over_the_maximum(store: NotesStore) -> None:
    with pytest.raises(NoteError, match=f"body is longer than {BODY_MAX} characters"):
        await store.create(SINGLE_TENANT, "t", "y" * (BODY_MAX + 1), "app")


async def test_update_applies_the_same_limits_as_create(store: NotesStore) -> None:
    note = await store.create(SINGLE_TENANT, "t", "b", "app")
    with pytest.raises(NoteError, match="title must not be empty"):
        await store.update(SINGLE_TENANT, note.id, " ", "b", "app")
    with pytest.raises(NoteError, match="body is longer than"):
        await store.update(SINGLE_TENANT, note.id, "t", "y" * (BODY_MAX + 1), "app")
    assert await store.get(SINGLE_TENANT, note.id) == note


@pytest.mark.parametrize("limit", [0, -1, LIMIT_MAX + 1, True, 2.0, "5"])
async def test_list_and_search_reject_limit_out_of_range(store: NotesStore, limit: object) -> None:
    with pytest.raises(NoteError, match=f"limit must be an integer from 1 to {LIMIT_MAX}"):
        await store.list(SINGLE_TENANT, limit)  # type: ignore[arg-type]
    with pytest.raises(NoteError, match="limit must be"):
        await store.search(SINGLE_TENANT, "x", limit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "message"),
    [("", "query must not be empty"), ("  ", "query must not be empty"), ("q" * (QUERY_MAX + 1), "query is longer")],
)
async def test_search_rejects_bad_query(store: NotesStore, query: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        await store.search(SINGLE_TENANT, query, 10)


async def test_writes_reject_an_empty_client_id(store: NotesStore) -> None:
    with pytest.raises(NoteError, match="client id must not be empty"):
        await store.create(SINGLE_TENANT, "t", "", "")


async def test_limit_caps_the_number_of_results(store: NotesStore) -> None:
    for i in range(5):
        await store.create(SINGLE_TENANT, f"note {i}", "", "app")
    assert len(await store.list(SINGLE_TENANT, 3)) == 3
    assert len(await store.search(SINGLE_TENANT, "note", 2)) == 2
    assert len(await store.list(SINGLE_TENANT, LIMIT_MAX)) == 5


# -- unknown ids ---------------------------------------------------------------------------


async def test_get_of_unknown_id_names_the_id(store: NotesStore) -> None:
    with pytest.raises(NoteError, match="^note 42 does not exist$"):
        await store.get(SINGLE_TENANT, 42)


async def test_update_of_unknown_id_fails_and_creates_nothing(store: NotesStore, raw: Raw) -> None:
    with pytest.raises(NoteError, match="^note 42 does not exist$"):
        await store.update(SINGLE_TENANT, 42, "t", "b", "app")
    assert raw.count_rows() == 0


async def test_delete_of_unknown_id_returns_none(store: NotesStore) -> None:
    assert await store.delete(SINGLE_TENANT, 42, "app") is None


@pytest.mark.parametrize("bad_id", ["1", 1.0, True, None])
async def test_non_integer_ids_are_refused(store: NotesStore, bad_id: object) -> None:
    with pytest.raises(NoteError, match="note id must be an integer"):
        await store.get(SINGLE_TENANT, bad_id)  # type: ignore[arg-type]


# -- behaviour of each operation -----------------------------------------------------------


async def test_create_records_the_client_and_utc_timestamps(store: NotesStore) -> None:
    note = await store.create(SINGLE_TENANT, "Title", "Body", "client-a")
    assert note == Note(
        id=note.id,
        title="Title",
        body="Body",
        created_by="client-a",
        updated_by="client-a",
        created_at="2025-01-31T12:00:01+00:00",
        updated_at="2025-01-31T12:00:01+00:00",
    )
    assert await store.get(SINGLE_TENANT, note.id) == note


async def test_update_records_the_updating_client_and_keeps_the_creator(store: NotesStore) -> None:
    created = await store.create(SINGLE_TENANT, "old", "old body", "client-a")
    updated = await store.update(SINGLE_TENANT, created.id, " new ", "new body", "client-b")
    assert (updated.title, updated.body) == ("new", "new body")
    assert (updated.created_by, updated.updated_by) == ("client-a", "client-b")
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert await store.get(SINGLE_TENANT, created.id) == updated


async def test_delete_returns_the_note_hides_it_and_records_who_deleted_it(store: NotesStore, raw: Raw) -> None:
    note = await store.create(SINGLE_TENANT, "gone", "", "client-a")
    assert await store.delete(SINGLE_TENANT, note.id, "client-b") == note
    with pytest.raises(NoteError, match=f"note {note.id} does not exist"):
        await store.get(SINGLE_TENANT, note.id)
    assert await store.list(SINGLE_TENANT, LIMIT_MAX) == [] and await store.search(SINGLE_TENANT, "gone", 10) == []
    assert await store.delete(SINGLE_TENANT, note.id, "client-b") is None  # a retried delete is harmless
    assert raw.deleted_by(note.id) == "client-b"


async def test_ids_of_deleted_notes_are_not_reused(store: NotesStore) -> None:
    first = await store.create(SINGLE_TENANT, "a", "", "app")
    await store.delete(SINGLE_TENANT, first.id, "app")
    assert (await store.create(SINGLE_TENANT, "b", "", "app")).id > first.id


async def test_list_returns_newest_first(store: NotesStore) -> None:
    ids = [(await store.create(SINGLE_TENANT, f"n{i}", "", "app")).id for i in range(4)]
    assert [n.id for n in await store.list(SINGLE_TENANT, 10)] == ids[::-1]


# -- search --------------------------------------------------------------------------------


async def test_search_matches_title_or_body_case_insensitively(store: NotesStore) -> None:
    in_title = await store.create(SINGLE_TENANT, "Hello World", "", "app")
    in_body = await store.create(SINGLE_TENANT, "other", "say HELLO", "app")
    await store.create(SINGLE_TENANT, "unrelated", "nothing", "app")
    assert [n.id for n in await store.search(SINGLE_TENANT, "hello", 10)] == [in_body.id, in_title.id]


async def test_search_folds_non_ascii_case(store: NotesStore) -> None:
    # SQLite's own LIKE folds ASCII only; these would be missed without casefold.
    umlaut = await store.create(SINGLE_TENANT, "Äpfel kaufen", "", "app")
    sharp_s = await store.create(SINGLE_TENANT, "Straße", "", "app")
    assert await store.search(SINGLE_TENANT, "äPFEL", 10) == [umlaut]
    assert await store.search(SINGLE_TENANT, "STRASSE", 10) == [sharp_s]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("%", "100% done"), ("_", "a_b"), ("\\", "back\\slash"), ("0%", "100% done"), ("a_", "a_b")],
)
async def test_search_treats_like_wildcards_literally(store: NotesStore, query: str, expected: str) -> None:
    for title in ("100% done", "100 percent", "a_b", "axb", "back\\slash", "backslash"):
        await store.create(SINGLE_TENANT, title, "", "app")
    assert [n.title for n in await store.search(SINGLE_TENANT, query, 10)] == [expected]


# -- several instances on one database ---------------------------------------------------------


async def test_a_note_written_through_one_store_is_read_through_another_at_once(raw: Raw) -> None:
    a, b = raw.new_store(), raw.new_store()
    await a.open()
    await b.open()
    try:
        note = await a.create(SINGLE_TENANT, "shared", "body", "client-a")
        assert await b.get(SINGLE_TENANT, note.id) == note
        assert await b.search(SINGLE_TENANT, "SHARED", 10) == [note]
        updated = await b.update(SINGLE_TENANT, note.id, "shared v2", "body 2", "client-b")
        assert await a.get(SINGLE_TENANT, note.id) == updated
        assert (updated.created_by, updated.updated_by) == ("client-a", "client-b")
        assert await a.delete(SINGLE_TENANT, note.id, "client-a") == updated
        assert await b.delete(SINGLE_TENANT, note.id, "client-b") is None  # idempotent across instances
        assert await b.list(SINGLE_TENANT, 10) == []
    finally:
        await a.aclose()
        await b.aclose()


async def test_concurrent_creates_through_several_stores_get_unique_ids(raw: Raw) -> None:
    stores = [raw.new_store() for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        async def burst(i: int, s: NotesStore) -> list[int]:
            return [(await s.create(SINGLE_TENANT, f"s{i}-{n}", "", f"client-{i}")).id for n in range(40)]

        batches = await asyncio.gather(*(burst(i, s) for i, s in enumerate(stores)))
    finally:
        for s in stores:
            await s.aclose()
    ids = [i for batch in batches for i in batch]
    assert len(ids) == len(set(ids)) == 120
    assert raw.count_rows() == 120


async def test_concurrent_updates_of_one_note_leave_exactly_one_written_version(raw: Raw) -> None:
    stores = [raw.new_store() for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        note = await stores[0].create(SINGLE_TENANT, "v0", "v0", "client-0")
        # Each writer writes a title and body that belong together; a mix would show as a mismatch.
        versions = {f"title {i}": (f"body {i} " + "x" * 2000, f"client-{i}") for i in range(30)}
        await asyncio.gather(*(
            stores[i % 3].update(SINGLE_TENANT, note.id, title, body, client)
            for i, (title, (body, client)) in enumerate(versions.items())
        ))
        final = await stores[1].get(SINGLE_TENANT, note.id)
    finally:
        for s in stores:
            await s.aclose()
    assert final.title in versions
    assert (final.body, final.updated_by) == versions[final.title]
    assert final.created_by == "client-0"
    assert raw.count_rows() == 1


# -- SQLite: persistence and file handling ---------------------------------------------------------


def test_store_creates_missing_parent_folders_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "notes.db"
    SQLiteNotes(path)
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_notes_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    note = SQLiteNotes(path).create(SINGLE_TENANT, "kept", "body", "app")
    reopened = SQLiteNotes(path)
    assert reopened.get(SINGLE_TENANT, note.id) == note
    assert reopened.create(SINGLE_TENANT, "next", "", "app").id == note.id + 1


def test_switch_to_wal_retries_while_another_writer_holds_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pending write on a rollback-journal file makes `PRAGMA journal_mode = WAL` fail with
    # SQLITE_BUSY at once, ignoring busy_timeout; the store must wait it out, not crash.
    path = tmp_path / "notes.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE unrelated (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO unrelated VALUES (1)")
    waits: list[float] = []

    def finish_other_writer(seconds: float) -> None:  # stands in for the retry's sleep
        waits.append(seconds)
        other.execute("COMMIT")

    monkeypatch.setattr("tools._store.time.sleep", finish_other_writer)
    try:
        store = SQLiteNotes(path)
    finally:
        other.close()
    assert len(waits) == 1
    assert store.create(SINGLE_TENANT, "after the wait", "", "app").id == 1


def test_store_refuses_a_file_from_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    SQLiteNotes(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99"):
        SQLiteNotes(path)


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_creates_from_many_threads_lose_nothing(tmp_path: Path) -> None:
    store = SQLiteNotes(tmp_path / "notes.db")
    threads, per_thread = 8, 50

    def work(worker: int) -> list[int]:
        return [store.create(SINGLE_TENANT, f"t{worker}-{i}", "", f"thread-{worker}").id for i in range(per_thread)]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        ids = [i for batch in pool.map(work, range(threads)) for i in batch]

    assert len(set(ids)) == threads * per_thread
    assert _count_rows(store.path) == threads * per_thread


def _create_in_process(path: str, worker: int, count: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    # Both processes open the (new) file at the same moment: schema creation races too.
    barrier.wait(timeout=60)
    store = SQLiteNotes(Path(path))
    for i in range(count):
        store.create(SINGLE_TENANT, f"p{worker}-{i}", "", f"proc-{worker}")


def test_concurrent_creates_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "notes.db"
    ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads and locks
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_create_in_process, args=(str(path), w, 50, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    assert [p.exitcode for p in procs] == [0, 0]

    with sqlite3.connect(path) as conn:
        per_client = dict(conn.execute("SELECT created_by, count(*) FROM notes GROUP BY created_by"))
        distinct_ids = conn.execute("SELECT count(DISTINCT id) FROM notes").fetchone()[0]
    assert per_client == {"proc-0": 50, "proc-1": 50}
    assert distinct_ids == 100


def _count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM notes").fetchone()[0]


def test_open_store_picks_sqlite_for_a_path(tmp_path: Path) -> None:
    store = open_store(tmp_path / "x.db")
    assert isinstance(store, SQLiteStore) and isinstance(store, NotesStore)
    assert (tmp_path / "x.db").is_file()


# -- readiness ---------------------------------------------------------------------------------


class CountingPings(SQLiteStore):
    """A real SQLite store that counts how often it is asked whether it answers."""

    pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        await asyncio.sleep(0.05)  # a ping takes a moment, so the probes below overlap
        return await super().ping()


async def test_readiness_asks_the_store_once_however_many_probes_arrive(tmp_path: Path) -> None:
    store = CountingPings(tmp_path / "notes.db")
    now = [100.0]
    ready = Readiness(store, ttl=1.0, clock=lambda: now[0])
    assert await asyncio.gather(*(ready() for _ in range(50))) == [True] * 50
    assert store.pings == 1
    now[0] += 0.9
    assert await ready() and store.pings == 1  # still fresh
    now[0] += 0.2
    assert await ready() and store.pings == 2  # asked again after the ttl


async def test_readiness_reports_a_store_that_does_not_answer(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "notes.db")
    store.sync.path.unlink()
    store.sync.path.mkdir()  # the file is now a folder: SQLite cannot open it
    assert await Readiness(store)() is False


class SlowPings(SQLiteStore):
    """A store whose ping takes ``seconds`` on an injected clock (as a ping does during an outage)."""

    def __init__(self, path: Path, clock: list[float], seconds: float) -> None:
        super().__init__(path)
        self.clock, self.seconds, self.pings = clock, seconds, 0

    async def ping(self) -> bool:
        self.pings += 1
        await asyncio.sleep(0.02)  # the other probes queue up meanwhile
        self.clock[0] += self.seconds
        return False


async def test_readiness_shares_one_slow_ping_among_every_waiting_probe(tmp_path: Path) -> None:
    # Issue 15 item 3: stamped when the ping started, a 3 s answer was stale for each waiter in turn.
    now = [100.0]
    store = SlowPings(tmp_path / "notes.db", now, seconds=3.0)
    ready = Readiness(store, ttl=1.0, clock=lambda: now[0])
    assert await asyncio.gather(*(ready() for _ in range(12))) == [False] * 12
    assert store.pings == 1 and now[0] == 103.0
    now[0] += 0.9
    assert await ready() is False and store.pings == 1  # fresh for a ttl after the ping ended
    now[0] += 0.2
    assert await ready() is False and store.pings == 2


# -- tenants (issue 15 item 2) -----------------------------------------------------------------------

ALPHA = TenantKey("https://alpha.accounts.example", "tid-1")
ALPHA_2 = TenantKey("https://alpha.accounts.example", "tid-2")  # same issuer, another tenant
BETA = TenantKey("https://beta.accounts.example", "tid-1")  # same tenant id, another issuer


async def test_every_operation_is_scoped_to_the_tenant_and_a_foreign_id_reads_as_missing(
    store: NotesStore, raw: Raw
) -> None:
    mine = await store.create(ALPHA, "alpha plan", "alpha body", "client-a")
    for other in (ALPHA_2, BETA, SINGLE_TENANT):
        assert await store.list(other, LIMIT_MAX) == []
        assert await store.search(other, "alpha", LIMIT_MAX) == []
        for call in (store.get(other, mine.id), store.update(other, mine.id, "taken", "over", "intruder")):
            with pytest.raises(NoteError, match=f"^note {mine.id} does not exist$"):
                await call
        assert await store.delete(other, mine.id, "intruder") is None  # as for an id never used
    assert await store.get(ALPHA, mine.id) == mine
    assert await store.list(ALPHA, LIMIT_MAX) == [mine] and await store.search(ALPHA, "PLAN", 10) == [mine]
    assert raw.deleted_by(mine.id) is None
    theirs = await store.create(BETA, "beta plan", "", "client-b")
    assert await store.list(ALPHA, LIMIT_MAX) == [mine] and await store.list(BETA, LIMIT_MAX) == [theirs]
    assert await store.delete(ALPHA, mine.id, "client-a") == mine
    assert await store.list(BETA, LIMIT_MAX) == [theirs]


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
async def test_a_tenant_key_that_cannot_be_stored_is_refused(store: NotesStore, bad: str) -> None:
    for tenant in (TenantKey(bad, "t"), TenantKey("https://i", bad)):
        with pytest.raises(NoteError, match="^tenant must not contain NUL characters or unpaired surrogates$"):
            await store.list(tenant, 10)


async def test_a_store_call_without_a_tenant_key_is_a_programming_error(store: NotesStore) -> None:
    with pytest.raises(TypeError, match="tenant must be a TenantKey"):
        await store.list(("https://i", "t"), 10)  # type: ignore[arg-type]


def test_sqlite_reads_of_a_tenant_use_the_index_leading_with_the_tenant_key(tmp_path: Path) -> None:
    store = SQLiteNotes(tmp_path / "notes.db")
    store.create(ALPHA, "t", "", "app")
    with sqlite3.connect(store.path) as conn:
        plan = " ".join(str(r[-1]) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM notes WHERE tenant_issuer = ? AND tenant_id = ?"
            " AND deleted_at IS NULL ORDER BY id DESC LIMIT 20", (ALPHA.issuer, ALPHA.tenant)))
        columns = [r[2] for r in conn.execute("PRAGMA index_info(notes_tenant_live)")]
    assert "USING COVERING INDEX notes_tenant_live" in plan or "USING INDEX notes_tenant_live" in plan, plan
    assert "TEMP B-TREE" not in plan  # newest first straight from the index
    assert columns == ["tenant_issuer", "tenant_id", "id"]


async def test_postgres_reads_of_a_tenant_use_the_index_leading_with_the_tenant_key(postgres: PostgresServer) -> None:
    dbname = postgres.new_database()
    store = PostgresStore(parse_postgres_url(postgres.url(dbname), "MCP_NOTES_DB"), timeout=10)
    await store.open()
    await store.aclose()
    with postgres.admin(dbname) as conn:
        # A small tenant's 30 notes first, then a large tenant's 20,000: scanning ids newest first
        # (the primary key) would read them all before finding the small tenant's.
        conn.execute(
            "INSERT INTO notes (tenant_issuer, tenant_id, title, body, title_folded, body_folded, created_by,"
            " updated_by, created_at, updated_at) SELECT CASE WHEN n <= 30 THEN 'https://small' ELSE 'https://big' END,"
            " 'tid', 'x', '', 'x', '', 'a', 'a', now(), now() FROM generate_series(1, 20030) n")
        conn.execute("ANALYZE notes")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id FROM notes WHERE tenant_issuer = 'https://small' AND tenant_id = 'tid'"
            " AND deleted_at IS NULL ORDER BY id DESC LIMIT 20"))
        definition = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'notes_tenant_live'").fetchone()
    assert "notes_tenant_live" in plan and "Seq Scan" not in plan, plan
    assert definition is not None and "(tenant_issuer, tenant_id, id DESC) WHERE (deleted_at IS NULL)" in definition[0]


# -- migration from schema 1 (release 0.2.0) -------------------------------------------------------------


def test_a_schema_1_sqlite_file_is_migrated_and_its_notes_belong_to_the_single_tenant(tmp_path: Path) -> None:
    path = create_sqlite_v1(tmp_path / "notes.db", ["kept", "also kept"], deleted=["gone"])
    store = SQLiteNotes(path)
    assert [(n.id, n.title, n.created_by) for n in store.list(SINGLE_TENANT, 10)] == [(2, "also kept", V1_CLIENT),
                                                                                      (1, "kept", V1_CLIENT)]
    assert store.list(ALPHA, 10) == []
    with pytest.raises(NoteError, match="^note 3 does not exist$"):
        store.get(SINGLE_TENANT, 3)
    assert store.create(SINGLE_TENANT, "new", "", "app").id == 4
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(notes)")}
    assert "notes_tenant_live" in indexes and "notes_live" not in indexes
    assert SQLiteNotes(path).get(SINGLE_TENANT, 1).title == "kept"  # reopening migrates nothing twice


async def test_a_schema_1_postgres_database_is_migrated_and_its_notes_belong_to_the_single_tenant(
    postgres: PostgresServer,
) -> None:
    dbname = create_postgres_v1(postgres, postgres.new_database(), ["kept", "also kept"], deleted=["gone"])
    stores = [PostgresStore(parse_postgres_url(postgres.url(dbname), "MCP_NOTES_DB"), timeout=10) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # three instances upgraded at once: one migrates
    try:
        listed = await stores[1].list(SINGLE_TENANT, 10)
        assert [(n.id, n.title, n.created_by) for n in listed] == [(2, "also kept", V1_CLIENT), (1, "kept", V1_CLIENT)]
        assert await stores[2].search(SINGLE_TENANT, "ALSO", 10) == [listed[0]]
        assert await stores[0].list(ALPHA, 10) == []
        with pytest.raises(NoteError, match="^note 3 does not exist$"):
            await stores[0].get(SINGLE_TENANT, 3)
        assert (await stores[0].create(SINGLE_TENANT, "new", "", "app")).id == 4
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))
    with postgres.admin(dbname) as conn:
        versions = conn.execute("SELECT version FROM notes_schema_version ORDER BY version").fetchall()
        owners = conn.execute("SELECT tenant_issuer, tenant_id, count(*) FROM notes GROUP BY 1, 2").fetchall()
    assert versions == [(1,), (2,)] and owners == [("", "", 4)]


# -- text that cannot be stored (issue 15 item 5) ------------------------------------------------------


@pytest.mark.parametrize("bad", ["nul \x00 inside", "lone \ud800 high", "lone \udfff low", "\x00"])
async def test_nul_and_lone_surrogates_are_refused_alike_on_both_back_ends(store: NotesStore, raw: Raw,
                                                                           bad: str) -> None:
    note = await store.create(SINGLE_TENANT, "fine", "fine", "app")
    checks = [
        (store.create(SINGLE_TENANT, bad, "", "app"), "title"),
        (store.create(SINGLE_TENANT, "t", bad, "app"), "body"),
        (store.update(SINGLE_TENANT, note.id, bad, "", "app"), "title"),
        (store.update(SINGLE_TENANT, note.id, "t", bad, "app"), "body"),
        (store.search(SINGLE_TENANT, bad, 10), "query"),
        (store.create(SINGLE_TENANT, "t", "", bad), "client id"),
    ]
    for call, field in checks:
        with pytest.raises(NoteError, match=f"^{field} must not contain NUL characters or unpaired surrogates$"):
            await call
    assert raw.count_rows() == 1 and await store.get(SINGLE_TENANT, note.id) == note


async def test_paired_surrogates_and_other_control_characters_are_still_stored(store: NotesStore) -> None:
    text = "emoji \U0001f600, tab\t, bell\x07, line\u2028sep"
    note = await store.create(SINGLE_TENANT, text, text, "app")
    assert (note.title, note.body) == (text, text)
    assert await store.search(SINGLE_TENANT, "\U0001f600", 10) == [note]
