"""The embedded dev issuer, served by a real uvicorn server and checked with an independent JWT library."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote_plus

import httpx
import jwt  # PyJWT: deliberately not joserfc, which the issuer signs with
import pytest
from mcp.shared.auth import OAuthMetadata
from starlette.applications import Starlette

from server._dev_issuer import DevClient, DevIssuer, startup_banner
from tests._live import running_server

SERVER_ID = "mcp-dev-server"
ODD_ID, ODD_SECRET = "odd:client", "s3cr+t:with&symbols"


@dataclass(frozen=True)
class Live:
    base_url: str
    issuer: DevIssuer
    http: httpx.Client

    def token(self, data: dict[str, str], *, auth: tuple[str, str] | None = None) -> httpx.Response:
        return self.http.post(self.issuer.token_endpoint, data=data, auth=auth)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    issuers: list[DevIssuer] = []

    def build(base_url: str) -> Starlette:
        issuer = DevIssuer(
            base_url,
            extra_clients={
                "dev-none": DevClient("dev-none-secret"),
                ODD_ID: (ODD_SECRET, ["api_read_access"]),
            },
        )
        issuers.append(issuer)
        return Starlette(routes=[*issuer.well_known_routes(), issuer.mount()])

    with running_server(factory=build) as base_url, httpx.Client(timeout=10) as http:
        yield Live(base_url, issuers[0], http)


def verify(live: Live, token: str, audience: str = SERVER_ID) -> dict[str, object]:
    """Verify against the served JWKS with PyJWT, as a resource server would."""
    signing_key = jwt.PyJWKClient(live.issuer.jwks_uri).get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        signing_key.key,
        algorithms=["RS256"],
        audience=audience,
        issuer=live.issuer.issuer,
        options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]},
    )


def basic(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 §2.3.1: form-urlencode each part before Basic encoding."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


# --- discovery and keys ---------------------------------------------------------------------


def test_issuer_url_is_base_url_plus_mount_path(live: Live) -> None:
    assert live.issuer.issuer == live.base_url + "/dev-ias"
    assert live.issuer.resource_url == live.base_url + "/mcp"


@pytest.mark.parametrize(
    "path",
    [
        "/dev-ias/.well-known/openid-configuration",
        "/dev-ias/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/dev-ias",  # RFC 8414 §3.1, what MCP clients try first
        "/.well-known/openid-configuration/dev-ias",
    ],
)
def test_discovery_document_is_served_at_every_well_known_location(live: Live, path: str) -> None:
    r = live.http.get(live.base_url + path)
    assert r.status_code == 200
    doc = r.json()
    issuer = live.base_url + "/dev-ias"
    assert doc["issuer"] == issuer
    assert doc["token_endpoint"] == issuer + "/oauth2/token"
    assert doc["jwks_uri"] == issuer + "/oauth2/certs"
    assert doc["grant_types_supported"] == [  # and the exchange grants (RFC 7523, RFC 8693)
        "client_credentials", "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "urn:ietf:params:oauth:grant-type:token-exchange"]
    assert doc["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]


def test_discovery_document_parses_as_mcp_sdk_oauth_metadata(live: Live) -> None:
    doc = live.http.get(live.issuer.discovery_url).json()
    metadata = OAuthMetadata.model_validate(doc)
    assert str(metadata.issuer) == live.issuer.issuer
    assert str(metadata.token_endpoint) == live.issuer.token_endpoint


def test_authorization_endpoint_answers_unsupported_response_type(live: Live) -> None:
    r = live.http.get(live.issuer.issuer + "/oauth2/authorize", params={"response_type": "code"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_response_type"


def test_jwks_publishes_one_public_rs256_signing_key(live: Live) -> None:
    r = live.http.get(live.issuer.jwks_uri)
    assert r.status_code == 200
    (key,) = r.json()["keys"]
    assert set(key) == {"kty", "kid", "use", "alg", "n", "e"}  # no private members
    assert (key["kty"], key["use"], key["alg"], key["kid"]) == ("RSA", "sig", "RS256", live.issuer.kid)
    n = int.from_bytes(base64.urlsafe_b64decode(key["n"] + "=="), "big")
    assert n.bit_length() == 2048


# --- issuing tokens -------------------------------------------------------------------------


def test_basic_auth_token_carries_the_clients_api_groups(live: Live) -> None:
    r = live.token({"grant_type": "client_credentials"}, auth=("dev-full", "dev-full-secret"))
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    header = jwt.get_unverified_header(body["access_token"])
    assert header == {"alg": "RS256", "kid": live.issuer.kid, "typ": "JWT"}
    claims = verify(live, body["access_token"])
    assert claims["sub"] == claims["azp"] == "dev-full"
    assert claims["aud"] == [SERVER_ID]
    assert claims["ias_apis"] == ["api_read_access", "api_write_access"]
    assert claims["sap_id_type"] == "app"
    assert claims["app_tid"] == live.issuer.app_tid
    assert claims["exp"] - claims["iat"] == 3600
    assert "cnf" not in claims


def test_body_credentials_token_for_read_client(live: Live) -> None:
    r = live.token({"grant_type": "client_credentials", "client_id": "dev-read", "client_secret": "dev-read-secret"})
    assert r.status_code == 200
    claims = verify(live, r.json()["access_token"])
    assert claims["sub"] == "dev-read"
    assert claims["ias_apis"] == ["api_read_access"]


def test_client_without_groups_gets_no_ias_apis_claim(live: Live) -> None:
    r = live.token({"grant_type": "client_credentials"}, auth=("dev-none", "dev-none-secret"))
    claims = verify(live, r.json()["access_token"])
    assert "ias_apis" not in claims


def test_basic_credentials_are_form_urldecoded(live: Live) -> None:
    r = live.http.post(
        live.issuer.token_endpoint, data={"grant_type": "client_credentials"}, headers=basic(ODD_ID, ODD_SECRET)
    )
    assert r.status_code == 200
    assert verify(live, r.json()["access_token"])["sub"] == ODD_ID


def test_each_token_has_a_fresh_jti(live: Live) -> None:
    tokens = [live.token({"grant_type": "client_credentials"}, auth=("dev-read", "dev-read-secret")) for _ in range(2)]
    jtis = {verify(live, t.json()["access_token"])["jti"] for t in tokens}
    assert len(jtis) == 2


def test_resource_equal_to_server_url_is_added_to_aud(live: Live) -> None:
    resource = live.issuer.resource_url
    r = live.token({"grant_type": "client_credentials", "resource": resource}, auth=("dev-read", "dev-read-secret"))
    assert r.status_code == 200
    claims = verify(live, r.json()["access_token"], audience=resource)
    assert claims["aud"] == [SERVER_ID, resource]


@pytest.mark.parametrize(
    "resource",
    [
        "urn:sap:identity:application:provider:name:mcp-dev-server",
        "urn:sap:identity:application:provider:clientid:mcp-dev-server",
    ],
)
def test_ias_provider_urns_are_accepted_resources(live: Live, resource: str) -> None:
    r = live.token({"grant_type": "client_credentials", "resource": resource}, auth=("dev-read", "dev-read-secret"))
    assert r.status_code == 200
    assert verify(live, r.json()["access_token"])["aud"] == [SERVER_ID]


# --- rejected token requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    "auth, data",
    [
        (("dev-read", "wrong"), {}),
        (("nobody", "dev-read-secret"), {}),
        (None, {"client_id": "dev-read", "client_secret": "wrong"}),
        (None, {"client_id": "dev-read"}),
        (None, {}),
    ],
    ids=["wrong-secret", "unknown-client", "wrong-body-secret", "body-id-without-secret", "no-credentials"],
)
def test_failed_client_authentication_is_401_invalid_client(
    live: Live, auth: tuple[str, str] | None, data: dict[str, str]
) -> None:
    r = live.token({"grant_type": "client_credentials", **data}, auth=auth)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    assert r.headers["www-authenticate"].startswith("Basic")
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "header", ["Bearer abc", "Basic !!!not-base64", "Basic " + base64.b64encode(b"nocolon").decode()]
)
def test_malformed_authorization_header_is_invalid_client(live: Live, header: str) -> None:
    r = live.http.post(
        live.issuer.token_endpoint, data={"grant_type": "client_credentials"}, headers={"Authorization": header}
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_unknown_grant_type_is_unsupported_grant_type(live: Live) -> None:
    r = live.token({"grant_type": "password"}, auth=("dev-read", "dev-read-secret"))
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_missing_grant_type_is_invalid_request(live: Live) -> None:
    r = live.token({}, auth=("dev-read", "dev-read-secret"))
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_unknown_resource_is_invalid_target(live: Live) -> None:
    r = live.token(
        {"grant_type": "client_credentials", "resource": "https://other.example/mcp"},
        auth=("dev-read", "dev-read-secret"),
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_target"


def test_two_authentication_methods_are_invalid_request(live: Live) -> None:
    r = live.token(
        {"grant_type": "client_credentials", "client_secret": "dev-read-secret"}, auth=("dev-read", "dev-read-secret")
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_repeated_parameter_is_invalid_request(live: Live) -> None:
    r = live.http.post(
        live.issuer.token_endpoint,
        content=b"grant_type=client_credentials&grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded", **basic("dev-read", "dev-read-secret")},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_json_body_is_invalid_request(live: Live) -> None:
    r = live.http.post(
        live.issuer.token_endpoint, json={"grant_type": "client_credentials"}, auth=("dev-read", "dev-read-secret")
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_oversized_body_is_invalid_request(live: Live) -> None:
    r = live.token({"grant_type": "client_credentials", "pad": "x" * 70_000}, auth=("dev-read", "dev-read-secret"))
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_token_endpoint_refuses_get(live: Live) -> None:
    assert live.http.get(live.issuer.token_endpoint).status_code == 405


def test_secrets_and_tokens_are_never_logged(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ok = live.token({"grant_type": "client_credentials"}, auth=("dev-full", "dev-full-secret"))
    live.token({"grant_type": "client_credentials"}, auth=("dev-full", "guessed-secret"))
    assert "issued token" in caplog.text  # the log line exists, so the check below means something
    for secret in ("dev-full-secret", "guessed-secret", ok.json()["access_token"]):
        assert secret not in caplog.text


# --- minting without HTTP -------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> DevIssuer:
    return DevIssuer("http://127.0.0.1:8080", clock=lambda: 1_700_000_000)


def decode_unverified(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def test_mint_matches_endpoint_claims_and_injected_clock(issuer: DevIssuer) -> None:
    claims = decode_unverified(issuer.mint("dev-full"))
    assert claims["iss"] == "http://127.0.0.1:8080/dev-ias"
    assert claims["ias_apis"] == ["api_read_access", "api_write_access"]
    assert (claims["iat"], claims["exp"]) == (1_700_000_000, 1_700_003_600)


def test_mint_adds_cnf_for_a_certificate_thumbprint(issuer: DevIssuer) -> None:
    claims = decode_unverified(issuer.mint("dev-read", client_certificate_thumbprint="abc_-"))
    assert claims["cnf"] == {"x5t#S256": "abc_-"}


def test_mint_overrides_and_removes_claims(issuer: DevIssuer) -> None:
    token = issuer.mint("dev-read", apis=None, header={"typ": "at+jwt"}, exp=None, aud="other", lifetime=5)
    claims = decode_unverified(token)
    assert "ias_apis" not in claims and "exp" not in claims
    assert claims["aud"] == "other"
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"


def test_mint_refuses_an_unknown_resource(issuer: DevIssuer) -> None:
    with pytest.raises(ValueError):
        issuer.mint("dev-read", resource="https://other.example/mcp")


@pytest.mark.parametrize(
    "kwargs",
    [{"base_url": "127.0.0.1:8080"}, {"mount_path": "dev-ias"}, {"mount_path": "/dev-ias/"}, {"token_lifetime": 0}],
)
def test_constructor_rejects_bad_configuration(kwargs: dict[str, object]) -> None:
    args = {"base_url": "http://127.0.0.1:8080"} | kwargs
    with pytest.raises(ValueError):
        DevIssuer(**args)  # type: ignore[arg-type]


def test_client_repr_hides_the_secret() -> None:
    assert "dev-read-secret" not in repr(DevClient("dev-read-secret", ("api_read_access",)))


def test_startup_banner_shows_token_and_tool_call_commands() -> None:
    text = startup_banner("http://127.0.0.1:8080", "http://127.0.0.1:8080/mcp")
    assert (
        "curl -s -u dev-read:dev-read-secret -d grant_type=client_credentials "
        "http://127.0.0.1:8080/dev-ias/oauth2/token"
    ) in text
    assert "curl -s http://127.0.0.1:8080/mcp" in text
    assert '"method":"tools/call"' in text and '"name":"list_notes"' in text
    assert "MCP-Protocol-Version: 2025-11-25" in text
    assert "Accept: application/json, text/event-stream" in text


# --- the live-server helper -----------------------------------------------------------------


def test_running_server_stops_and_frees_the_port() -> None:
    app = Starlette()
    with running_server(app) as base_url:
        assert httpx.get(base_url + "/nothing").status_code == 404
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + "/nothing")


def test_running_server_reports_a_failed_startup() -> None:
    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="failed to start"):
        with running_server(app, lifespan="on"):
            pass
