"""Choosing among several identity or xsuaa bindings, the CA-file settings, and the first error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auth import ConfigError, load_settings

URL = {"MCP_RESOURCE_URL": "https://notes.example.com/mcp"}


def identity(name: str, tenant: str) -> dict[str, object]:
    return {"name": name, "label": "identity",
            "credentials": {"url": f"https://{tenant}.accounts.ondemand.com", "clientid": f"{name}-client"}}


def xsuaa(name: str) -> dict[str, object]:
    return {"name": name, "label": "xsuaa", "credentials": {
        "url": f"https://{name}.authentication.eu10.hana.ondemand.com",
        "uaadomain": "authentication.eu10.hana.ondemand.com",
        "clientid": f"sb-{name}", "xsappname": name}}


def vcap(**bindings: list[dict[str, object]]) -> dict[str, str]:
    return {"VCAP_SERVICES": json.dumps(bindings)}


def test_two_identity_bindings_without_a_choice_name_the_setting() -> None:
    env = {**URL, **vcap(identity=[identity("ias-a", "a"), identity("ias-b", "b")])}
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert err.value.setting == "MCP_AUTH_IDENTITY_SERVICE"
    assert "ias-a" in str(err.value) and "ias-b" in str(err.value)


def test_the_named_identity_binding_is_the_one_trusted() -> None:
    env = {**URL, **vcap(identity=[identity("ias-a", "a"), identity("ias-b", "b")]),
           "MCP_AUTH_IDENTITY_SERVICE": "ias-b"}
    settings = load_settings(env)
    assert settings.issuer_urls == ("https://b.accounts.ondemand.com",)
    assert settings.issuers[0].audiences[0] == "ias-b-client"


def test_naming_an_identity_binding_that_is_not_bound_is_an_error() -> None:
    env = {**URL, **vcap(identity=[identity("ias-a", "a")]), "MCP_AUTH_IDENTITY_SERVICE": "ias-x"}
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert err.value.setting == "MCP_AUTH_IDENTITY_SERVICE"
    assert "ias-a" in str(err.value)


def test_one_identity_binding_needs_no_choice() -> None:
    settings = load_settings({**URL, **vcap(identity=[identity("ias-a", "a")])})
    assert settings.issuer_urls == ("https://a.accounts.ondemand.com",)


def test_two_xsuaa_bindings_without_a_choice_name_their_setting() -> None:
    env = {**URL, **vcap(identity=[identity("ias-a", "a")], xsuaa=[xsuaa("xs-a"), xsuaa("xs-b")])}
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert err.value.setting == "MCP_AUTH_XSUAA_SERVICE"
    env["MCP_AUTH_XSUAA_SERVICE"] = "xs-b"
    issuers = load_settings(env).issuer_urls
    assert issuers == ("https://a.accounts.ondemand.com", "https://xs-b.authentication.eu10.hana.ondemand.com/oauth/token")


def test_with_nothing_configured_the_first_error_names_the_issuer_not_the_resource_url() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({})
    assert err.value.setting == "MCP_AUTH_ISSUER"


def test_ca_file_setting_must_name_an_existing_file(tmp_path: Path) -> None:
    env = {**URL, "MCP_AUTH_ISSUER": "https://a.accounts.ondemand.com", "MCP_AUTH_AUDIENCE": "x"}
    with pytest.raises(ConfigError) as err:
        load_settings({**env, "MCP_AUTH_CA_FILE": str(tmp_path / "missing.pem")})
    assert err.value.setting == "MCP_AUTH_CA_FILE"
    with pytest.raises(ConfigError) as err:
        load_settings({**env, "SSL_CERT_FILE": str(tmp_path / "missing.pem")})
    assert err.value.setting == "SSL_CERT_FILE"


def test_ca_file_wins_over_ssl_cert_file(tmp_path: Path) -> None:
    ours, system = tmp_path / "ours.pem", tmp_path / "system.pem"
    ours.write_text("x")
    system.write_text("y")
    env = {**URL, "MCP_AUTH_ISSUER": "https://a.accounts.ondemand.com", "MCP_AUTH_AUDIENCE": "x",
           "MCP_AUTH_CA_FILE": str(ours), "SSL_CERT_FILE": str(system)}
    assert load_settings(env).ca_file == str(ours)
    del env["MCP_AUTH_CA_FILE"]
    assert load_settings(env).ca_file == str(system)
