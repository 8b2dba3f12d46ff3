"""Choosing the notes database: MCP_NOTES_DB (path or URL), a postgresql-db binding, MCP_NOTES_DB_TIMEOUT,
and how it is reached: verified TLS unless MCP_NOTES_DB_ALLOW_PLAINTEXT allows a loopback database without.

Every refusal names the setting, and no message or repr carries the password.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auth import ConfigError
from server._settings import _db_timeout, load_server_settings, notes_db_setting, parse_postgres_url
from tools import PostgresConfig

SECRET = "s3cr:t/@pw"  # reserved URL characters, percent-encoded in URLs
SECRET_Q = "s3cr%3At%2F%40pw"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def system_ca(tmp_path: Path) -> dict[str, str]:
    """An environment whose system CA bundle (``SSL_CERT_FILE``, as OpenSSL reads it) is a file of ours."""
    bundle = tmp_path / "system-ca.pem"
    bundle.write_text(CA)
    return {"SSL_CERT_FILE": str(bundle)}


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
def test_a_postgres_url_is_parsed_with_the_password_decoded(scheme: str) -> None:  # sslmode=require: kept
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
    assert config.describe() == "postgresql://app@h:5432/postgres (sslmode=verify-full)"


# -- the Cloud Foundry binding -----------------------------------------------------------------------


def test_binding_fields_are_used_when_mcp_notes_db_is_unset(system_ca: dict[str, str]) -> None:
    config = notes_db_setting({**system_ca, **_vcap({"name": "notes-db", "credentials": _creds(uri="postgres://x")})})
    assert config == PostgresConfig(host="pg.example.internal", port=6543, dbname="notes", user="app",
                                    password=SECRET, source="VCAP_SERVICES",
                                    params=(("sslmode", "verify-full"), ("sslrootcert", system_ca["SSL_CERT_FILE"])))


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


# -- TLS to the database (issue 15 item 9) ----------------------------------------------------------------


def _url(query: str = "", host: str = "db.example") -> str:
    return f"postgresql://app:{SECRET_Q}@{host}:5432/notes" + (f"?{query}" if query else "")


def test_without_sslmode_the_server_is_verified_by_name_against_the_system_ca_bundle(
    system_ca: dict[str, str],
) -> None:
    for env in ({"MCP_NOTES_DB": _url()}, _vcap({"credentials": _creds()}), _vcap({"credentials": {"uri": _url()}})):
        config = notes_db_setting({**system_ca, **env})
        assert isinstance(config, PostgresConfig)
        assert dict(config.params) == {"sslmode": "verify-full", "sslrootcert": system_ca["SSL_CERT_FILE"]}
        assert config.describe().endswith("(sslmode=verify-full)")


def test_a_ca_of_the_url_or_the_binding_is_used_instead_of_the_system_bundle(system_ca: dict[str, str]) -> None:
    from_url = notes_db_setting({**system_ca, "MCP_NOTES_DB": _url("sslmode=verify-ca&sslrootcert=/etc/db-ca.pem")})
    assert isinstance(from_url, PostgresConfig)
    assert dict(from_url.params) == {"sslmode": "verify-ca", "sslrootcert": "/etc/db-ca.pem"}
    from_binding = notes_db_setting({**system_ca, **_vcap({"credentials": _creds(sslrootcert=CA)})})
    assert isinstance(from_binding, PostgresConfig)
    assert dict(from_binding.params) == {"sslmode": "verify-full"} and from_binding.ssl_root_cert_pem == CA


def test_sslmode_require_is_respected(system_ca: dict[str, str]) -> None:
    config = notes_db_setting({**system_ca, "MCP_NOTES_DB": _url("sslmode=require")})
    assert isinstance(config, PostgresConfig) and dict(config.params) == {"sslmode": "require"}


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_a_mode_that_may_fall_back_to_plaintext_is_refused_naming_the_setting(
    system_ca: dict[str, str], mode: str
) -> None:
    for env, setting in (({"MCP_NOTES_DB": _url(f"sslmode={mode}")}, "MCP_NOTES_DB"),
                         ({"MCP_NOTES_DB": _url(f"sslmode={mode}", host="127.0.0.1")}, "MCP_NOTES_DB"),
                         (_vcap({"credentials": {"uri": _url(f"sslmode={mode}")}}), "VCAP_SERVICES")):
        with pytest.raises(ConfigError) as caught:
            notes_db_setting({**system_ca, **env})
        assert caught.value.setting == setting
        assert f"sslmode={mode} may connect without TLS" in str(caught.value)
        assert "MCP_NOTES_DB_ALLOW_PLAINTEXT=true" in str(caught.value) and "s3cr" not in str(caught.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
@pytest.mark.parametrize("mode", ["disable", "prefer"])
def test_plaintext_is_allowed_for_a_loopback_database_when_the_setting_says_so(host: str, mode: str) -> None:
    config = notes_db_setting({"MCP_NOTES_DB": _url(f"sslmode={mode}", host=host),
                               "MCP_NOTES_DB_ALLOW_PLAINTEXT": "true"})
    assert isinstance(config, PostgresConfig) and dict(config.params) == {"sslmode": mode}


def test_allowing_plaintext_does_not_change_the_default(system_ca: dict[str, str]) -> None:
    config = notes_db_setting({**system_ca, "MCP_NOTES_DB": _url(host="127.0.0.1"),
                               "MCP_NOTES_DB_ALLOW_PLAINTEXT": "true"})
    assert isinstance(config, PostgresConfig) and dict(config.params)["sslmode"] == "verify-full"


@pytest.mark.parametrize("env", [
    {"MCP_NOTES_DB": _url("sslmode=disable", host="db.example")},
    {"MCP_NOTES_DB": _url("sslmode=verify-full", host="10.0.0.5")},  # even when TLS is asked for
    _vcap({"credentials": _creds(hostname="127.0.0.1.nip.io", sslrootcert=CA)}),
])
def test_the_plaintext_setting_is_refused_for_a_database_off_loopback(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        notes_db_setting({**env, "MCP_NOTES_DB_ALLOW_PLAINTEXT": "true"})
    assert caught.value.setting == "MCP_NOTES_DB_ALLOW_PLAINTEXT"
    assert "accepted only for a database on loopback" in str(caught.value) and "s3cr" not in str(caught.value)


def test_the_plaintext_setting_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="MCP_NOTES_DB_ALLOW_PLAINTEXT: must be true or false"):
        notes_db_setting({"MCP_NOTES_DB": _url(host="127.0.0.1"), "MCP_NOTES_DB_ALLOW_PLAINTEXT": "sometimes"})


def test_without_a_system_ca_bundle_verification_has_nothing_to_trust_and_the_start_stops(tmp_path: Path) -> None:
    missing = {"SSL_CERT_FILE": str(tmp_path / "no-such-bundle.pem")}
    cases = (({"MCP_NOTES_DB": _url()}, "MCP_NOTES_DB"), (_vcap({"credentials": _creds()}), "VCAP_SERVICES"))
    for env, setting in cases:
        with pytest.raises(ConfigError) as caught:
            notes_db_setting({**missing, **env})
        assert caught.value.setting == setting
        assert "no system CA bundle was found" in str(caught.value) and "SSL_CERT_FILE" in str(caught.value)
    # A CA of its own, or a mode that verifies nothing, needs no bundle.
    assert notes_db_setting({**missing, "MCP_NOTES_DB": _url("sslmode=require")})
    assert notes_db_setting({**missing, **_vcap({"credentials": _creds(sslrootcert=CA)})})


def test_the_server_settings_carry_the_verified_mode(system_ca: dict[str, str]) -> None:
    settings = load_server_settings({**system_ca, "MCP_NOTES_DB": _url(), "MCP_AUTH_ISSUER": "https://ias.example",
                                     "MCP_AUTH_AUDIENCE": "c", "MCP_RESOURCE_URL": "https://notes.example/mcp"})
    assert isinstance(settings.notes_db, PostgresConfig)
    assert dict(settings.notes_db.params)["sslmode"] == "verify-full"
