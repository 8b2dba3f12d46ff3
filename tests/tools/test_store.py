"""NotesStore: input limits, unknown ids, LIKE escaping, persistence, and no lost writes under concurrency."""

from __future__ import annotations

import multiprocessing
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tools._store import BODY_MAX, LIMIT_MAX, QUERY_MAX, TITLE_MAX, Note, NoteError, NotesStore

T0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


class StepClock:
    """Advances one second per reading, so timestamps differ without sleeping."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> NotesStore:
    return NotesStore(tmp_path / "notes.db", clock=StepClock())


def _count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM notes").fetchone()[0]


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
def test_create_rejects_bad_title(store: NotesStore, title: object, message: str) -> None:
    with pytest.raises(NoteError, match=f"^{message}$"):
        store.create(title, "", "app")  # type: ignore[arg-type]
    assert store.list(LIMIT_MAX) == []


def test_title_limit_counts_characters_after_stripping(store: NotesStore) -> None:
    note = store.create("  " + "é" * TITLE_MAX + "  ", "", "app")
    assert note.title == "é" * TITLE_MAX


def test_body_may_be_empty_or_exactly_the_maximum(store: NotesStore) -> None:
    assert store.create("a", "", "app").body == ""
    assert len(store.create("b", "y" * BODY_MAX, "app").body) == BODY_MAX


def test_create_rejects_body_over_the_maximum(store: NotesStore) -> None:
    with pytest.raises(NoteError, match=f"body is longer than {BODY_MAX} characters"):
        store.create("t", "y" * (BODY_MAX + 1), "app")


def test_update_applies_the_same_limits_as_create(store: NotesStore) -> None:
    note = store.create("t", "b", "app")
    with pytest.raises(NoteError, match="title must not be empty"):
        store.update(note.id, " ", "b", "app")
    with pytest.raises(NoteError, match="body is longer than"):
        store.update(note.id, "t", "y" * (BODY_MAX + 1), "app")
    assert store.get(note.id) == note


@pytest.mark.parametrize("limit", [0, -1, LIMIT_MAX + 1, True, 2.0, "5"])
def test_list_and_search_reject_limit_out_of_range(store: NotesStore, limit: object) -> None:
    with pytest.raises(NoteError, match=f"limit must be an integer from 1 to {LIMIT_MAX}"):
        store.list(limit)  # type: ignore[arg-type]
    with pytest.raises(NoteError, match="limit must be"):
        store.search("x", limit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "message"),
    [("", "query must not be empty"), ("  ", "query must not be empty"), ("q" * (QUERY_MAX + 1), "query is longer")],
)
def test_search_rejects_bad_query(store: NotesStore, query: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        store.search(query, 10)


def test_writes_reject_an_empty_client_id(store: NotesStore) -> None:
    with pytest.raises(NoteError, match="client id must not be empty"):
        store.create("t", "", "")


def test_limit_caps_the_number_of_results(store: NotesStore) -> None:
    for i in range(5):
        store.create(f"note {i}", "", "app")
    assert len(store.list(3)) == 3
    assert len(store.search("note", 2)) == 2
    assert len(store.list(LIMIT_MAX)) == 5


# -- unknown ids ---------------------------------------------------------------------------


def test_get_of_unknown_id_names_the_id(store: NotesStore) -> None:
    with pytest.raises(NoteError, match="^note 42 does not exist$"):
        store.get(42)


def test_update_of_unknown_id_fails_and_creates_nothing(store: NotesStore) -> None:
    with pytest.raises(NoteError, match="^note 42 does not exist$"):
        store.update(42, "t", "b", "app")
    assert store.list(LIMIT_MAX) == []


def test_delete_of_unknown_id_returns_none(store: NotesStore) -> None:
    assert store.delete(42, "app") is None


@pytest.mark.parametrize("bad_id", ["1", 1.0, True, None])
def test_non_integer_ids_are_refused(store: NotesStore, bad_id: object) -> None:
    with pytest.raises(NoteError, match="note id must be an integer"):
        store.get(bad_id)  # type: ignore[arg-type]


# -- behaviour of each operation -----------------------------------------------------------


def test_create_records_the_client_and_utc_timestamps(store: NotesStore) -> None:
    note = store.create("Title", "Body", "client-a")
    assert note == Note(
        id=note.id,
        title="Title",
        body="Body",
        created_by="client-a",
        updated_by="client-a",
        created_at="2025-01-31T12:00:01+00:00",
        updated_at="2025-01-31T12:00:01+00:00",
    )
    assert store.get(note.id) == note


def test_update_records_the_updating_client_and_keeps_the_creator(store: NotesStore) -> None:
    created = store.create("old", "old body", "client-a")
    updated = store.update(created.id, " new ", "new body", "client-b")
    assert (updated.title, updated.body) == ("new", "new body")
    assert (updated.created_by, updated.updated_by) == ("client-a", "client-b")
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert store.get(created.id) == updated


def test_delete_returns_the_note_hides_it_and_records_who_deleted_it(store: NotesStore) -> None:
    note = store.create("gone", "", "client-a")
    assert store.delete(note.id, "client-b") == note
    with pytest.raises(NoteError, match=f"note {note.id} does not exist"):
        store.get(note.id)
    assert store.list(LIMIT_MAX) == [] and store.search("gone", 10) == []
    assert store.delete(note.id, "client-b") is None  # a retried delete is harmless
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT deleted_by FROM notes WHERE id = ?", (note.id,)).fetchone() == ("client-b",)


def test_ids_of_deleted_notes_are_not_reused(store: NotesStore) -> None:
    first = store.create("a", "", "app")
    store.delete(first.id, "app")
    assert store.create("b", "", "app").id > first.id


def test_list_returns_newest_first(store: NotesStore) -> None:
    ids = [store.create(f"n{i}", "", "app").id for i in range(4)]
    assert [n.id for n in store.list(10)] == ids[::-1]


# -- search --------------------------------------------------------------------------------


def test_search_matches_title_or_body_case_insensitively(store: NotesStore) -> None:
    in_title = store.create("Hello World", "", "app")
    in_body = store.create("other", "say HELLO", "app")
    store.create("unrelated", "nothing", "app")
    assert [n.id for n in store.search("hello", 10)] == [in_body.id, in_title.id]


def test_search_folds_non_ascii_case(store: NotesStore) -> None:
    # SQLite's own LIKE folds ASCII only; these would be missed without casefold.
    umlaut = store.create("Äpfel kaufen", "", "app")
    sharp_s = store.create("Straße", "", "app")
    assert store.search("äPFEL", 10) == [umlaut]
    assert store.search("STRASSE", 10) == [sharp_s]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("%", "100% done"), ("_", "a_b"), ("\\", "back\\slash"), ("0%", "100% done"), ("a_", "a_b")],
)
def test_search_treats_like_wildcards_literally(store: NotesStore, query: str, expected: str) -> None:
    for title in ("100% done", "100 percent", "a_b", "axb", "back\\slash", "backslash"):
        store.create(title, "", "app")
    assert [n.title for n in store.search(query, 10)] == [expected]


# -- persistence and file handling ---------------------------------------------------------


def test_store_creates_missing_parent_folders_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "notes.db"
    NotesStore(path)
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_notes_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    note = NotesStore(path).create("kept", "body", "app")
    reopened = NotesStore(path)
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
        store = NotesStore(path)
    finally:
        other.close()
    assert len(waits) == 1
    assert store.create("after the wait", "", "app").id == 1


def test_store_refuses_a_file_from_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    NotesStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99"):
        NotesStore(path)


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_creates_from_many_threads_lose_nothing(store: NotesStore) -> None:
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
    store = NotesStore(Path(path))
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
