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
from tests._postgres import PostgresServer
from tools import NotesStore, PostgresStore, Readiness, SQLiteStore, open_store
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
        await store.create(title, "", "app")  # type: ignore[arg-type]
    assert await store.list(LIMIT_MAX) == []


async def test_title_limit_counts_characters_after_stripping(store: NotesStore) -> None:
    note = await store.create("  " + "é" * TITLE_MAX + "  ", "", "app")
    assert note.title == "é" * TITLE_MAX


async def test_body_may_be_empty_or_exactly_the_maximum(store: NotesStore) -> None:
    assert (await store.create("a", "", "app")).body == ""
    assert len((await store.create("b", "y" * BODY_MAX, "app")).body) == BODY_MAX


async def test_create_rejects_body_over_the_maximum(store: NotesStore) -> None:
    with pytest.raises(NoteError, match=f"body is longer than {BODY_MAX} characters"):
        await store.create("t", "y" * (BODY_MAX + 1), "app")


async def test_update_applies_the_same_limits_as_create(store: NotesStore) -> None:
    note = await store.create("t", "b", "app")
    with pytest.raises(NoteError, match="title must not be empty"):
        await store.update(note.id, " ", "b", "app")
    with pytest.raises(NoteError, match="body is longer than"):
        await store.update(note.id, "t", "y" * (BODY_MAX + 1), "app")
    assert await store.get(note.id) == note


@pytest.mark.parametrize("limit", [0, -1, LIMIT_MAX + 1, True, 2.0, "5"])
async def test_list_and_search_reject_limit_out_of_range(store: NotesStore, limit: object) -> None:
    with pytest.raises(NoteError, match=f"limit must be an integer from 1 to {LIMIT_MAX}"):
        await store.list(limit)  # type: ignore[arg-type]
    with pytest.raises(NoteError, match="limit must be"):
        await store.search("x", limit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "message"),
    [("", "query must not be empty"), ("  ", "query must not be empty"), ("q" * (QUERY_MAX + 1), "query is longer")],
)
async def test_search_rejects_bad_query(store: NotesStore, query: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        await store.search(query, 10)


async def test_writes_reject_an_empty_client_id(store: NotesStore) -> None:
    with pytest.raises(NoteError, match="client id must not be empty"):
        await store.create("t", "", "")


async def test_limit_caps_the_number_of_results(store: NotesStore) -> None:
    for i in range(5):
        await store.create(f"note {i}", "", "app")
    assert len(await store.list(3)) == 3
    assert len(await store.search("note", 2)) == 2
    assert len(await store.list(LIMIT_MAX)) == 5


# -- unknown ids ---------------------------------------------------------------------------


async def test_get_of_unknown_id_names_the_id(store: NotesStore) -> None:
    with pytest.raises(NoteError, match="^note 42 does not exist$"):
        await store.get(42)


async def test_update_of_unknown_id_fails_and_creates_nothing(store: NotesStore, raw: Raw) -> None:
    with pytest.raises(NoteError, match="^note 42 does not exist$"):
        await store.update(42, "t", "b", "app")
    assert raw.count_rows() == 0


async def test_delete_of_unknown_id_returns_none(store: NotesStore) -> None:
    assert await store.delete(42, "app") is None


@pytest.mark.parametrize("bad_id", ["1", 1.0, True, None])
async def test_non_integer_ids_are_refused(store: NotesStore, bad_id: object) -> None:
    with pytest.raises(NoteError, match="note id must be an integer"):
        await store.get(bad_id)  # type: ignore[arg-type]


# -- behaviour of each operation -----------------------------------------------------------


async def test_create_records_the_client_and_utc_timestamps(store: NotesStore) -> None:
    note = await store.create("Title", "Body", "client-a")
    assert note == Note(
        id=note.id,
        title="Title",
        body="Body",
        created_by="client-a",
        updated_by="client-a",
        created_at="2025-01-31T12:00:01+00:00",
        updated_at="2025-01-31T12:00:01+00:00",
    )
    assert await store.get(note.id) == note


async def test_update_records_the_updating_client_and_keeps_the_creator(store: NotesStore) -> None:
    created = await store.create("old", "old body", "client-a")
    updated = await store.update(created.id, " new ", "new body", "client-b")
    assert (updated.title, updated.body) == ("new", "new body")
    assert (updated.created_by, updated.updated_by) == ("client-a", "client-b")
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert await store.get(created.id) == updated


async def test_delete_returns_the_note_hides_it_and_records_who_deleted_it(store: NotesStore, raw: Raw) -> None:
    note = await store.create("gone", "", "client-a")
    assert await store.delete(note.id, "client-b") == note
    with pytest.raises(NoteError, match=f"note {note.id} does not exist"):
        await store.get(note.id)
    assert await store.list(LIMIT_MAX) == [] and await store.search("gone", 10) == []
    assert await store.delete(note.id, "client-b") is None  # a retried delete is harmless
    assert raw.deleted_by(note.id) == "client-b"


async def test_ids_of_deleted_notes_are_not_reused(store: NotesStore) -> None:
    first = await store.create("a", "", "app")
    await store.delete(first.id, "app")
    assert (await store.create("b", "", "app")).id > first.id


async def test_list_returns_newest_first(store: NotesStore) -> None:
    ids = [(await store.create(f"n{i}", "", "app")).id for i in range(4)]
    assert [n.id for n in await store.list(10)] == ids[::-1]


# -- search --------------------------------------------------------------------------------


async def test_search_matches_title_or_body_case_insensitively(store: NotesStore) -> None:
    in_title = await store.create("Hello World", "", "app")
    in_body = await store.create("other", "say HELLO", "app")
    await store.create("unrelated", "nothing", "app")
    assert [n.id for n in await store.search("hello", 10)] == [in_body.id, in_title.id]


async def test_search_folds_non_ascii_case(store: NotesStore) -> None:
    # SQLite's own LIKE folds ASCII only; these would be missed without casefold.
    umlaut = await store.create("Äpfel kaufen", "", "app")
    sharp_s = await store.create("Straße", "", "app")
    assert await store.search("äPFEL", 10) == [umlaut]
    assert await store.search("STRASSE", 10) == [sharp_s]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("%", "100% done"), ("_", "a_b"), ("\\", "back\\slash"), ("0%", "100% done"), ("a_", "a_b")],
)
async def test_search_treats_like_wildcards_literally(store: NotesStore, query: str, expected: str) -> None:
    for title in ("100% done", "100 percent", "a_b", "axb", "back\\slash", "backslash"):
        await store.create(title, "", "app")
    assert [n.title for n in await store.search(query, 10)] == [expected]


# -- several instances on one database ---------------------------------------------------------


async def test_a_note_written_through_one_store_is_read_through_another_at_once(raw: Raw) -> None:
    a, b = raw.new_store(), raw.new_store()
    await a.open()
    await b.open()
    try:
        note = await a.create("shared", "body", "client-a")
        assert await b.get(note.id) == note
        assert await b.search("SHARED", 10) == [note]
        updated = await b.update(note.id, "shared v2", "body 2", "client-b")
        assert await a.get(note.id) == updated
        assert (updated.created_by, updated.updated_by) == ("client-a", "client-b")
        assert await a.delete(note.id, "client-a") == updated
        assert await b.delete(note.id, "client-b") is None  # idempotent across instances
        assert await b.list(10) == []
    finally:
        await a.aclose()
        await b.aclose()


async def test_concurrent_creates_through_several_stores_get_unique_ids(raw: Raw) -> None:
    stores = [raw.new_store() for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        async def burst(i: int, s: NotesStore) -> list[int]:
            return [(await s.create(f"s{i}-{n}", "", f"client-{i}")).id for n in range(40)]

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
        note = await stores[0].create("v0", "v0", "client-0")
        # Each writer writes a title and body that belong together; a mix would show as a mismatch.
        versions = {f"title {i}": (f"body {i} " + "x" * 2000, f"client-{i}") for i in range(30)}
        await asyncio.gather(*(
            stores[i % 3].update(note.id, title, body, client)
            for i, (title, (body, client)) in enumerate(versions.items())
        ))
        final = await stores[1].get(note.id)
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
    note = SQLiteNotes(path).create("kept", "body", "app")
    reopened = SQLiteNotes(path)
    assert reopened.get(note.id) == note
    assert reopened.create("next", "", "app").id == note.id + 1


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
    assert store.create("after the wait", "", "app").id == 1


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
        return [store.create(f"t{worker}-{i}", "", f"thread-{worker}").id for i in range(per_thread)]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        ids = [i for batch in pool.map(work, range(threads)) for i in batch]

    assert len(set(ids)) == threads * per_thread
    assert _count_rows(store.path) == threads * per_thread


def _create_in_process(path: str, worker: int, count: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    # Both processes open the (new) file at the same moment: schema creation races too.
    barrier.wait(timeout=60)
    store = SQLiteNotes(Path(path))
    for i in range(count):
        store.create(f"p{worker}-{i}", "", f"proc-{worker}")


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
