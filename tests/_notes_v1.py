"""Notes databases as release 0.2.0 left them (schema version 1, no tenant columns), for migration tests.

The statements are copied from that release, not imported: the code under test must not write them.

    old = create_sqlite_v1(tmp_path / "notes.db", ["kept", "also kept"])           # ids 1, 2
    old = create_postgres_v1(postgres, postgres.new_database(), ["kept"], deleted=["gone"])
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from psycopg import sql

from tests._postgres import APP_ROLE, PostgresServer

__all__ = ["create_sqlite_v1", "create_postgres_v1", "V1_CLIENT"]

V1_CLIENT = "client-from-0.2"
_T = "2025-01-31T12:00:00+00:00"

_SQLITE_V1 = (
    """CREATE TABLE IF NOT EXISTS notes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
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
    "PRAGMA user_version = 1",
)

_POSTGRES_V1 = (
    """CREATE TABLE notes (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        title        text NOT NULL,
        body         text NOT NULL,
        title_folded text NOT NULL,
        body_folded  text NOT NULL,
        created_by   text NOT NULL,
        updated_by   text NOT NULL,
        created_at   timestamptz NOT NULL,
        updated_at   timestamptz NOT NULL,
        deleted_by   text,
        deleted_at   timestamptz
    )""",
    "CREATE INDEX notes_live ON notes (id DESC) WHERE deleted_at IS NULL",
    "CREATE TABLE IF NOT EXISTS notes_schema_version ("
    " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    "INSERT INTO notes_schema_version (version) VALUES (1)",
)


def create_sqlite_v1(path: Path, titles: list[str], *, deleted: Sequence[str] = ()) -> Path:
    """A version-1 SQLite file holding live notes ``titles`` (body ``"<title> body"``) then deleted ones."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in _SQLITE_V1:
            conn.execute(statement)
        for title in [*titles, *deleted]:
            gone = (V1_CLIENT, _T) if title in deleted else (None, None)
            conn.execute(
                "INSERT INTO notes (title, body, created_by, updated_by, created_at, updated_at, deleted_by,"
                " deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (title, f"{title} body", V1_CLIENT, V1_CLIENT, _T, _T, *gone),
            )
    finally:
        conn.close()
    return path


def create_postgres_v1(pg: PostgresServer, dbname: str, titles: list[str], *, deleted: Sequence[str] = ()) -> str:
    """The same in a PostgreSQL database (owned by the app role, as the real store would have made it)."""
    with pg.admin(dbname) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE)))
        for statement in _POSTGRES_V1:
            conn.execute(statement)  # type: ignore[arg-type]
        for title in [*titles, *deleted]:
            gone = (V1_CLIENT, _T) if title in deleted else (None, None)
            conn.execute(
                "INSERT INTO notes (title, body, title_folded, body_folded, created_by, updated_by, created_at,"
                " updated_at, deleted_by, deleted_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (title, f"{title} body", title.casefold(), f"{title} body".casefold(), V1_CLIENT, V1_CLIENT, _T, _T,
                 *gone),
            )
    return dbname
