"""HTTP-level behaviour of the served app: challenges, transport security, limits, metadata."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auth import AuthSettings, IssuerConfig
from server import create_app
from server._dev_issuer import DevIssuer
from server._settings import load_server_settings
from tests._live import running_server

from .conftest import LEGACY_HEADERS, DevServer, build_dev_app, challenge_params, dev_server, tool_call

pytestmark = pytest.mark.timeout(60)

LIST = tool_call("list_notes", {}, modern=False)


@pytest.fixture(scope="module")
def srv(shared_server: DevServer) -> Iterator[DevServer]:
    yield shared_server


def assert_invalid_token(response: httpx.Response, srv: DevServer) -> None:
    assert response.status_code == 401, response.text
    params = challenge_params(response.headers["www-authenticate"])
    assert params["error"] == "invalid_token"
    assert params["resource_metadata"] == srv.metadata_url
    assert response.json()["error"] == "invalid_token"


# --- 401 -------------------------------------------------------------------------------------


def test_missing_token_is_401_naming_metadata_and_scope_without_error_code(srv: DevServer) -> None:
    response = srv.rpc(None, LIST, LEGACY_HEADERS)
    assert response.status_code == 401
    params = challenge_params(response.headers["www-authenticate"])
    assert "error" not in params  # RFC 6750 §3.1: no error code when no credentials were sent
    assert params["resource_metadata"] == srv.metadata_url
    assert {"api_read_access", "api_write_access"} <= set(params["scope"].split())


def test_garbage_token_is_401_invalid_token(srv: DevServer) -> None:
    assert_invalid_token(srv.rpc("not-a-jwt", LIST, LEGACY_HEADERS), srv)


def test_expired_token_is_401_invalid_token(srv: DevServer) -> None:
    expired = srv.issuer.mint("dev-full", lifetime=-600)  # beyond the 60 s leeway
    assert_invalid_token(srv.rpc(expired, LIST, LEGACY_HEADERS), srv)


def test_token_signed_by_another_key_is_401_invalid_token(srv: DevServer) -> None:
    impostor = DevIssuer(srv.base_url)  # same issuer URL and kid scheme, different key
    assert_invalid_token(srv.rpc(impostor.mint("dev-full"), LIST, LEGACY_HEADERS), srv)


def test_token_for_another_audience_is_401_invalid_token(srv: DevServer) -> None:
    foreign = srv.issuer.mint("dev-full", aud=["someone-else"])
    assert_invalid_token(srv.rpc(foreign, LIST, LEGACY_HEADERS), srv)


def test_same_token_with_our_audience_is_accepted(srv: DevServer) -> None:
    """Control for the audience test: only ``aud`` differs."""
    response = srv.rpc(srv.issuer.mint("dev-full"), LIST, LEGACY_HEADERS)
    assert response.status_code == 200, response.text


# attacks.md, "Requests": only the Authorization header counts.


def test_token_only_in_query_string_gets_bare_challenge(srv: DevServer) -> None:
    # RFC 6750 §3.1: no credentials by a supported method, so no error code; the token is never used.
    token = srv.token("dev-full")
    response = httpx.post(srv.mcp_url, params={"access_token": token}, json=LIST,
                          headers={**LEGACY_HEADERS, "Accept": "application/json, text/event-stream"})
    assert response.status_code == 401
    assert "error" not in challenge_params(response.headers["www-authenticate"])
    assert token not in response.text


def test_token_in_header_and_query_string_is_refused(srv: DevServer) -> None:
    token = srv.token("dev-full")
    response = httpx.post(srv.mcp_url, params={"access_token": token}, json=LIST,
                          headers={**LEGACY_HEADERS, "Accept": "application/json, text/event-stream",
                                   "Authorization": f"Bearer {token}"})
    assert_invalid_token(response, srv)


def test_token_in_form_body_is_not_credentials(srv: DevServer) -> None:
    response = httpx.post(srv.mcp_url, data={"access_token": srv.token("dev-full")})
    assert response.status_code == 401
    assert "error" not in challenge_params(response.headers["www-authenticate"])


@pytest.mark.parametrize(
    "authorization", ["Bearer", "Bearer two words", "Basic ZGV2LWZ1bGw6ZGV2LWZ1bGwtc2VjcmV0"]
)
def test_malformed_authorization_is_401_invalid_token(srv: DevServer, authorization: str) -> None:
    assert_invalid_token(srv.rpc(None, LIST, {**LEGACY_HEADERS, "Authorization": authorization}), srv)


def test_two_authorization_headers_are_refused(srv: DevServer) -> None:
    token = srv.token("dev-full")
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}"),
               ("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream"),
               ("MCP-Protocol-Version", "2025-11-25")]
    response = httpx.post(srv.mcp_url, json=LIST, headers=headers)
    assert response.status_code in (400, 401)
    assert "insufficient_scope" not in response.text and "result" not in response.text


def test_lower_case_bearer_scheme_is_accepted(srv: DevServer) -> None:
    response = srv.rpc(None, LIST, {**LEGACY_HEADERS, "Authorization": f"bearer {srv.token('dev-read')}"})
    assert response.status_code == 200


# --- transport security and limits --------------------------------------------------------------


def test_foreign_origin_is_403_and_own_origin_is_served(srv: DevServer) -> None:
    token = srv.token("dev-full")
    foreign = srv.rpc(token, LIST, {**LEGACY_HEADERS, "Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert foreign.json()["error"] == "forbidden_origin"
    own = srv.rpc(token, LIST, {**LEGACY_HEADERS, "Origin": srv.base_url})
    assert own.status_code == 200


def test_foreign_host_is_421(srv: DevServer) -> None:
    response = srv.rpc(srv.token("dev-full"), LIST, {**LEGACY_HEADERS, "Host": "evil.example"})
    assert response.status_code == 421
    metadata = httpx.get(srv.metadata_url, headers={"Host": "evil.example"})
    assert metadata.status_code == 421  # DNS rebinding cannot read the metadata either


def test_body_over_the_limit_is_413(srv: DevServer) -> None:
    limit = srv.settings.max_body_bytes
    assert limit == 1024 * 1024
    big = tool_call("create_note", {"title": "big", "body": "x" * (limit + 1)}, modern=False)
    response = srv.rpc(srv.token("dev-full"), big, LEGACY_HEADERS)
    assert response.status_code == 413


def test_chunked_body_over_the_limit_is_413(srv: DevServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 65536  # 1.25 MiB, no Content-Length

    response = httpx.post(srv.mcp_url, content=chunks(), headers={
        "Authorization": f"Bearer {srv.token('dev-full')}", "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream", **LEGACY_HEADERS})
    assert response.status_code == 413


def test_body_exactly_at_the_limit_is_served(srv: DevServer) -> None:
    message = json.dumps(tool_call("list_notes", {"limit": 1}, modern=False)).encode()
    padded = message + b" " * (srv.settings.max_body_bytes - len(message))  # JSON allows trailing space
    assert len(padded) == srv.settings.max_body_bytes
    response = srv.rpc(srv.token("dev-full"), None, LEGACY_HEADERS, raw=padded)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_400_or_415(srv: DevServer, content_type: str) -> None:
    response = srv.rpc(srv.token("dev-full"), LIST, {**LEGACY_HEADERS, "Content-Type": content_type})
    assert response.status_code in (400, 415)


def test_health_needs_no_token_and_any_host(srv: DevServer) -> None:
    assert httpx.get(srv.base_url + "/health").json() == {"status": "ok"}
    assert httpx.get(srv.base_url + "/health", headers={"Host": "10.0.0.7:8080"}).status_code == 200


# --- metadata ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"]
)
def test_protected_resource_metadata_is_served_at_both_paths(srv: DevServer, path: str) -> None:
    response = httpx.get(srv.base_url + path)
    assert response.status_code == 200
    doc = response.json()
    assert doc["resource"] == srv.mcp_url
    assert doc["authorization_servers"] == [srv.issuer.issuer]
    assert doc["bearer_methods_supported"] == ["header"]
    assert {"api_read_access", "api_write_access"} <= set(doc["scopes_supported"])
    assert doc["resource_name"]


def test_authorization_server_metadata_is_discoverable_from_the_resource_metadata(srv: DevServer) -> None:
    issuer = httpx.get(srv.metadata_url).json()["authorization_servers"][0]
    path = issuer.removeprefix(srv.base_url)
    doc = httpx.get(f"{srv.base_url}/.well-known/oauth-authorization-server{path}").json()
    assert doc["issuer"] == issuer
    assert doc["token_endpoint"] == srv.issuer.token_endpoint


def test_metadata_and_challenge_use_the_public_url_behind_a_proxy(tmp_path: Path) -> None:
    public = "https://mcp.example.com/mcp"
    expected_metadata = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"

    def factory(base_url: str):
        issuer = DevIssuer(base_url)
        auth = AuthSettings(
            issuers=(IssuerConfig(issuer=issuer.issuer, audiences=(issuer.server_client_id, public)),),
            resource_url=public,
            resource_name="Notes behind a proxy",
        )
        settings = load_server_settings({"MCP_NOTES_DB": str(tmp_path / "notes.db")}, auth=auth)
        return create_app(settings, extra_routes=[*issuer.well_known_routes(), issuer.mount()])

    with running_server(factory=factory, lifespan="on") as base_url:
        host = {"Host": "mcp.example.com"}
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            doc = httpx.get(base_url + path, headers=host).json()
            assert doc["resource"] == public
            assert doc["resource_name"] == "Notes behind a proxy"
        challenge = httpx.post(base_url + "/mcp", json=LIST, headers={**host, **LEGACY_HEADERS,
                                                                      "Origin": "https://mcp.example.com"})
        assert challenge.status_code == 401
        params = challenge_params(challenge.headers["www-authenticate"])
        assert params["resource_metadata"] == expected_metadata
        # The bind address is not the public name: requests naming it are misdirected.
        assert httpx.get(base_url + "/.well-known/oauth-protected-resource/mcp").status_code == 421


# --- the identity provider is unreachable --------------------------------------------------------


def test_unreachable_issuer_without_cached_keys_is_503_with_retry_after(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = DevIssuer(f"http://127.0.0.1:{dead_port}")  # nothing listens there once the probe closes
    def factory(base_url: str):
        return build_dev_app(base_url, tmp_path / "notes.db", issuer=dead, mount_issuer=False).app

    with running_server(factory=factory, lifespan="on") as base_url:
        response = httpx.post(base_url + "/mcp", json=LIST, timeout=30, headers={
            "Authorization": f"Bearer {dead.mint('dev-full')}",
            "Accept": "application/json, text/event-stream", **LEGACY_HEADERS})
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert "error=" not in response.headers["www-authenticate"]  # not the client's fault


def test_dev_server_fixture_serves_on_loopback_only(tmp_path: Path) -> None:
    with dev_server(tmp_path / "notes.db") as s:
        assert s.base_url.startswith("http://127.0.0.1:")
        assert s.settings.host == "127.0.0.1" and s.settings.dev
