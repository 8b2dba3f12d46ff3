"""The notes store on PostgreSQL (psycopg 3, async), shared by several server instances.

Why it is shaped this way:

- **One pool per instance** (`psycopg_pool.AsyncConnectionPool`), opened without waiting, so
  an instance starts while the database is down and serves as soon as it returns. Every
  connection is checked when taken from the pool (one empty round trip): after a database
  restart the pooled connections are dead, and a check is cheaper than a failed call.
- **Every call is bounded** by ``timeout``: the pool wait, the connect (``connect_timeout``),
  the statement on the server (``statement_timeout``) and the whole call (a cancel scope).
  Past it the call raises `StoreUnavailable`, which the tools report as a tool error.
- **One statement per write**, committed on its own (autocommit): an ``UPDATE ... RETURNING`` is atomic,
  so concurrent updates of a note leave exactly one of the written versions, and a reader on
  any instance sees a write once the call that made it has returned (read committed).
- **Ids from an identity column**: unique across instances, never reused; "newest first"
  orders by id (the order ids were taken, which concurrent writers may commit out of).
- **Schema under an advisory lock** (``pg_advisory_xact_lock``): instances starting together
  migrate one at a time; the applied versions are recorded in ``notes_schema_version``.
- **Tenants**: every row carries its `TenantKey` (``tenant_issuer``, ``tenant_id``) and every
  statement names the caller's, so another tenant's note reads as one that does not exist; the
  live-notes index leads with the key. Schema version 2 added the key: rows from version 1
  belong to `SINGLE_TENANT` (the columns' default, so an instance still on the old code during
  a rolling update keeps writing there instead of failing).
- **Search** compares Python-casefolded copies of title and body (kept in the row), so it
  folds case exactly as the SQLite back end does ("STRASSE" finds "Straße").
- **Credentials**: the password is never part of a repr, a log line or an error text; the
  CA and client certificate from a Cloud Foundry binding (PEM text) are written to private
  temporary files (mode 0600) because libpq reads them from files.
- **TLS verified by default**: without an ``sslmode`` the store connects with ``verify-full``
  (libpq's own default, ``prefer``, neither verifies the server nor refuses plaintext), against
  the configured CA or else the system's CA bundle (`system_ca_file`). The libpq that
  ``psycopg[binary]`` bundles (18) knows ``sslrootcert=system``, but its own OpenSSL looks for
  that store in a folder of the wheel's build machine; the file Python's OpenSSL uses is given instead.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ._store import (
    QUERY_MAX,
    Note,
    NoteError,
    StoreUnavailable,
    TenantKey,
    _check_client,
    _check_id,
    _check_limit,
    _check_note,
    _check_tenant,
    _check_text,
    _escape_like,
)

__all__ = ["PostgresConfig", "PostgresStore", "SCHEMA_VERSION", "DEFAULT_TIMEOUT_S", "system_ca_file", "VERIFYING"]

log = logging.getLogger("tools.store")

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 3.0
"""How long one store call may take (pool wait, connect, statement) before it fails as unavailable."""

SCHEMA_VERSION = 2
VERIFYING = ("verify-ca", "verify-full")
"""The ``sslmode`` values that check the server's certificate against a CA."""
_LOCK_KEY = 0x6E6F746573  # "notes": the advisory lock instances take while migrating

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
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
    ),
    # Notes belong to a tenant; existing rows to SINGLE_TENANT ('', ''). A constant default adds
    # the columns without rewriting the table; the index is built once, under the advisory lock.
    2: (
        "ALTER TABLE notes ADD COLUMN tenant_issuer text NOT NULL DEFAULT ''",
        "ALTER TABLE notes ADD COLUMN tenant_id text NOT NULL DEFAULT ''",
        "DROP INDEX IF EXISTS notes_live",
        "CREATE INDEX notes_tenant_live ON notes (tenant_issuer, tenant_id, id DESC) WHERE deleted_at IS NULL",
    ),
}
_COLUMNS = "id, title, body, created_by, updated_by, created_at, updated_at"
_MINE = "tenant_issuer = %(ti)s AND tenant_id = %(tt)s AND deleted_at IS NULL"  # every statement says whose
# Built once from constant column lists; every value is a bound parameter.
_GET = f"SELECT {_COLUMNS} FROM notes WHERE id = %(id)s AND {_MINE}"  # noqa: S608
_LIST = f"SELECT {_COLUMNS} FROM notes WHERE {_MINE} ORDER BY id DESC LIMIT %(limit)s"  # noqa: S608
_SEARCH = (
    f"SELECT {_COLUMNS} FROM notes WHERE {_MINE}"  # noqa: S608
    " AND (title_folded LIKE %(p)s ESCAPE '\\' OR body_folded LIKE %(p)s ESCAPE '\\')"
    " ORDER BY id DESC LIMIT %(limit)s"
)
_CREATE = (
    "INSERT INTO notes (tenant_issuer, tenant_id, title, body, title_folded, body_folded,"  # noqa: S608
    " created_by, updated_by, created_at, updated_at)"
    " VALUES (%(ti)s, %(tt)s, %(title)s, %(body)s, %(title_f)s, %(body_f)s, %(by)s, %(by)s, %(now)s, %(now)s)"
    f" RETURNING {_COLUMNS}"
)
_UPDATE = (
    "UPDATE notes SET title = %(title)s, body = %(body)s, title_folded = %(title_f)s,"  # noqa: S608
    " body_folded = %(body_f)s, updated_by = %(by)s, updated_at = %(now)s"
    f" WHERE id = %(id)s AND {_MINE} RETURNING {_COLUMNS}"
)
_DELETE = (
    "UPDATE notes SET deleted_by = %(by)s, deleted_at = %(now)s"  # noqa: S608
    f" WHERE id = %(id)s AND {_MINE} RETURNING {_COLUMNS}"
)


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """Where and how to connect; the password and the client key never show in ``repr``.

    ``ssl_root_cert_pem``/``ssl_cert_pem``/``ssl_key_pem`` hold PEM text (a Cloud Foundry
    binding); ``params`` holds further libpq parameters from a URL (``sslmode``, ``sslrootcert``
    as a path, ``application_name`` ...).
    """

    host: str
    port: int = 5432
    dbname: str = "postgres"
    user: str = ""
    password: str = field(default="", repr=False)
    params: tuple[tuple[str, str], ...] = ()
    ssl_root_cert_pem: str | None = field(default=None, repr=False)
    ssl_cert_pem: str | None = field(default=None, repr=False)
    ssl_key_pem: str | None = field(default=None, repr=False)
    source: str = "MCP_NOTES_DB"  # the setting it came from, for messages
    pool_max: int = 10

    def describe(self) -> str:
        """``postgresql://user@host:port/dbname`` plus the TLS mode: safe to log (no password)."""
        sslmode = dict(self.params).get("sslmode", "verify-full")
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname} (sslmode={sslmode})"


def system_ca_file(env: Mapping[str, str]) -> str | None:
    """The system's CA bundle, as Python's OpenSSL finds it: ``$SSL_CERT_FILE`` when set, else its default file.

    None when that file does not exist (then there is no system trust store to verify against).
    """
    paths = ssl.get_default_verify_paths()
    candidate = env.get(paths.openssl_cafile_env) or paths.openssl_cafile
    return candidate if candidate and os.path.isfile(candidate) else None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PostgresStore:
    """`NotesStore` on PostgreSQL.

    Args:
        config: connection parameters.
        timeout: seconds one call may take in all before it raises `StoreUnavailable`.
        clock: returns the current time; injected so tests need not sleep.
    """

    def __init__(
        self,
        config: PostgresConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._config = config
        self._timeout = timeout
        self._clock = clock
        self._pool: AsyncConnectionPool | None = None
        self._tmpdir: Path | None = None
        self._schema_ready = False
        self._schema_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({self._config.describe()!r})"

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool (without waiting for the database) and migrate the schema if it answers.

        Raises:
            RuntimeError: the database holds a schema newer than this code knows.
        """
        if self._pool is not None:
            return
        kwargs = self._connect_kwargs()
        self._pool = AsyncConnectionPool(
            "",
            kwargs=kwargs,
            min_size=1,
            max_size=self._config.pool_max,
            open=False,
            timeout=self._timeout,
            check=AsyncConnectionPool.check_connection,
            # Give up a reconnect series soon: the next waiting call starts a fresh one at once,
            # so recovery after an outage takes about one call, not a long backoff.
            reconnect_timeout=max(2 * self._timeout, 2.0),
            name="notes",
        )
        await self._pool.open(wait=False)
        log.info("notes store: %s", self._config.describe())
        try:
            await self._call(self._noop)
        except StoreUnavailable:
            log.warning("notes store unreachable at start; the schema is set up when it answers")

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close(timeout=self._timeout)
            self._pool = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def ping(self) -> bool:
        try:
            await self._call(self._noop)
        except StoreUnavailable:
            return False
        return True

    # -- reads ---------------------------------------------------------------------------

    async def get(self, tenant: TenantKey, note_id: int) -> Note:
        mine = _check_tenant(tenant)
        note_id = _check_id(note_id)
        rows = await self._call(self._fetch, _GET, {**mine, "id": note_id})
        if not rows:
            raise NoteError(f"note {note_id} does not exist")
        return _note(rows[0])

    async def list(self, tenant: TenantKey, limit: int = 20) -> list[Note]:
        mine = _check_tenant(tenant)
        limit = _check_limit(limit)
        rows = await self._call(self._fetch, _LIST, {**mine, "limit": limit})
        return [_note(r) for r in rows]

    async def search(self, tenant: TenantKey, query: str, limit: int = 20) -> list[Note]:
        mine = _check_tenant(tenant)
        query = _check_text("query", query, QUERY_MAX, strip=True, allow_empty=False)
        limit = _check_limit(limit)
        pattern = "%" + _escape_like(query.casefold()) + "%"
        rows = await self._call(self._fetch, _SEARCH, {**mine, "p": pattern, "limit": limit})
        return [_note(r) for r in rows]

    # -- writes --------------------------------------------------------------------------

    async def create(self, tenant: TenantKey, title: str, body: str, client_id: str) -> Note:
        mine = _check_tenant(tenant)
        title, body, client_id = _check_note(title, body, client_id)
        values = {**mine, **_texts(title, body), "by": client_id, "now": self._now()}
        rows = await self._call(self._fetch, _CREATE, values)
        return _note(rows[0])

    async def update(self, tenant: TenantKey, note_id: int, title: str, body: str, client_id: str) -> Note:
        mine = _check_tenant(tenant)
        note_id = _check_id(note_id)
        title, body, client_id = _check_note(title, body, client_id)
        values = {**mine, **_texts(title, body), "id": note_id, "by": client_id, "now": self._now()}
        rows = await self._call(self._fetch, _UPDATE, values)
        if not rows:
            raise NoteError(f"note {note_id} does not exist")
        return _note(rows[0])

    async def delete(self, tenant: TenantKey, note_id: int, client_id: str) -> Note | None:
        mine = _check_tenant(tenant)
        note_id = _check_id(note_id)
        client_id = _check_client(client_id)
        rows = await self._call(self._fetch, _DELETE, {**mine, "id": note_id, "by": client_id, "now": self._now()})
        return _note(rows[0]) if rows else None

    # -- plumbing ------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    async def _call(self, work: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``work(conn, *args)`` (one statement, committed by itself), all of it within the timeout."""
        if self._pool is None:
            raise RuntimeError("PostgresStore used before open()")
        try:
            with anyio.fail_after(self._timeout):
                if not self._schema_ready:
                    await self._migrate()
                async with self._pool.connection() as conn:
                    return await work(conn, *args)
        except (TimeoutError, PoolTimeout, psycopg.OperationalError) as exc:
            # OperationalError covers lost connections, refused connects, statement_timeout
            # (QueryCanceled) and a server shutting down (AdminShutdown).
            reason = f"no answer within {self._timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("notes store unavailable: %s: %s", type(exc).__name__, self._redact(reason))
            raise StoreUnavailable() from None

    @staticmethod
    async def _noop(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("SELECT 1")

    @staticmethod
    async def _fetch(conn: psycopg.AsyncConnection[Any], sql: str, params: object) -> list[tuple[Any, ...]]:
        cursor = await conn.execute(sql, params)  # type: ignore[arg-type]
        return await cursor.fetchall()

    async def _migrate(self) -> None:
        assert self._pool is not None
        async with self._schema_lock:
            if self._schema_ready:
                return
            async with self._pool.connection() as conn, conn.transaction():
                # Several instances starting at once: the first migrates, the others wait here
                # and then find the versions recorded (the lock ends with the transaction).
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS notes_schema_version ("
                    " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM notes_schema_version")
                row = await cursor.fetchone()
                current = int(row[0]) if row else 0
                if current > SCHEMA_VERSION:
                    raise RuntimeError(f"notes database schema version {current} is newer than {SCHEMA_VERSION}")
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[version]:
                        await conn.execute(statement)  # type: ignore[arg-type]
                    await conn.execute("INSERT INTO notes_schema_version (version) VALUES (%s)", (version,))
                    log.info("notes database migrated to schema version %d", version)
            self._schema_ready = True

    def _connect_kwargs(self) -> dict[str, Any]:
        c = self._config
        kwargs: dict[str, Any] = dict(c.params)
        kwargs.update(
            host=c.host,
            port=c.port,
            dbname=c.dbname,
            user=c.user,
            password=c.password,
            connect_timeout=max(2, math.ceil(self._timeout)),  # libpq: whole seconds, at least 2
            options=f"-c statement_timeout={int(self._timeout * 1000)}",
            application_name=kwargs.get("application_name", "notes-mcp"),
            # Each call is one statement, atomic on its own: autocommit saves the COMMIT round trip.
            # The migration opens its own transaction (conn.transaction()).
            autocommit=True,
        )
        # Verified TLS unless the configuration says otherwise (the settings refuse plaintext modes
        # unless allowed); a config built in code without a CA gets the system's bundle.
        kwargs.setdefault("sslmode", "verify-full")
        if kwargs["sslmode"] in VERIFYING and "sslrootcert" not in kwargs and not c.ssl_root_cert_pem:
            kwargs["sslrootcert"] = system_ca_file(os.environ) or "system"
        files = {"sslrootcert": c.ssl_root_cert_pem, "sslcert": c.ssl_cert_pem, "sslkey": c.ssl_key_pem}
        if any(files.values()):
            self._tmpdir = Path(tempfile.mkdtemp(prefix="notes-pg-"))  # mode 0700
            for name, pem in files.items():
                if pem:
                    kwargs[name] = str(_private_file(self._tmpdir / f"{name}.pem", pem))
        return kwargs

    def _redact(self, text: str) -> str:
        password = self._config.password
        return text.replace(password, "***") if password else text


def _private_file(path: Path, text: str) -> Path:
    """Write ``text`` to a new file readable by this user only (libpq refuses a key others can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return path


def _texts(title: str, body: str) -> dict[str, str]:
    return {"title": title, "body": body, "title_f": title.casefold(), "body_f": body.casefold()}


def _note(row: tuple[Any, ...]) -> Note:
    values = list(row)
    for i in (5, 6):  # created_at, updated_at: ISO-8601 UTC, as the SQLite back end writes them
        values[i] = values[i].astimezone(UTC).isoformat()
    return Note(*values)
