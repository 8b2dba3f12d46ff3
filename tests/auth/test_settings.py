"""`load_settings` from a plain dict: environment, Cloud Foundry bindings, errors that name the setting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from auth import ConfigError, load_settings

RESOURCE = "https://mcp.example.com/mcp"
IAS_URL = "https://awdsp8ef4.accounts.ondemand.com"
CLIENT_ID = "21ad7bc4-79b2-48a7-8346-6806d385bf15"
APP_TID = "7b20408e-3fe0-4ade-aa2e-ad97baac72e8"

# The identity binding of ias.md, verbatim in shape.
IDENTITY = {"identity": [{"label": "identity", "plan": "application", "name": "mcp-ias", "tags": [],
    "credentials": {
        "clientid": CLIENT_ID,
        "credential-type": "X509_GENERATED",
        "certificate": "-----BEGIN CERTIFICATE-----\nMIIG...\n-----END CERTIFICATE-----\n",
        "key": "-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----\n",
        "certificate_expires_at": "2026-02-09T19:53:07Z",
        "url": IAS_URL,
        "domains": ["accounts.ondemand.com", "accounts.cloud.sap"],
        "domain": "accounts.ondemand.com",
        "app_tid": APP_TID,
        "authorization_endpoint": f"{IAS_URL}/oauth2/authorize",
        "end_session_endpoint": f"{IAS_URL}/oauth2/logout"}}]}

XSUAA = {"xsuaa": [{"label": "xsuaa", "plan": "application", "name": "mcp-xsuaa", "credentials": {
    "clientid": "sb-mcp-server!t5874", "clientsecret": "s3cret", "xsappname": "mcp-server!t5874",
    "uaadomain": "authentication.eu10.hana.ondemand.com",
    "url": "https://sub.authentication.eu10.hana.ondemand.com", "identityzone": "sub", "zoneid": "zone-1",
    "verificationkey": "-----BEGIN PUBLIC KEY-----..."}}]}

VCAP_APPLICATION = json.dumps({"application_uris": ["app.cfapps.eu10.hana.ondemand.com",
                                                    "app.cert.cfapps.eu10.hana.ondemand.com"]})


def env(**values: Any) -> dict[str, str]:
    base = {"MCP_AUTH_ISSUER": IAS_URL, "MCP_RESOURCE_URL": RESOURCE}
    return {k: v for k, v in (base | values).items() if v is not None}


def test_env_vars_configure_issuers_audience_jwks_uri_and_resource() -> None:
    s = load_settings(env(MCP_AUTH_ISSUER=f"{IAS_URL}, https://other.accounts.cloud.sap",
                          MCP_AUTH_AUDIENCE="client-a, client-b", MCP_RESOURCE_URL=RESOURCE + "/"))
    assert s.resource_url == RESOURCE
    assert s.issuer_urls == (IAS_URL, "https://other.accounts.cloud.sap")
    assert all(i.audiences == ("client-a", "client-b", RESOURCE) for i in s.issuers)
    assert all(i.profile == "ias" and i.jwks_uri is None for i in s.issuers)
    single = load_settings(env(MCP_AUTH_JWKS_URI=f"{IAS_URL}/oauth2/certs"))
    assert single.issuers[0].jwks_uri == f"{IAS_URL}/oauth2/certs"


def test_safe_defaults() -> None:
    s = load_settings(env())
    assert s.algorithms == {"RS256"}
    assert s.leeway_s == 60
    assert s.cert_binding == "off"
    assert s.issuers[0].audiences == (RESOURCE,)
    assert s.issuers[0].domains == ()


def test_loopback_http_issuer_is_allowed_for_local_development() -> None:
    assert load_settings(env(MCP_AUTH_ISSUER="http://127.0.0.1:8080/tenant")).issuer_urls == (
        "http://127.0.0.1:8080/tenant",)
    assert load_settings(env(MCP_AUTH_ISSUER="http://localhost:8080")).issuer_urls == ("http://localhost:8080",)


def test_identity_binding_supplies_issuer_client_id_and_app_tid() -> None:
    s = load_settings({"VCAP_SERVICES": json.dumps(IDENTITY), "MCP_RESOURCE_URL": RESOURCE})
    (ias,) = s.issuers
    assert ias.issuer == IAS_URL and ias.profile == "ias"
    assert ias.audiences == (CLIENT_ID, RESOURCE)
    assert (ias.client_id, ias.app_tid) == (CLIENT_ID, APP_TID)
    assert ias.domains == ()  # single tenant unless asked for


def test_identity_binding_supplies_domains_in_multi_tenant_mode() -> None:
    s = load_settings({"VCAP_SERVICES": json.dumps(IDENTITY), "MCP_RESOURCE_URL": RESOURCE,
                       "MCP_AUTH_MULTI_TENANT": "true"})
    assert s.issuers[0].domains == ("accounts.ondemand.com", "accounts.cloud.sap")


def test_env_issuer_and_audience_take_precedence_over_the_binding() -> None:
    s = load_settings({"VCAP_SERVICES": json.dumps(IDENTITY), "MCP_RESOURCE_URL": RESOURCE,
                       "MCP_AUTH_ISSUER": "https://custom.accounts.ondemand.com",
                       "MCP_AUTH_AUDIENCE": "aud-x"})
    assert s.issuer_urls == ("https://custom.accounts.ondemand.com",)
    assert s.issuers[0].audiences == ("aud-x", RESOURCE)


def test_xsuaa_binding_adds_a_second_issuer_with_profile_xsuaa() -> None:
    s = load_settings({"VCAP_SERVICES": json.dumps(IDENTITY | XSUAA), "MCP_RESOURCE_URL": RESOURCE})
    ias, xsuaa = s.issuers
    assert ias.issuer == IAS_URL
    assert xsuaa.issuer == "https://sub.authentication.eu10.hana.ondemand.com/oauth/token"
    assert xsuaa.profile == "xsuaa"
    assert xsuaa.xsappname == "mcp-server!t5874"
    assert xsuaa.jwks_uri == "https://authentication.eu10.hana.ondemand.com/token_keys?zid=zone-1"  # ias.md: per zone
    assert set(xsuaa.audiences) == {"sb-mcp-server!t5874", "mcp-server!t5874"}


def test_vcap_application_uris_give_the_resource_url() -> None:
    base = {"VCAP_SERVICES": json.dumps(IDENTITY), "VCAP_APPLICATION": VCAP_APPLICATION}
    assert load_settings(base).resource_url == "https://app.cfapps.eu10.hana.ondemand.com/mcp"
    assert load_settings(base, resource_path="/api/mcp").resource_url == (
        "https://app.cfapps.eu10.hana.ondemand.com/api/mcp")
    assert load_settings(base | {"MCP_RESOURCE_URL": RESOURCE}).resource_url == RESOURCE


def test_issuers_json_configures_several_profiles() -> None:
    items = [
        {"issuer": IAS_URL, "audiences": [CLIENT_ID], "client_id": CLIENT_ID, "app_tid": APP_TID},
        {"issuer": "https://login.microsoftonline.com/tid-1/v2.0", "audience": "api://mcp",
         "profile": "entra",
         "jwks_uri": "https://login.microsoftonline.com/tid-1/discovery/v2.0/keys"},
    ]
    s = load_settings({"MCP_AUTH_ISSUERS": json.dumps(items), "MCP_RESOURCE_URL": RESOURCE})
    ias, entra = s.issuers
    assert (ias.client_id, ias.app_tid, ias.audiences) == (CLIENT_ID, APP_TID, (CLIENT_ID,))
    assert (entra.profile, entra.audiences) == ("entra", ("api://mcp",))
    assert entra.jwks_uri == "https://login.microsoftonline.com/tid-1/discovery/v2.0/keys"


def test_implication_rules_and_other_knobs_are_parsed() -> None:
    rules = "api_write_access>api_read_access, api_admin_access>api_write_access"
    s = load_settings(env(MCP_AUTH_IMPLIES=rules,
                          MCP_AUTH_LEEWAY="30", MCP_AUTH_ALGORITHMS="RS256,ES256",
                          MCP_AUTH_CERT_BINDING="required",
                          MCP_AUTH_HTTP_TIMEOUT="2.5", MCP_AUTH_TOKEN_CACHE_SIZE="0"))
    assert s.implies == {"api_write_access": {"api_read_access"}, "api_admin_access": {"api_write_access"}}
    assert (s.leeway_s, s.algorithms, s.cert_binding) == (30, {"RS256", "ES256"}, "required")
    assert (s.http_timeout_s, s.token_cache_size) == (2.5, 0)


@pytest.mark.parametrize(("values", "setting"), [
    ({"MCP_AUTH_ISSUER": "http://idp.example.com"}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": "http://10.0.0.1/tenant"}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": f"{IAS_URL}?tenant=x"}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": f"{IAS_URL}#x"}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": "https://user:pw@awdsp8ef4.accounts.ondemand.com"}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": "awdsp8ef4.accounts.ondemand.com"}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": "ftp://awdsp8ef4.accounts.ondemand.com"}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": "https://awdsp8ef4.accounts.ondemand.com:99999"}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": "https://awd sp8ef4.accounts.ondemand.com"}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": None}, "MCP_AUTH_ISSUER"),
    ({"MCP_AUTH_ISSUER": " , "}, "MCP_AUTH_ISSUER"),
    ({"MCP_RESOURCE_URL": None}, "MCP_RESOURCE_URL"),
    ({"MCP_RESOURCE_URL": "http://mcp.example.com/mcp"}, "MCP_RESOURCE_URL"),
    ({"MCP_RESOURCE_URL": "https://mcp.example.com/mcp?x=1"}, "MCP_RESOURCE_URL"),
    ({"MCP_AUTH_JWKS_URI": "http://evil.example.com/keys"}, "MCP_AUTH_JWKS_URI"),
    ({"MCP_AUTH_JWKS_URI": f"{IAS_URL}/oauth2/certs",
      "MCP_AUTH_ISSUER": f"{IAS_URL},https://b.accounts.ondemand.com"}, "MCP_AUTH_JWKS_URI"),
    ({"MCP_AUTH_ALGORITHMS": "RS256,HS256"}, "MCP_AUTH_ALGORITHMS"),
    ({"MCP_AUTH_ALGORITHMS": "HS256"}, "MCP_AUTH_ALGORITHMS"),
    ({"MCP_AUTH_ALGORITHMS": "none"}, "MCP_AUTH_ALGORITHMS"),
    ({"MCP_AUTH_ALGORITHMS": "rs256"}, "MCP_AUTH_ALGORITHMS"),
    ({"MCP_AUTH_LEEWAY": "abc"}, "MCP_AUTH_LEEWAY"),
    ({"MCP_AUTH_LEEWAY": "-1"}, "MCP_AUTH_LEEWAY"),
    ({"MCP_AUTH_LEEWAY": "301"}, "MCP_AUTH_LEEWAY"),
    ({"MCP_AUTH_LEEWAY": "nan"}, "MCP_AUTH_LEEWAY"),
    ({"MCP_AUTH_LEEWAY": "inf"}, "MCP_AUTH_LEEWAY"),
    ({"MCP_AUTH_HTTP_TIMEOUT": "0"}, "MCP_AUTH_HTTP_TIMEOUT"),
    ({"MCP_AUTH_TOKEN_CACHE_SIZE": "-1"}, "MCP_AUTH_TOKEN_CACHE_SIZE"),
    ({"MCP_AUTH_JWKS_COOLDOWN": "0"}, "MCP_AUTH_JWKS_COOLDOWN"),
    ({"MCP_AUTH_ISSUERS": "{not json"}, "MCP_AUTH_ISSUERS"),
    ({"MCP_AUTH_ISSUERS": json.dumps({"issuer": IAS_URL})}, "MCP_AUTH_ISSUERS"),
    ({"MCP_AUTH_ISSUERS": json.dumps(["x"])}, "MCP_AUTH_ISSUERS[0]"),
    ({"MCP_AUTH_ISSUERS": json.dumps([{"issuer": IAS_URL, "audiences": [1]}])}, "MCP_AUTH_ISSUERS[0]"),
    ({"MCP_AUTH_ISSUERS": json.dumps([{"issuer": IAS_URL, "audiences": ["a"], "profile": "okta"}])},
     "MCP_AUTH_ISSUERS[0]"),
    ({"MCP_AUTH_ISSUERS": json.dumps([{"issuer": IAS_URL, "audiences": ["a"], "jwks_uri": 5}])},
     "MCP_AUTH_ISSUERS[0]"),
    ({"MCP_AUTH_ISSUERS": json.dumps([{"issuer": IAS_URL, "audiences": ["a"], "profile": "xsuaa",
                                       "xsappname": ["x"]}])}, "MCP_AUTH_ISSUERS[0]"),
    ({"VCAP_SERVICES": "{not json"}, "VCAP_SERVICES"),
    ({"VCAP_SERVICES": "[]"}, "VCAP_SERVICES"),
    ({"VCAP_APPLICATION": "{not json", "MCP_RESOURCE_URL": None}, "VCAP_APPLICATION"),
    ({"VCAP_APPLICATION": json.dumps({"application_uris": "app.example.com"}), "MCP_RESOURCE_URL": None},
     "VCAP_APPLICATION"),
    ({"MCP_AUTH_CERT_BINDING": "sometimes"}, "MCP_AUTH_CERT_BINDING"),
    ({"MCP_AUTH_PROFILE": "okta"}, "MCP_AUTH_PROFILE"),
    ({"MCP_AUTH_MULTI_TENANT": "maybe"}, "MCP_AUTH_MULTI_TENANT"),
    ({"MCP_AUTH_IMPLIES": "api_write_access"}, "MCP_AUTH_IMPLIES"),
    ({"MCP_AUTH_IMPLIES": "api_write_access>"}, "MCP_AUTH_IMPLIES"),
    ({"MCP_AUTH_IMPLIES": ">api_read_access"}, "MCP_AUTH_IMPLIES"),
    ({"MCP_AUTH_IMPLIES": "api write>api_read_access"}, "MCP_AUTH_IMPLIES"),
    ({"MCP_AUTH_IMPLIES": 'api_write_access>"read"'}, "MCP_AUTH_IMPLIES"),
    ({"MCP_AUTH_PERMISSION_ALIASES": "api_read_access"}, "MCP_AUTH_PERMISSION_ALIASES"),
], ids=lambda v: (",".join(f"{k}={v}" for k, v in v.items())[:60] if isinstance(v, dict) else v))
def test_bad_setting_raises_config_error_naming_it(values: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(**values))
    assert info.value.setting == setting
    assert setting in str(info.value)


def test_xsuaa_binding_without_client_id_or_xsappname_has_no_audience() -> None:
    creds = dict(XSUAA["xsuaa"][0]["credentials"])
    del creds["clientid"], creds["xsappname"]
    with pytest.raises(ConfigError) as info:
        load_settings(env(VCAP_SERVICES=json.dumps({"xsuaa": [{"credentials": creds}]})))
    assert info.value.setting == "MCP_AUTH_AUDIENCE"


def test_issuer_url_with_a_query_is_refused_but_a_jwks_uri_may_have_one() -> None:
    from auth._errors import ConfigError
    from auth._settings import check_issuer_url

    with pytest.raises(ConfigError) as refused:
        check_issuer_url("https://tenant.accounts.ondemand.com?x=1", "MCP_AUTH_ISSUER")
    assert refused.value.setting == "MCP_AUTH_ISSUER"
    assert check_issuer_url("https://uaa.example.com/token_keys?zid=z", "MCP_AUTH_JWKS_URI", allow_query=True)
