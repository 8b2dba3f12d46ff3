"""Kubernetes service bindings (SERVICE_BINDING_ROOT) read exactly as the same bindings in VCAP_SERVICES.

Each layout (the SAP BTP service operator's default, its ``secretKey`` form, servicebinding.io)
is mounted the way the kubelet mounts a Secret, and must give the very settings the
``VCAP_SERVICES`` entry gives; then a missing key and a malformed JSON value per layout, and the
precedence rules shared with Cloud Foundry.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from auth import ConfigError, load_settings
from auth._service_bindings import service_bindings
from server._settings import notes_db_setting
from tests.deploy._bindings import mount_secret, operator_secret, servicebinding_io

URL = {"MCP_RESOURCE_URL": "https://notes-mcp.c-1a2b.kyma.ondemand.com/mcp"}
CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

IDENTITY = {  # ias.md: an X509_GENERATED identity binding
    "clientid": "21ad7bc4-79b2-48a7-8346-6806d385bf15",
    "credential-type": "X509_GENERATED",
    "certificate": CERT,
    "key": KEY,
    "certificate_expires_at": "2026-02-09T19:53:07Z",
    "url": "https://awdsp8ef4.accounts.ondemand.com",
    "domains": ["accounts.ondemand.com", "accounts.cloud.sap"],
    "domain": "accounts.ondemand.com",
    "app_tid": "7b20408e-3fe0-4ade-aa2e-ad97baac72e8",
}
XSUAA = {
    "clientid": "sb-notes-mcp!t5874", "xsappname": "notes-mcp!t5874",
    "url": "https://sub.authentication.eu10.hana.ondemand.com", "uaadomain": "authentication.eu10.hana.ondemand.com",
    "zoneid": "0f2e6c3a-0000-4000-8000-000000000001", "identityzone": "sub", "clientsecret": "not-a-real-secret",
}
POSTGRES = {
    "hostname": "pg.example.internal", "port": "6543", "dbname": "notes", "username": "app",
    "password": '{"pw": s3cr:t/@', "sslrootcert": CA, "uri": "postgres://app@pg.example.internal:6543/notes",
}
SERVICES = {"identity": ("identity", "application", IDENTITY), "xsuaa": ("xsuaa", "application", XSUAA),
            "postgresql-db": ("postgresql-db", "trial", POSTGRES)}
INSTANCE = {"identity": "notes-mcp-ias", "xsuaa": "notes-mcp-xsuaa", "postgresql-db": "notes-mcp-db"}
LAYOUTS = ["operator", "operator-secretKey", "servicebinding.io"]


def _data(layout: str, label: str, credentials: dict[str, Any]) -> dict[str, str]:
    offering, plan, _ = SERVICES[label]
    tags = ["relational", "database", "postgresql"] if label == "postgresql-db" else None
    if layout == "servicebinding.io":
        text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in credentials.items()}
        return servicebinding_io(text, type_=offering, provider="sap")
    secret_key = "credentials" if layout == "operator-secretKey" else None
    return operator_secret(credentials, offering=offering, instance_name=INSTANCE[label], plan=plan, tags=tags,
                           secret_key=secret_key)


def _mounted(tmp_path: Path, layout: str, *bindings: tuple[str, dict[str, Any]]) -> dict[str, str]:
    root = tmp_path / "bindings"
    root.mkdir(exist_ok=True)
    for label, credentials in bindings:
        mount_secret(root, f"{INSTANCE[label]}-binding", _data(layout, label, credentials))
    return {"SERVICE_BINDING_ROOT": str(root)}


def _vcap(*bindings: tuple[str, dict[str, Any]]) -> dict[str, str]:
    services: dict[str, list[dict[str, Any]]] = {}
    for label, credentials in bindings:
        offering, plan, _ = SERVICES[label]
        tags = ["relational", "database", "postgresql"] if label == "postgresql-db" else []
        services.setdefault(offering, []).append(
            {"label": offering, "plan": plan, "name": INSTANCE[label], "tags": tags, "credentials": credentials})
    return {"VCAP_SERVICES": json.dumps(services)}


# -- valid: the same settings as from VCAP_SERVICES ---------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_identity_and_xsuaa_bindings_give_the_settings_vcap_services_gives(tmp_path: Path, layout: str) -> None:
    xsuaa = dict(XSUAA)
    bindings = (("identity", IDENTITY), ("xsuaa", xsuaa))
    mounted = load_settings({**URL, **_mounted(tmp_path, layout, *bindings)})
    assert mounted == load_settings({**URL, **_vcap(*bindings)})
    assert mounted.issuer_urls == ("https://awdsp8ef4.accounts.ondemand.com",
                                   "https://sub.authentication.eu10.hana.ondemand.com/oauth/token")
    assert mounted.issuers[0].audiences[0] == IDENTITY["clientid"]
    assert mounted.issuers[0].app_tid == IDENTITY["app_tid"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_x509_credentials_arrive_byte_for_byte(tmp_path: Path, layout: str) -> None:
    (entry,) = service_bindings(_mounted(tmp_path, layout, ("identity", IDENTITY)))["identity"]
    creds = entry["credentials"]
    assert (creds["certificate"], creds["key"], creds["credential-type"]) == (CERT, KEY, "X509_GENERATED")
    if layout != "servicebinding.io":  # JSON values come back as JSON where the operator says so
        assert creds == IDENTITY and entry["instance_name"] == "notes-mcp-ias" and entry["plan"] == "application"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_multi_tenant_domains_come_from_the_mounted_binding(tmp_path: Path, layout: str) -> None:
    env = {**URL, "MCP_AUTH_MULTI_TENANT": "true", **_mounted(tmp_path, layout, ("identity", IDENTITY))}
    if layout == "servicebinding.io":  # text only: a JSON-looking value is never guessed into a list
        with pytest.raises(ConfigError) as err:
            load_settings(env)
        assert err.value.setting == "MCP_AUTH_IAS_DOMAINS"
        assert load_settings({**env, "MCP_AUTH_IAS_DOMAINS": "accounts.ondemand.com"}).issuers[0].domains == (
            "accounts.ondemand.com",)
    else:
        assert load_settings(env).issuers[0].domains == ("accounts.ondemand.com", "accounts.cloud.sap")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_postgresql_binding_gives_the_config_vcap_services_gives(tmp_path: Path, layout: str) -> None:
    mounted = notes_db_setting(_mounted(tmp_path, layout, ("postgresql-db", POSTGRES)))
    from_vcap = notes_db_setting(_vcap(("postgresql-db", POSTGRES)))
    assert mounted == replace(from_vcap, source=mounted.source)
    assert mounted.source == "SERVICE_BINDING_ROOT/notes-mcp-db-binding"
    assert mounted.password == POSTGRES["password"]  # a value that looks like JSON stays text in every layout
    assert mounted.ssl_root_cert_pem == CA and dict(mounted.params)["sslmode"] == "verify-full"


# -- missing key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_identity_binding_without_url_fails_as_in_vcap_services(tmp_path: Path, layout: str) -> None:
    creds = {k: v for k, v in IDENTITY.items() if k != "url"}
    errors = []
    for env in (_mounted(tmp_path, layout, ("identity", creds)), _vcap(("identity", creds))):
        with pytest.raises(ConfigError) as err:
            load_settings({**URL, **env})
        errors.append((err.value.setting, str(err.value)))
    assert errors[0] == errors[1] and errors[0][0] == "MCP_AUTH_ISSUER"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_postgresql_binding_without_password_or_uri_names_the_folder(tmp_path: Path, layout: str) -> None:
    creds = {k: v for k, v in POSTGRES.items() if k not in ("password", "uri")}
    with pytest.raises(ConfigError) as err:
        notes_db_setting(_mounted(tmp_path, layout, ("postgresql-db", creds)))
    assert err.value.setting == "SERVICE_BINDING_ROOT/notes-mcp-db-binding"
    assert "needs uri, or hostname, username and password" in str(err.value)
    with pytest.raises(ConfigError) as vcap_err:
        notes_db_setting(_vcap(("postgresql-db", creds)))
    assert str(vcap_err.value).split(": ", 1)[1] == str(err.value).split(": ", 1)[1]


def test_a_key_left_out_of_the_mount_is_absent_not_an_error(tmp_path: Path) -> None:
    env = _mounted(tmp_path, "operator", ("identity", IDENTITY))
    os.unlink(Path(env["SERVICE_BINDING_ROOT"]) / "notes-mcp-ias-binding" / "key")  # volume `items:` left it out
    (entry,) = service_bindings(env)["identity"]
    assert "key" not in entry["credentials"] and entry["credentials"]["certificate"] == CERT


# -- malformed JSON value -------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "key"), [("operator", "domains"), ("operator-secretKey", "credentials"),
                                            ("operator", ".metadata"), ("operator", "tags")])
def test_malformed_json_value_names_the_folder_and_file(tmp_path: Path, layout: str, key: str) -> None:
    label = "postgresql-db" if key == "tags" else "identity"
    env = _mounted(tmp_path, layout, (label, POSTGRES if label == "postgresql-db" else IDENTITY))
    folder = Path(env["SERVICE_BINDING_ROOT"]) / f"{INSTANCE[label]}-binding"
    target = (folder / key).resolve()
    target.write_text('["accounts.ondemand.com", ')
    with pytest.raises(ConfigError) as err:
        (load_settings if label == "identity" else notes_db_setting)({**URL, **env})
    assert err.value.setting == f"SERVICE_BINDING_ROOT/{INSTANCE[label]}-binding/{key}"
    assert "is not valid JSON" in str(err.value) and "accounts" not in str(err.value)  # no value echoed


def test_servicebinding_io_never_parses_json(tmp_path: Path) -> None:
    creds = dict(POSTGRES, password='["not", "json"')  # malformed JSON, and a fine password
    config = notes_db_setting(_mounted(tmp_path, "servicebinding.io", ("postgresql-db", creds)))
    assert config.password == '["not", "json"'


def test_servicebinding_io_drops_one_trailing_newline(tmp_path: Path) -> None:
    root = tmp_path / "b"
    mount_secret(root, "ias", {"type": "identity\n", "url": IDENTITY["url"] + "\n", "clientid": "cid\r\n"})
    settings = load_settings({**URL, "SERVICE_BINDING_ROOT": str(root)})
    assert settings.issuer_urls == (IDENTITY["url"],) and settings.issuers[0].audiences[0] == "cid"


# -- precedence and choice, as on Cloud Foundry ----------------------------------------------------


def test_an_identity_binding_in_each_place_needs_a_choice_and_either_name_works(tmp_path: Path) -> None:
    other = dict(IDENTITY, url="https://other.accounts.ondemand.com", clientid="other-client")
    env = {**URL, **_mounted(tmp_path, "operator", ("identity", IDENTITY)), **_vcap(("identity", other))}
    env["VCAP_SERVICES"] = env["VCAP_SERVICES"].replace("notes-mcp-ias", "cf-ias")
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert err.value.setting == "MCP_AUTH_IDENTITY_SERVICE"
    assert "cf-ias" in str(err.value) and "notes-mcp-ias-binding" in str(err.value)
    for name in ("notes-mcp-ias-binding", "notes-mcp-ias"):  # the folder, or the operator's instance_name
        chosen = load_settings({**env, "MCP_AUTH_IDENTITY_SERVICE": name})
        assert chosen.issuer_urls == (IDENTITY["url"],)
    assert load_settings({**env, "MCP_AUTH_IDENTITY_SERVICE": "cf-ias"}).issuer_urls == (other["url"],)


def test_explicit_settings_win_over_mounted_bindings(tmp_path: Path) -> None:
    env = {**URL, **_mounted(tmp_path, "operator", ("identity", IDENTITY), ("postgresql-db", POSTGRES))}
    settings = load_settings({**env, "MCP_AUTH_ISSUER": "https://mine.accounts.ondemand.com", "MCP_AUTH_AUDIENCE": "a"})
    assert settings.issuer_urls == ("https://mine.accounts.ondemand.com",) and settings.issuers[0].audiences[0] == "a"
    assert notes_db_setting({**env, "MCP_NOTES_DB": "/tmp/x.db"}) == Path("/tmp/x.db")


def test_two_postgresql_bindings_are_refused(tmp_path: Path) -> None:
    env = {**_mounted(tmp_path, "operator", ("postgresql-db", POSTGRES)), **_vcap(("postgresql-db", POSTGRES))}
    with pytest.raises(ConfigError) as err:
        notes_db_setting(env)
    assert "2 PostgreSQL bindings" in str(err.value)


# -- the folder itself ------------------------------------------------------------------------------


def test_binding_root_that_is_not_a_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({**URL, "SERVICE_BINDING_ROOT": str(tmp_path / "missing")})
    assert err.value.setting == "SERVICE_BINDING_ROOT"


def test_a_folder_in_neither_layout_is_named(tmp_path: Path) -> None:
    (tmp_path / "b" / "stray").mkdir(parents=True)
    (tmp_path / "b" / "stray" / "url").write_text("https://x")
    with pytest.raises(ConfigError) as err:
        load_settings({**URL, "SERVICE_BINDING_ROOT": str(tmp_path / "b")})
    assert err.value.setting == "SERVICE_BINDING_ROOT/stray" and "type" in str(err.value)


@pytest.mark.parametrize("name", ["../../etc/passwd", ".metadata", "a/b", ""])
def test_metadata_cannot_point_outside_the_folder(tmp_path: Path, name: str) -> None:
    data = operator_secret(IDENTITY, offering="identity", instance_name="x", plan="application")
    meta = json.loads(data[".metadata"])
    meta["credentialProperties"].append({"name": name, "format": "text"})
    data[".metadata"] = json.dumps(meta)
    mount_secret(tmp_path / "b", "ias", data)
    with pytest.raises(ConfigError) as err:
        load_settings({**URL, "SERVICE_BINDING_ROOT": str(tmp_path / "b")})
    assert err.value.setting == "SERVICE_BINDING_ROOT/ias/.metadata"


def test_an_oversized_value_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    mount_secret(tmp_path / "b", "ias", {"type": "identity", "url": "x" * (1024 * 1024)})
    with pytest.raises(ConfigError) as err:
        load_settings({**URL, "SERVICE_BINDING_ROOT": str(tmp_path / "b")})
    assert err.value.setting == "SERVICE_BINDING_ROOT/ias/url"


def test_kubelet_bookkeeping_is_not_a_binding_or_a_credential(tmp_path: Path) -> None:
    env = _mounted(tmp_path, "servicebinding.io", ("identity", IDENTITY))
    root = Path(env["SERVICE_BINDING_ROOT"])
    assert sorted(p.name for p in root.iterdir()) == ["notes-mcp-ias-binding"]
    (entry,) = service_bindings(env)["identity"]
    assert not any(k.startswith(".") for k in entry["credentials"])
    assert set(entry["credentials"]) == set(IDENTITY)
