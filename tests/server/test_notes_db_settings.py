"""Choosing the notes database: MCP_NOTES_DB (path or URL), a postgresql-db binding, MCP_NOTES_DB_TIMEOUT.

Every refusal names the setting, and no message or repr carries the password.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auth import ConfigError
from server._settings import _db_timeout, notes_db_setting, parse_postgres_url
from tools import PostgresConfig

SECRET = "s3cr:t/@pw"  # reserved URL characters, percent-encoded in URLs
SECRET_Q = "s3cr%3At%2F%40pw"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _vcap(*bindings: dict[str, object], label: str = "postgresql-db") -> dict[str, str]:
    return {"VCAP_SERVICES": json.dumps({label: list(bindings)})}


def _creds(**extra: object) -> dict[str, object]:
    return {"hostname": "pg.example.internal", "port": "6543", "dbname": "notes", "username": "app",
            "password": SECRET, **extra}


def test_default_is_the_sqlite_file_in_data() -> None:
    assert notes_db_setting({}) == Path("data/notes.db")


def test_a_path_is_sqlite() -> None:
    assert notes_db_setting({"MCP_NOTES_DB": " /var/x/notes.db "}) == Path("/var/x/notes.db")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_a_postgres_url_is_parsed_with_the_password_decoded(scheme: str) -> None:
    config = notes_db_setting({"MCP_NOTES_DB": f"{scheme}://app:{SECRET_Q}@db.example:6543/notes?sslmode=require"})
    assert config == PostgresConfig(host="db.example", port=6543, dbname="notes", user="app", password=SECRET,
                                    params=(("sslmode", "require"),))


def test_url_defaults_port_5432_and_the_user_as_database() -> None:
    config = parse_postgres_url("postgresql://app:pw@db.example", "MCP_NOTES_DB")
    assert (config.port, config.dbname) == (5432, "app")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"mysql://app:{SECRET_Q}@h/db", "must be a SQLite file path or a postgresql:// URL"),
        (f"postgresql://app:{SECRET_Q}@h:notaport/db", "has an invalid port"),
        (f"postgresql://app:{SECRET_Q}@h:70000/db", "has an invalid port"),
        (f"postgresql://app:{SECRET_Q}@/db", "has no host"),
        (f"postgresql://app:{SECRET_Q}@h1,h2/db", "names several hosts"),
        (f"postgresql://app:{SECRET_Q}@h/db?sslmode=maybe", "sslmode must be one of"),
        (f"postgresql://app:{SECRET_Q}@h/db?password=x", "unsupported parameter 'password'"),
        (f"postgresql://app:{SECRET_Q}@h/db#frag", "must not have a #fragment"),
    ],
)
def test_a_malformed_url_stops_the_start_naming_the_setting_not_the_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        notes_db_setting({"MCP_NOTES_DB": url})
    assert caught.value.setting == "MCP_NOTES_DB"
    assert problem in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET_Q not in str(caught.value) and "s3cr" not in str(caught.value)


def test_config_repr_and_description_leave_out_password_and_key() -> None:
    config = PostgresConfig(host="h", user="app", password=SECRET, ssl_key_pem="-----BEGIN PRIVATE KEY-----x")
    for text in (repr(config), config.describe()):
        assert SECRET not in text and "PRIVATE KEY" not in text
    assert config.describe() == "postgresql://app@h:5432/postgres (sslmode=prefer)"


# -- the Cloud Foundry binding -----------------------------------------------------------------------


def test_binding_fields_are_used_when_mcp_notes_db_is_unset() -> None:
    config = notes_db_setting(_vcap({"name": "notes-db", "credentials": _creds(uri="postgres://ignored")}))
    assert config == PostgresConfig(host="pg.example.internal", port=6543, dbname="notes", user="app",
                                    password=SECRET, source="VCAP_SERVICES")


def test_mcp_notes_db_wins_over_the_binding() -> None:
    env = {**_vcap({"credentials": _creds()}), "MCP_NOTES_DB": "/tmp/x.db"}
    assert notes_db_setting(env) == Path("/tmp/x.db")


def test_binding_found_by_tag_under_another_label() -> None:
    env = _vcap({"name": "db", "tags": ["relational", "postgresql"], "credentials": _creds()}, label="user-provided")
    assert isinstance(notes_db_setting(env), PostgresConfig)


def test_other_bindings_leave_sqlite() -> None:
    env = _vcap({"name": "ias", "tags": ["ias"], "credentials": {"clientid": "x"}}, label="identity")
    assert notes_db_setting(env) == Path("data/notes.db")


def test_binding_with_only_a_uri_uses_it() -> None:
    uri = f"postgres://app:{SECRET_Q}@pg.example:5432/notes"
    config = notes_db_setting(_vcap({"credentials": {"uri": uri}}))
    assert isinstance(config, PostgresConfig)
    assert (config.host, config.password, config.source) == ("pg.example", SECRET, "VCAP_SERVICES")


@pytest.mark.parametrize(("host", "mode"), [("pg.example.internal", "verify-full"), ("10.1.2.3", "verify-ca")])
def test_sslrootcert_turns_on_verified_tls(host: str, mode: str) -> None:
    config = notes_db_setting(_vcap({"credentials": _creds(hostname=host, sslrootcert=CA)}))
    assert isinstance(config, PostgresConfig)
    assert dict(config.params)["sslmode"] == mode
    assert config.ssl_root_cert_pem == CA and config.ssl_cert_pem is None
    assert CA not in repr(config)


def test_client_certificate_from_sslcert_and_sslkey() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n"
    config = notes_db_setting(_vcap({"credentials": _creds(sslrootcert=CA, sslcert=CA, sslkey=key)}))
    assert isinstance(config, PostgresConfig) and (config.ssl_cert_pem, config.ssl_key_pem) == (CA, key)
    assert "AAA" not in repr(config)


@pytest.mark.parametrize(
    ("vcap", "problem"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({"postgresql-db": [{"name": "a", "credentials": _creds()},
                                       {"name": "b", "credentials": _creds()}]}), "2 PostgreSQL bindings ('a', 'b')"),
        (json.dumps({"postgresql-db": [{"name": "a"}]}), "has no credentials object"),
        (json.dumps({"postgresql-db": [{"credentials": {"hostname": "h"}}]}), "needs uri, or hostname"),
        (json.dumps({"postgresql-db": [{"credentials": _creds(port="x")}]}), "port must be a TCP port number"),
        (json.dumps({"postgresql-db": [{"credentials": _creds(sslrootcert="not pem")}]}), "sslrootcert must be PEM"),
        (json.dumps({"postgresql-db": [{"credentials": _creds(sslcert=CA)}]}), "sslcert and sslkey go together"),
        (json.dumps({"postgresql-db": [{"credentials": {"uri": f"postgres://u:{SECRET_Q}@h:x/d"}}]}), "invalid port"),
    ],
)
def test_a_malformed_binding_stops_the_start_naming_vcap_services(vcap: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        notes_db_setting({"VCAP_SERVICES": vcap})
    assert caught.value.setting.startswith("VCAP_SERVICES")
    assert problem in str(caught.value)
    assert "s3cr" not in str(caught.value)


# -- the timeout ----------------------------------------------------------------------------------------


def test_timeout_defaults_to_three_seconds_and_accepts_fractions() -> None:
    assert _db_timeout({}) == 3.0
    assert _db_timeout({"MCP_NOTES_DB_TIMEOUT": "1.5"}) == 1.5


@pytest.mark.parametrize("raw", ["0", "0.1", "61", "soon", "nan", "inf", "-3"])
def test_timeout_out_of_range_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="MCP_NOTES_DB_TIMEOUT: must be a number of seconds from 0.5 to 60"):
        _db_timeout({"MCP_NOTES_DB_TIMEOUT": raw})
