"""The notes store: one async interface (`NotesStore`), two back ends.

- `SQLiteStore` (this module): the embedded default, one file on local disk, one instance.
- `PostgresStore` (``tools/_postgres.py``): a shared database for several instances.

Both validate inputs with the same rules and messages (the ``_check_*`` functions below), so a
model sees the same errors whichever back end serves it, and both raise `StoreUnavailable` when
the database cannot be reached in time, which the tools turn into a tool error.

Why the SQLite back end is shaped this way:

- **A connection per call.** `sqlite3` connections must not be shared between threads
  without locking of our own, and async callers run each call on an arbitrary worker
  thread (`anyio.to_thread.run_sync`). Opening a connection to a local file costs
  microseconds, so one per call is simpler than a per-thread pool and leaks nothing.
- **WAL mode** (https://sqlite.org/wal.html): readers never block the single writer and
  the writer never blocks readers, across processes too. The mode is persistent in the
  file, so it is set once when the store opens (retrying: that switch may report
  SQLITE_BUSY without waiting). WAL needs shared memory, hence a local
  disk: it does not work on network file systems, and two hosts cannot share the file.
- **`BEGIN IMMEDIATE` for every write**: the write lock is taken at the start of the
  transaction, so two writers cannot both read and then fail to upgrade (the deferred
  default can return SQLITE_BUSY mid-transaction without consulting the busy handler).
- **`busy_timeout`**: a writer that finds the lock taken waits for it instead of failing.
- **Soft delete**: every write, a delete included, records the client id that made it,
  so a deleted row keeps ``deleted_by``/``deleted_at`` and drops out of every read.
- **Tenants**: every row belongs to a `TenantKey` (the issuer and tenant of the token that wrote
  it; `SINGLE_TENANT` when the deployment is single-tenant), and every statement names it: a
  note of another tenant reads exactly like one that does not exist. The live-notes index leads
  with the tenant key, so each tenant's reads stay index lookups however many tenants share the file.

Timestamps are ISO-8601 in UTC (``2025-01-31T12:00:00.123456+00:00``). "Newest first"
orders by id, which SQLite assigns in commit order; wall clocks of two processes may disagree.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread

__all__ = [
    "Note",
    "NoteError",
    "NotesStore",
    "TenantKey",
    "SINGLE_TENANT",
    "StoreUnavailable",
    "SQLiteStore",
    "SQLiteNotes",
    "Readiness",
    "TITLE_MAX",
    "BODY_MAX",
    "QUERY_MAX",
    "LIMIT_MAX",
    "BUSY_TIMEOUT_MS",
]

TITLE_MAX = 200
"""Longest title, in characters, after stripping surrounding whitespace."""
BODY_MAX = 10_000
"""Longest body, in characters; an empty body is allowed."""
QUERY_MAX = 200
"""Longest search query, in characters, after stripping."""
LIMIT_MAX = 100
"""Most notes one list or search returns; keeps a tool result small enough for a model."""
BUSY_TIMEOUT_MS = 5_000
"""How long a writer waits for another writer's lock before giving up with ``database is locked``."""

_SCHEMA_VERSION = 2
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE IF NOT EXISTS notes (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids of deleted notes are never reused
            title       TEXT NOT NULL,
            body        TEXT NOT NULL,
            created_by  TEXT NOT NULL,
            updated_by  TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            deleted_by  TEXT,
            deleted_at  TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS notes_live ON notes (id) WHERE deleted_at IS NULL",
    ),
    # Notes belong to a tenant. Rows written before belong to SINGLE_TENANT ('', ''), the key a
    # single-tenant deployment keeps using, so they stay visible there.
    2: (
        "ALTER TABLE notes ADD COLUMN tenant_issuer TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE notes ADD COLUMN tenant_id TEXT NOT NULL DEFAULT ''",
        "DROP INDEX IF EXISTS notes_live",
        "CREATE INDEX notes_tenant_live ON notes (tenant_issuer, tenant_id, id) WHERE deleted_at IS NULL",
    ),
}
_COLUMNS = "id, title, body, created_by, updated_by, created_at, updated_at"
_MINE = "tenant_issuer = :ti AND tenant_id = :tt AND deleted_at IS NULL"  # every read and write says whose


log = logging.getLogger("tools.store")

T = TypeVar("T")


class NoteError(ValueError):
    """An input the store refuses, or a note that does not exist; the message is safe to show a client."""


class StoreUnavailable(Exception):  # noqa: N818 - reads as a state, like ConnectionRefused
    """The database did not answer in time (down, unreachable, overloaded); the call may be retried.

    The message is fixed and safe to show a client; the cause (never with credentials) goes to the log.
    """

    def __init__(self, message: str = "the notes store is unavailable; try again shortly") -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Note:
    """One note as stored; timestamps are ISO-8601 UTC strings."""

    id: int
    title: str
    body: str
    created_by: str
    updated_by: str
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class TenantKey:
    """Whose notes: every note belongs to one key, and every read and write names the caller's.

    In a multi-tenant deployment it is the ``(issuer, tenant)`` of the token (`tools.tenant_of`):
    the issuer is part of it because every IAS tenant under a trusted domain is a trusted issuer,
    and one of them may sign any ``app_tid`` it likes. A single-tenant deployment uses `SINGLE_TENANT`.
    """

    issuer: str = ""
    tenant: str = ""


SINGLE_TENANT = TenantKey()
"""The one tenant of a single-tenant deployment; notes written before schema version 2 belong to it."""


@runtime_checkable
class NotesStore(Protocol):
    """What the note tools need from a store; every method is async and safe to call concurrently.

    Every method takes the caller's `TenantKey` first and sees that tenant's notes only: another
    tenant's note id gives the same `NoteError` as an id that was never used. Reads see every
    write that returned before they started, from any instance sharing the database. Writes are
    single statements, so concurrent updates of one note leave exactly one of the written
    versions. Input errors raise `NoteError`; an unreachable database raises `StoreUnavailable`
    within the store's timeout.
    """

    async def open(self) -> None:
        """Connect and create or migrate the schema (idempotent; a database that is down is retried later)."""
        ...

    async def aclose(self) -> None:
        """Release connections and temporary files."""
        ...

    async def ping(self) -> bool:
        """Whether the database answers now (readiness); never raises, bounded by the store's timeout."""
        ...

    async def get(self, tenant: TenantKey, note_id: int) -> Note: ...
    async def list(self, tenant: TenantKey, limit: int = 20) -> list[Note]: ...
    async def search(self, tenant: TenantKey, query: str, limit: int = 20) -> list[Note]: ...
    async def create(self, tenant: TenantKey, title: str, body: str, client_id: str) -> Note: ...
    async def update(self, tenant: TenantKey, note_id: int, title: str, body: str, client_id: str) -> Note: ...
    async def delete(self, tenant: TenantKey, note_id: int, client_id: str) -> Note | None: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Readiness:
    """``await readiness()``: whether the store answers, asking it at most once per ``ttl`` seconds.

    ``GET /ready`` needs no token, so its cost must not grow with the request rate: one ping in
    flight at a time, its answer shared by every probe that waited for it, and reused for ``ttl``
    seconds after the ping *ended*. A ping can take the store's whole timeout during an outage
    (seconds); stamping the answer when the ping started would make it stale before the waiters
    read it, and each would ping again in turn. A flood of probes therefore costs at most one
    pooled connection, one ping per ``ttl`` plus the ping's own duration, and one log line per ping.
    """

    def __init__(self, store: NotesStore, *, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._lock = anyio.Lock()
        self._answer: tuple[float, bool] | None = None  # (when the ping ended, answer)

    def _fresh(self) -> bool | None:
        answer = self._answer
        if answer is not None and self._clock() - answer[0] < self._ttl:
            return answer[1]
        return None

    async def __call__(self) -> bool:
        fresh = self._fresh()
        if fresh is not None:  # the common case: no lock, no ping
            return fresh
        async with self._lock:
            fresh = self._fresh()  # another probe pinged while this one waited: share its answer
            if fresh is not None:
                return fresh
            ok = await self._store.ping()
            self._answer = (self._clock(), ok)
            return ok


class SQLiteStore:
    """`NotesStore` over `SQLiteNotes`: every SQLite call runs on a worker thread, never on the event loop.

    Args:
        path: the database file (created with its parent folders; the schema is set up here).
        clock: returns the current time; injected so tests need not sleep.
    """

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.sync = SQLiteNotes(path, clock=clock)

    @property
    def path(self) -> Path:
        """The database file."""
        return self.sync.path

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.sync.path)!r})"

    async def open(self) -> None:
        """Nothing to do: the schema was set up when the store was built."""

    async def aclose(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""

    async def ping(self) -> bool:
        try:
            await self._run(self.sync.ping)
        except StoreUnavailable:
            return False
        return True

    async def get(self, tenant: TenantKey, note_id: int) -> Note:
        return await self._run(self.sync.get, tenant, note_id)

    async def list(self, tenant: TenantKey, limit: int = 20) -> list[Note]:
        return await self._run(self.sync.list, tenant, limit)

    async def search(self, tenant: TenantKey, query: str, limit: int = 20) -> list[Note]:
        return await self._run(self.sync.search, tenant, query, limit)

    async def create(self, tenant: TenantKey, title: str, body: str, client_id: str) -> Note:
        return await self._run(self.sync.create, tenant, title, body, client_id)

    async def update(self, tenant: TenantKey, note_id: int, title: str, body: str, client_id: str) -> Note:
        return await self._run(self.sync.update, tenant, note_id, title, body, client_id)

    async def delete(self, tenant: TenantKey, note_id: int, client_id: str) -> Note | None:
        return await self._run(self.sync.delete, tenant, note_id, client_id)

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        try:
            return await anyio.to_thread.run_sync(functools.partial(call, *args))
        except sqlite3.OperationalError as exc:  # locked past busy_timeout, disk gone, file unreadable
            log.warning("notes store unavailable: sqlite3.OperationalError: %s", exc)
            raise StoreUnavailable() from exc


class SQLiteNotes:
    """Notes in one SQLite file; every method is synchronous, thread-safe and process-safe.

    Args:
        path: the database file; its parent folder is created when missing.
        clock: returns the current time (an aware datetime); injected so tests need not sleep.

    Raises:
        sqlite3.Error: the file cannot be opened or is not a database.
        RuntimeError: the file was written by a newer schema version.
    """

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._path = Path(path)
        self._clock = clock
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def ping(self) -> None:
        """Run a trivial query (raises `sqlite3.Error` when the file cannot be read)."""
        with self._connect() as conn:
            conn.execute("SELECT count(*) FROM notes WHERE id = 0").fetchone()

    # -- reads ---------------------------------------------------------------------------

    def get(self, tenant: TenantKey, note_id: int) -> Note:
        """Return note ``note_id`` of ``tenant``.

        Raises:
            NoteError: the id is not an integer, or ``tenant`` has no live note with it.
        """
        mine = _check_tenant(tenant)
        note_id = _check_id(note_id)
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM notes WHERE id = :id AND {_MINE}", {**mine, "id": note_id}  # noqa: S608
            ).fetchone()
        if row is None:
            raise NoteError(f"note {note_id} does not exist")
        return Note(*row)

    def list(self, tenant: TenantKey, limit: int = 20) -> list[Note]:
        """Return up to ``limit`` notes of ``tenant``, newest first.

        Raises:
            NoteError: ``limit`` is outside 1..`LIMIT_MAX`.
        """
        mine = _check_tenant(tenant)
        limit = _check_limit(limit)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM notes WHERE {_MINE} ORDER BY id DESC LIMIT :limit",  # noqa: S608
                {**mine, "limit": limit},
            ).fetchall()
        return [Note(*row) for row in rows]

    def search(self, tenant: TenantKey, query: str, limit: int = 20) -> list[Note]:
        """Return up to ``limit`` notes of ``tenant`` whose title or body contains ``query``, newest first.

        Matching is a case-insensitive substring test (Unicode case folding, so "STRASSE"
        finds "Straße"); ``%``, ``_`` and ``\\`` in the query match themselves.

        Raises:
            NoteError: the query is blank or longer than `QUERY_MAX`, or ``limit`` is out of range.
        """
        mine = _check_tenant(tenant)
        query = _check_text("query", query, QUERY_MAX, strip=True, allow_empty=False)
        limit = _check_limit(limit)
        # SQLite's LIKE and lower() fold ASCII only, so both sides go through str.casefold.
        pattern = "%" + _escape_like(query.casefold()) + "%"
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM notes WHERE {_MINE}"  # noqa: S608
                " AND (casefold(title) LIKE :p ESCAPE '\\' OR casefold(body) LIKE :p ESCAPE '\\')"
                " ORDER BY id DESC LIMIT :limit",
                {**mine, "p": pattern, "limit": limit},
            ).fetchall()
        return [Note(*row) for row in rows]

    # -- writes --------------------------------------------------------------------------

    def create(self, tenant: TenantKey, title: str, body: str, client_id: str) -> Note:
        """Store a new note of ``tenant`` made by ``client_id`` and return it.

        Raises:
            NoteError: the title is blank or too long, the body too long, or the client id empty.
        """
        mine = _check_tenant(tenant)
        title, body, client_id = _check_note(title, body, client_id)
        now = self._now()
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO notes (tenant_issuer, tenant_id, title, body, created_by, updated_by,"  # noqa: S608 - constant column list; values are bound
                f" created_at, updated_at) VALUES (:ti, :tt, :title, :body, :by, :by, :now, :now) RETURNING {_COLUMNS}",
                {**mine, "title": title, "body": body, "by": client_id, "now": now},
            ).fetchone()
        return Note(*row)

    def update(self, tenant: TenantKey, note_id: int, title: str, body: str, client_id: str) -> Note:
        """Replace the title and body of note ``note_id`` of ``tenant``, recording ``client_id``; return it.

        Raises:
            NoteError: an invalid input (as for `create`), or ``tenant`` has no live note with the id.
        """
        mine = _check_tenant(tenant)
        note_id = _check_id(note_id)
        title, body, client_id = _check_note(title, body, client_id)
        now = self._now()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE notes SET title = :title, body = :body, updated_by = :by, updated_at = :now"  # noqa: S608 - constant column list; values are bound
                f" WHERE id = :id AND {_MINE} RETURNING {_COLUMNS}",
                {**mine, "id": note_id, "title": title, "body": body, "by": client_id, "now": now},
            ).fetchone()
        if row is None:
            raise NoteError(f"note {note_id} does not exist")
        return Note(*row)

    def delete(self, tenant: TenantKey, note_id: int, client_id: str) -> Note | None:
        """Delete note ``note_id`` of ``tenant`` on behalf of ``client_id``.

        Returns:
            The note as it was before deletion, or None when ``tenant`` had no live note with
            the id (deleting twice is not an error, so a retried call is harmless).

        Raises:
            NoteError: the id is not an integer or the client id is empty.
        """
        mine = _check_tenant(tenant)
        note_id = _check_id(note_id)
        client_id = _check_client(client_id)
        now = self._now()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE notes SET deleted_by = :by, deleted_at = :now"  # noqa: S608 - constant column list; values are bound
                f" WHERE id = :id AND {_MINE} RETURNING {_COLUMNS}",
                {**mine, "id": note_id, "by": client_id, "now": now},
            ).fetchone()
        return None if row is None else Note(*row)

    # -- plumbing ------------------------------------------------------------------------

    def _now(self) -> str:
        return self._clock().astimezone(UTC).isoformat()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: the sqlite3 module opens no implicit transactions; we say BEGIN ourselves.
        conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.create_function("casefold", 1, _casefold, deterministic=True)
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Persistent in the file, so only the first open of a new file really switches.
        # The switch needs an exclusive lock and, unlike ordinary statements, may answer
        # SQLITE_BUSY without consulting the busy handler (seen when two processes open a
        # new file at once), so retry it ourselves for as long as a writer would wait.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self._path}: cannot switch to WAL mode (got {mode!r})")

    def _init_schema(self) -> None:
        with self._connect() as conn:
            self._enable_wal(conn)
        with self._write() as conn:  # two processes creating or migrating the schema at once: one waits
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"{self._path}: schema version {version} is newer than {_SCHEMA_VERSION}")
            for step in range(version + 1, _SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
                log.info("%s: notes schema migrated to version %d", self._path, step)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

def _casefold(value: str | None) -> str | None:
    return None if value is None else value.casefold()


def _escape_like(text: str) -> str:
    """Make ``%``, ``_`` and the escape character itself literal in a LIKE pattern (ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# NUL: PostgreSQL text cannot hold it (DataError), SQLite would. A surrogate code point (U+D800-U+DFFF)
# in a Python str is always unpaired (JSON parsers join a pair into one code point) and has no UTF-8
# form (UnicodeEncodeError in the driver). Both are refused up front, the same way on both back ends.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_text(field: str, value: object, maximum: int, *, strip: bool, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise NoteError(f"{field} must be a string")
    if strip:
        value = value.strip()
    if not value and not allow_empty:
        raise NoteError(f"{field} must not be empty")
    if len(value) > maximum:
        raise NoteError(f"{field} is longer than {maximum} characters")
    if _UNSTORABLE.search(value):  # after the length check: the scan is bounded by `maximum`
        raise NoteError(f"{field} must not contain NUL characters or unpaired surrogates")
    return value


def _check_tenant(tenant: object) -> dict[str, str]:
    """The tenant key as bound parameters (``ti``, ``tt``); refuses anything but a storable `TenantKey`."""
    if not isinstance(tenant, TenantKey) or not isinstance(tenant.issuer, str) or not isinstance(tenant.tenant, str):
        raise TypeError(f"tenant must be a TenantKey, got {type(tenant).__name__}")
    if _UNSTORABLE.search(tenant.issuer) or _UNSTORABLE.search(tenant.tenant):
        raise NoteError("tenant must not contain NUL characters or unpaired surrogates")
    return {"ti": tenant.issuer, "tt": tenant.tenant}


def _check_limit(limit: object) -> int:
    # bool is an int subclass; limit=True is a caller bug, not "1".
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= LIMIT_MAX:
        raise NoteError(f"limit must be an integer from 1 to {LIMIT_MAX}")
    return limit


def _check_id(note_id: object) -> int:
    if not isinstance(note_id, int) or isinstance(note_id, bool):
        raise NoteError("note id must be an integer")
    return note_id


def _check_note(title: object, body: object, client_id: object) -> tuple[str, str, str]:
    """Validate what a write stores: a non-blank title, a body within limits, a client id."""
    return (
        _check_text("title", title, TITLE_MAX, strip=True, allow_empty=False),
        _check_text("body", body, BODY_MAX, strip=False, allow_empty=True),
        _check_client(client_id),
    )


def _check_client(client_id: object) -> str:
    if not isinstance(client_id, str) or not client_id:
        raise NoteError("client id must not be empty")
    if _UNSTORABLE.search(client_id):  # from a signed token, but a claim may still hold "\u0000"
        raise NoteError("client id must not contain NUL characters or unpaired surrogates")
    return client_id
