"""PostgresStore against a real PostgreSQL: schema versions and concurrent migration, outages and
recovery, TLS verified against a binding's CA, client certificates, and no password in any output."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from pathlib import Path

import pytest

from auth import ConfigError
from server._settings import load_server_settings, notes_db_setting, parse_postgres_url
from tests._postgres import APP_ROLE, CERT_ROLE, PostgresServer
from tools import SINGLE_TENANT, PostgresConfig, PostgresStore, StoreUnavailable
from tools._postgres import SCHEMA_VERSION

ALL_VERSIONS = [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # each recorded once, in order


def _config(pg: PostgresServer, dbname: str) -> PostgresConfig:
    return parse_postgres_url(pg.url(dbname), "MCP_NOTES_DB")


def _binding(pg: PostgresServer, dbname: str, **credentials: object) -> dict[str, str]:
    creds = {"hostname": "localhost", "port": str(pg.port), "dbname": dbname, "username": APP_ROLE,
             "password": pg.app_password, **credentials}
    services = {"postgresql-db": [{"label": "postgresql-db", "name": "notes-db", "tags": ["postgresql"],
                                   "credentials": creds}]}
    return {"VCAP_SERVICES": json.dumps(services)}


def _ssl_of_our_connections(pg: PostgresServer, dbname: str) -> set[tuple[bool, str | None]]:
    with pg.admin() as conn:
        rows = conn.execute(
            "SELECT s.ssl, s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE a.datname = %s AND a.application_name = 'notes-mcp'", (dbname,)
        ).fetchall()
    return {(bool(r[0]), r[1]) for r in rows}


# -- schema ----------------------------------------------------------------------------------------


async def test_schema_version_is_recorded_once_and_reopening_is_idempotent(postgres: PostgresServer) -> None:
    dbname = postgres.new_database()
    for _ in range(2):
        store = PostgresStore(_config(postgres, dbname))
        await store.open()
        await store.create(SINGLE_TENANT, "t", "", "app")
        await store.aclose()
    with postgres.admin(dbname) as conn:
        assert conn.execute("SELECT version FROM notes_schema_version ORDER BY version").fetchall() == ALL_VERSIONS
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (2,)


async def test_instances_starting_at_once_migrate_once_without_errors(postgres: PostgresServer) -> None:
    dbname = postgres.new_database()
    stores = [PostgresStore(_config(postgres, dbname), timeout=10) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))  # six instances race for the empty database
    try:
        notes = await asyncio.gather(*(s.create(SINGLE_TENANT, f"from {i}", "", f"i{i}") for i, s in enumerate(stores)))
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))
    assert len({n.id for n in notes}) == 6
    with postgres.admin(dbname) as conn:
        assert conn.execute("SELECT version FROM notes_schema_version ORDER BY version").fetchall() == ALL_VERSIONS


async def test_a_database_with_a_newer_schema_is_refused(postgres: PostgresServer) -> None:
    dbname = postgres.new_database()
    store = PostgresStore(_config(postgres, dbname))
    await store.open()
    await store.aclose()
    with postgres.admin(dbname) as conn:
        conn.execute("INSERT INTO notes_schema_version (version) VALUES (99)")
    newer = PostgresStore(_config(postgres, dbname))
    with pytest.raises(RuntimeError, match="schema version 99 is newer"):
        await newer.open()
    await newer.aclose()


# -- outages ---------------------------------------------------------------------------------------


async def test_calls_fail_fast_while_the_database_is_down_and_recover_without_reopening(
    postgres: PostgresServer,
) -> None:
    store = PostgresStore(_config(postgres, postgres.new_database()), timeout=1.0)
    await store.open()
    try:
        before = await store.create(SINGLE_TENANT, "before", "", "app")
        postgres.stop()
        try:
            calls = (store.list(SINGLE_TENANT, 10), store.create(SINGLE_TENANT, "during", "", "app"),
                     store.get(SINGLE_TENANT, before.id))
            for call in calls:
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="the notes store is unavailable"):
                    await call
                assert time.monotonic() - started < 10  # 1 s timeout; generous margin
            assert await store.ping() is False
        finally:
            postgres.start()
        deadline = time.monotonic() + 30
        while not await store.ping():
            assert time.monotonic() < deadline, "no recovery within 30 s"
            await asyncio.sleep(0.2)
        after = await store.create(SINGLE_TENANT, "after", "", "app")
        assert [n.title for n in await store.list(SINGLE_TENANT, 10)] == ["after", "before"]
        assert after.id > before.id
    finally:
        await store.aclose()


async def test_a_store_opened_while_the_database_is_down_sets_up_the_schema_when_it_returns(
    postgres: PostgresServer,
) -> None:
    dbname = postgres.new_database()
    postgres.stop()
    try:
        store = PostgresStore(_config(postgres, dbname), timeout=1.0)
        await store.open()  # does not fail the start: /ready reports it instead
        assert await store.ping() is False
    finally:
        postgres.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                note = await store.create(SINGLE_TENANT, "first", "", "app")
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert await store.get(SINGLE_TENANT, note.id) == note
    finally:
        await store.aclose()


async def test_a_slow_statement_is_cut_off_by_the_timeout(postgres: PostgresServer) -> None:
    dbname = postgres.new_database()
    store = PostgresStore(_config(postgres, dbname), timeout=1.0)
    await store.open()
    note = await store.create(SINGLE_TENANT, "locked", "", "app")
    blocker = postgres.admin(dbname)
    try:
        blocker.autocommit = False
        blocker.execute("SELECT * FROM notes WHERE id = %s FOR UPDATE", (note.id,))  # holds the row lock
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.update(SINGLE_TENANT, note.id, "waits", "", "app")
        assert time.monotonic() - started < 10
    finally:
        blocker.rollback()
        blocker.close()
    assert (await store.update(SINGLE_TENANT, note.id, "free again", "", "app")).title == "free again"
    await store.aclose()


# -- TLS from a Cloud Foundry binding --------------------------------------------------------------


async def test_binding_with_sslrootcert_connects_with_tls_verifying_the_server(postgres: PostgresServer) -> None:
    dbname = postgres.new_database()
    config = notes_db_setting(_binding(postgres, dbname, sslrootcert=postgres.ca_pem))
    assert isinstance(config, PostgresConfig) and dict(config.params)["sslmode"] == "verify-full"
    store = PostgresStore(config)
    await store.open()
    try:
        tmpdir = store._tmpdir
        assert tmpdir is not None
        ca_file = tmpdir / "sslrootcert.pem"
        assert stat.S_IMODE(ca_file.stat().st_mode) == 0o600 and stat.S_IMODE(tmpdir.stat().st_mode) == 0o700
        await store.create(SINGLE_TENANT, "over tls", "", "app")
        assert _ssl_of_our_connections(postgres, dbname) == {(True, None)}
    finally:
        await store.aclose()
    assert not tmpdir.exists()


async def test_binding_with_a_foreign_ca_does_not_connect(postgres: PostgresServer) -> None:
    foreign_ca = _other_ca_pem()
    dbname = postgres.new_database()
    store = PostgresStore(notes_db_setting(_binding(postgres, dbname, sslrootcert=foreign_ca)), timeout=1.0)
    await store.open()
    try:
        with pytest.raises(StoreUnavailable):
            await store.list(SINGLE_TENANT, 10)
    finally:
        await store.aclose()


async def test_binding_with_sslcert_and_sslkey_authenticates_with_the_client_certificate(
    postgres: PostgresServer,
) -> None:
    dbname = postgres.new_database(owner=CERT_ROLE)
    with_cert = _binding(postgres, dbname, username=CERT_ROLE, sslrootcert=postgres.ca_pem,
                         sslcert=postgres.client_cert_pem, sslkey=postgres.client_key_pem)
    store = PostgresStore(notes_db_setting(with_cert))
    await store.open()
    try:
        await store.create(SINGLE_TENANT, "with a client certificate", "", "app")
        assert _ssl_of_our_connections(postgres, dbname) == {(True, f"/CN={CERT_ROLE}")}
    finally:
        await store.aclose()
    # The same role without the certificate is turned away (pg_hba: clientcert=verify-full).
    without = PostgresStore(notes_db_setting(_binding(postgres, dbname, username=CERT_ROLE,
                                                      sslrootcert=postgres.ca_pem)), timeout=1.0)
    await without.open()
    try:
        assert await without.ping() is False
    finally:
        await without.aclose()


def _other_ca_pem() -> str:
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    from server._devcerts import new_ca

    ca, _ = new_ca("some other CA", now=dt.datetime.now(dt.UTC), days=1)
    return ca.public_bytes(serialization.Encoding.PEM).decode()


# -- the password never shows ----------------------------------------------------------------------


async def test_the_password_never_appears_in_logs_errors_or_reprs(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    dbname = postgres.new_database()
    secret = postgres.app_password
    good = _config(postgres, dbname)
    wrong_password = parse_postgres_url(postgres.url(dbname).replace("pw%3A", "px%3A"), "MCP_NOTES_DB")
    wrong_port = PostgresConfig(host="127.0.0.1", port=1, dbname=dbname, user=APP_ROLE, password=secret)
    texts: list[str] = [repr(good), good.describe(), repr(PostgresStore(good))]
    for config in (good, wrong_password, wrong_port):
        store = PostgresStore(config, timeout=1.0)
        await store.open()
        try:
            await store.create(SINGLE_TENANT, "x", "", "app")
        except StoreUnavailable as exc:
            texts += [str(exc), repr(exc), repr(exc.__cause__), repr(exc.__context__)]
        await store.ping()
        await store.aclose()
    settings = load_server_settings({"MCP_NOTES_DB": postgres.url(dbname), "MCP_AUTH_ISSUER": "https://ias.example",
                                     "MCP_CLIENT_ID": "c", "MCP_RESOURCE_URL": "https://notes.example/mcp"})
    texts.append(repr(settings))
    everything = "\n".join(texts) + caplog.text
    assert "password authentication failed" in caplog.text  # the failures were really logged
    assert secret not in everything
    assert secret.split("#")[-1] not in everything  # nor its random part, in any quoting


# -- TLS without a binding CA (issue 15 item 9) ----------------------------------------------------------


def _url_without_tls_params(pg: PostgresServer, dbname: str, **params: str) -> str:
    base = pg.url(dbname).split("?")[0]
    return base + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


async def _connects(config: PostgresConfig, pg: PostgresServer) -> set[tuple[bool, str | None]] | None:
    """Whether a store on ``config`` reaches the database: None if not, else its connections' TLS state."""
    store = PostgresStore(config, timeout=2.0)
    await store.open()
    try:
        return _ssl_of_our_connections(pg, config.dbname) if await store.ping() else None
    finally:
        await store.aclose()


async def test_verify_full_against_the_servers_ca_connects_and_a_wrong_ca_is_refused(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    dbname = postgres.new_database()
    right = notes_db_setting({"MCP_NOTES_DB": postgres.url(dbname, sslmode="verify-full")})
    assert isinstance(right, PostgresConfig)
    assert dict(right.params) == {"sslmode": "verify-full", "sslrootcert": str(postgres.ca_file)}
    assert await _connects(right, postgres) == {(True, None)}
    wrong_ca = tmp_path / "other-ca.pem"
    wrong_ca.write_text(_other_ca_pem())
    wrong = notes_db_setting({"MCP_NOTES_DB": postgres.url(dbname, sslmode="verify-full", sslrootcert=str(wrong_ca))})
    assert isinstance(wrong, PostgresConfig) and await _connects(wrong, postgres) is None


async def test_without_sslmode_the_system_trust_store_decides(postgres: PostgresServer, tmp_path: Path) -> None:
    # On 0.2.0 no sslmode meant libpq's "prefer": TLS unverified, and plaintext when TLS failed.
    dbname = postgres.new_database()
    url = _url_without_tls_params(postgres, dbname)
    trusting = notes_db_setting({"MCP_NOTES_DB": url, "SSL_CERT_FILE": str(postgres.ca_file)})
    assert isinstance(trusting, PostgresConfig) and dict(trusting.params)["sslmode"] == "verify-full"
    assert await _connects(trusting, postgres) == {(True, None)}  # the bundle holds the server's CA
    bundle = tmp_path / "system.pem"
    bundle.write_text(_other_ca_pem())
    distrusting = notes_db_setting({"MCP_NOTES_DB": url, "SSL_CERT_FILE": str(bundle)})
    assert isinstance(distrusting, PostgresConfig)
    assert await _connects(distrusting, postgres) is None  # refused: no unverified fallback, no plaintext


async def test_a_config_built_in_code_without_sslmode_verifies_too(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dbname = postgres.new_database()
    config = PostgresConfig(host="127.0.0.1", port=postgres.port, dbname=dbname, user=APP_ROLE,
                            password=postgres.app_password)
    monkeypatch.setenv("SSL_CERT_FILE", str(postgres.ca_file))
    assert await _connects(config, postgres) == {(True, None)}
    other = tmp_path / "another-ca.pem"
    other.write_text(_other_ca_pem())
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    assert await _connects(config, postgres) is None


async def test_plaintext_to_a_loopback_database_only_with_the_explicit_setting(postgres: PostgresServer) -> None:
    dbname = postgres.new_database()
    url = _url_without_tls_params(postgres, dbname, sslmode="disable")
    with pytest.raises(ConfigError, match="MCP_NOTES_DB: sslmode=disable may connect without TLS"):
        notes_db_setting({"MCP_NOTES_DB": url})
    config = notes_db_setting({"MCP_NOTES_DB": url, "MCP_NOTES_DB_ALLOW_PLAINTEXT": "true"})
    assert isinstance(config, PostgresConfig) and await _connects(config, postgres) == {(False, None)}
