"""`auth.testing`: the local issuer over real HTTP on 127.0.0.1, checked by our verifier and by PyJWT."""

from __future__ import annotations

import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt  # PyJWT: an independent check of what the issuer signs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth import InvalidToken, JWTVerifier, VerifiedToken
from auth.testing import Audience, Issuer, LocalIssuer, RegisteredClient, load_or_create_key

API = "my-api"
RESOURCE = "http://127.0.0.1:9000/mcp"
AGENT = RegisteredClient("agent", "agent-secret", ("api_read_access", "api_archive"))


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with LocalIssuer(audiences=[Audience(API, (RESOURCE,)), "other-api"], clients=[AGENT]) as running:
        yield running


def token_request(issuer: Issuer, data: dict[str, str], auth: tuple[str, str] | None = ("agent", "agent-secret"),
                  **kwargs: object) -> httpx.Response:
    return httpx.post(issuer.token_endpoint, data={"grant_type": "client_credentials", **data}, auth=auth,
                      timeout=10, **kwargs)  # type: ignore[arg-type]


def pyjwt_claims(issuer: Issuer, token: str, audience: str) -> dict[str, object]:
    key = jwt.PyJWKClient(issuer.jwks_uri).get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer.url,
                      options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]})


async def verified(issuer: Issuer, token: str, resource_url: str = RESOURCE) -> VerifiedToken:
    verifier = JWTVerifier(issuer.settings(resource_url=resource_url, audience=API))
    try:
        return await verifier.verify(token)
    finally:
        await verifier.aclose()


# --- over HTTP ------------------------------------------------------------------------------------


def test_serves_discovery_and_keys_at_the_issuer_root(issuer: Issuer) -> None:
    assert issuer.url.startswith("http://127.0.0.1:")
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        doc = httpx.get(issuer.url + path, timeout=10).json()
        assert (doc["issuer"], doc["token_endpoint"], doc["jwks_uri"]) == (
            issuer.url, issuer.url + "/oauth2/token", issuer.url + "/oauth2/certs")
        assert doc["grant_types_supported"] == [  # and the exchange grants (RFC 7523, RFC 8693)
            "client_credentials", "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "urn:ietf:params:oauth:grant-type:token-exchange"]
    (key,) = httpx.get(issuer.jwks_uri, timeout=10).json()["keys"]
    assert set(key) == {"kty", "kid", "use", "alg", "n", "e"} and key["kid"] == issuer.kid


def test_resource_equal_to_the_servers_url_gives_a_token_for_that_audience(issuer: Issuer) -> None:
    response = token_request(issuer, {"resource": RESOURCE})
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    token = response.json()["access_token"]
    claims = pyjwt_claims(issuer, token, audience=RESOURCE)
    assert claims["aud"] == [API, RESOURCE]
    assert claims["sub"] == claims["azp"] == "agent"
    assert claims["ias_apis"] == ["api_read_access", "api_archive"]
    assert claims["app_tid"] == issuer.app_tid and claims["sap_id_type"] == "app"
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": issuer.kid, "typ": "JWT"}


@pytest.mark.parametrize(("resource", "audience"), [
    (None, [API]),  # no resource: the first audience
    ("urn:sap:identity:application:provider:name:other-api", ["other-api"]),
    ("urn:sap:identity:application:provider:clientid:my-api", [API]),
])
def test_audience_follows_the_resource(issuer: Issuer, resource: str | None, audience: list[str]) -> None:
    response = token_request(issuer, {"resource": resource} if resource else {})
    assert response.status_code == 200
    assert pyjwt_claims(issuer, response.json()["access_token"], audience[0])["aud"] == audience


@pytest.mark.parametrize("resource", [
    "http://127.0.0.1:9001/mcp", "http://127.0.0.1:9000/mcp/", "urn:sap:identity:application:provider:name:nobody",
    "", "not a url"])
def test_unknown_resource_is_400_invalid_target(issuer: Issuer, resource: str) -> None:
    response = token_request(issuer, {"resource": resource})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


@pytest.mark.parametrize(("auth", "data"), [
    (("agent", "wrong"), {}),
    (("nobody", "agent-secret"), {}),
    (None, {"client_id": "agent", "client_secret": "wrong"}),
    (None, {"client_id": "agent"}),
    (("dev-read", "dev-full-secret"), {}),  # the default clients are there, each with its own secret
])
def test_wrong_credentials_are_401_invalid_client(
    issuer: Issuer, auth: tuple[str, str] | None, data: dict[str, str]
) -> None:
    response = token_request(issuer, data, auth=auth)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


def test_other_grant_types_are_unsupported(issuer: Issuer) -> None:
    response = token_request(issuer, {"grant_type": "password"})
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


def test_an_oversized_body_is_refused_unread_and_the_connection_closed(issuer: Issuer) -> None:
    host, port = issuer.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 10000000\r\n\r\ngrant_type=client_credentials")
        answer = b""
        while chunk := conn.recv(65536):  # the server closes: no 10 MB is ever waited for
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"invalid_request"' in answer and b"Connection: close" in answer


def test_token_endpoint_refuses_get_and_unknown_paths_are_404(issuer: Issuer) -> None:
    assert httpx.get(issuer.token_endpoint, timeout=10).status_code == 405
    assert httpx.get(issuer.url + "/nothing", timeout=10).status_code == 404


async def test_a_token_from_the_endpoint_verifies_with_our_verifier(issuer: Issuer) -> None:
    token = token_request(issuer, {"resource": RESOURCE}).json()["access_token"]
    principal = await verified(issuer, token)
    assert principal.client_id == "agent"
    assert principal.permissions == frozenset({"api_read_access", "api_archive"})
    assert principal.tenant == issuer.app_tid


def test_an_audience_added_later_is_accepted_as_a_resource(issuer: Issuer) -> None:
    late = "http://127.0.0.1:9555/mcp"
    assert token_request(issuer, {"resource": late}).json()["error"] == "invalid_target"
    issuer.add_audience(Audience("late-api", (late,)))
    response = token_request(issuer, {"resource": late})
    assert response.status_code == 200
    assert pyjwt_claims(issuer, response.json()["access_token"], "late-api")["aud"] == ["late-api", late]


# --- minting the faults a user's test needs --------------------------------------------------------


async def test_minted_token_verifies_like_an_issued_one(issuer: Issuer) -> None:
    principal = await verified(issuer, issuer.mint("agent", resource=RESOURCE))
    assert principal.permissions == frozenset(AGENT.permissions)


@pytest.mark.parametrize(("variant", "reason"), [
    ({"expired": True}, "expired"),
    ({"lifetime": -600}, "expired"),
    ({"audience": "someone-else"}, "audience"),
    ({"foreign_key": True}, "signature"),
    ({"claims": {"iss": "http://127.0.0.1:1"}}, "issuer"),
    ({"claims": {"exp": None}}, "exp"),
])
async def test_minted_faults_are_refused_by_the_verifier(issuer: Issuer, variant: dict[str, object],
                                                         reason: str) -> None:
    token = issuer.mint("agent", **variant)  # type: ignore[arg-type]
    with pytest.raises(InvalidToken):
        await verified(issuer, token)


async def test_permissions_can_be_chosen_or_left_out(issuer: Issuer) -> None:
    narrow = await verified(issuer, issuer.mint("agent", permissions=["api_read_access"]))
    none = await verified(issuer, issuer.mint("agent", permissions=[]))
    assert narrow.permissions == frozenset({"api_read_access"})
    assert none.permissions == frozenset()
    assert "ias_apis" not in jwt.decode(issuer.mint("agent", permissions=None), options={"verify_signature": False})


def test_mint_is_pure_with_an_injected_clock() -> None:
    fixed = Issuer("http://127.0.0.1:1", clock=lambda: 1_700_000_000, token_lifetime=60)
    claims = jwt.decode(fixed.mint("dev-read"), options={"verify_signature": False})
    assert (claims["iat"], claims["exp"], claims["aud"]) == (1_700_000_000, 1_700_000_060, ["mcp-dev-server"])
    assert claims["ias_apis"] == ["api_read_access"]
    expired = jwt.decode(fixed.mint("dev-read", expired=True), options={"verify_signature": False})
    assert expired["exp"] == 1_700_000_000 - 3600  # beyond any leeway
    with pytest.raises(ValueError):
        fixed.mint("dev-read", resource="http://127.0.0.1:2/mcp")
    with pytest.raises(ValueError):
        fixed.mint("dev-read", resource="urn:x", audience="y")


def test_settings_trust_the_issuer_for_the_given_resource(issuer: Issuer) -> None:
    settings = issuer.settings(resource_url="http://127.0.0.1:9000/mcp", cert_binding="if-bound")
    (trusted,) = settings.issuers
    assert trusted.issuer == issuer.url and trusted.audiences == (API, "http://127.0.0.1:9000/mcp")
    assert settings.cert_binding == "if-bound"


# --- the signing key ---------------------------------------------------------------------------------


def test_key_file_is_created_private_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create_key(path)
    assert first.private_numbers() == again.private_numbers()
    assert Issuer("http://127.0.0.1:1", key=first).kid == Issuer("http://127.0.0.1:1", key=again).kid


def test_processes_racing_to_create_the_key_file_agree(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    keys: list[rsa.RSAPrivateKey] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({k.private_numbers().d for k in keys}) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["signing.pem"]  # no temporary file left


@pytest.mark.parametrize("content", ["garbage", "small-rsa", "ec"])
def test_an_unusable_key_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key.pem"
    if content == "garbage":
        path.write_text("not a key")
    else:
        key = (rsa.generate_private_key(public_exponent=65537, key_size=1024) if content == "small-rsa"
               else ec.generate_private_key(ec.SECP256R1()))
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    with pytest.raises(ValueError):
        load_or_create_key(path)
    with pytest.raises(ValueError):
        LocalIssuer(key_file=path).start()


async def test_a_token_minted_before_a_restart_verifies_after_it(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.pem"
    with LocalIssuer(key_file=key_file) as before:
        port = int(before.url.rsplit(":", 1)[1])
        token = token_request(before, {}, auth=("dev-read", "dev-read-secret")).json()["access_token"]
    with LocalIssuer(key_file=key_file, port=port) as after:
        verifier = JWTVerifier(after.settings(resource_url="http://127.0.0.1:9000/mcp"))
        try:
            assert (await verifier.verify(token)).client_id == "dev-read"
        finally:
            await verifier.aclose()
    with LocalIssuer(port=port) as fresh:  # another key: the same token is refused
        verifier = JWTVerifier(fresh.settings(resource_url="http://127.0.0.1:9000/mcp"))
        try:
            with pytest.raises(InvalidToken):
                await verifier.verify(token)
        finally:
            await verifier.aclose()


# --- binding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_non_loopback_addresses_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LocalIssuer(host=host)


def test_stop_closes_the_port_and_open_connections() -> None:
    runner = LocalIssuer()
    issuer = runner.start()
    with httpx.Client(timeout=10) as keep_alive:
        assert keep_alive.get(issuer.jwks_uri).status_code == 200  # a kept-alive connection stays open
        began = time.monotonic()
        runner.stop()
        assert time.monotonic() - began < 5
        with pytest.raises(httpx.TransportError):
            keep_alive.get(issuer.jwks_uri)
    runner.stop()  # idempotent


def test_no_secret_or_token_is_logged(issuer: Issuer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    ok = token_request(issuer, {}).json()["access_token"]
    token_request(issuer, {}, auth=("agent", "guessed-secret-77"))
    httpx.get(issuer.url + "/oauth2/certs?client_secret=leaked-in-query", timeout=10)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("auth"))  # not httpx's own
    assert "issued token" in ours and "rejected" in ours and "/oauth2/certs" in ours
    for secret in ("agent-secret", "guessed-secret-77", ok, "leaked-in-query"):
        assert secret not in ours
    assert "agent-secret" not in repr(AGENT)

