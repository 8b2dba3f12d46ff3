"""What clients see, through a real uvicorn server: RFC 6750 challenges, RFC 9728 metadata, 503s.

The app is a tiny Starlette app guarded by `BearerAuthMiddleware`, configured with a public
proxy URL (https://mcp.example.com/mcp) while it is served on 127.0.0.1, and two trusted
issuers: the live test IdP and an IAS tenant that is never contacted.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from auth import AuthSettings, BearerAuthMiddleware, JWTVerifier, current_token, metadata_routes
from tests._idp import IdP, running_idp
from tests._live import running_server

from ._cases import AUDIENCE, IAS_ISSUER, OTHER_KEY, TOKEN_CASES, Case, Ctx, sendable
from ._support import RESOURCE, idp_key, issuer_config, settings_for

METADATA_URL = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
SCOPES = ["api_read_access", "api_write_access"]


def build_app(settings: AuthSettings, verifier: Any = None) -> BearerAuthMiddleware:
    verifier = verifier or JWTVerifier(settings)

    async def mcp(request: Request) -> JSONResponse:
        token = current_token()
        return JSONResponse({
            "client_id": token.client_id,
            "same_as_state": request.state.token is token,
            "permissions": sorted(token.permissions),
        })

    async def health(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        if hasattr(verifier, "aclose"):
            await verifier.aclose()

    app = Starlette(
        routes=[Route("/mcp", mcp, methods=["GET", "POST"]), Route("/health", health),
                *metadata_routes(settings, SCOPES)],
        lifespan=lifespan,
    )
    return BearerAuthMiddleware(app, verifier=verifier, settings=settings, protect=["/mcp"],
                                scopes=["api_read_access"])


def trusting(idp: IdP) -> AuthSettings:
    return settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, RESOURCE)), issuer_config(IAS_ISSUER))


@pytest.fixture(scope="module")
def client(idp: IdP) -> Iterator[httpx.Client]:
    with running_server(build_app(trusting(idp))) as base_url, httpx.Client(base_url=base_url) as c:
        yield c


@pytest.fixture
def ctx(idp: IdP, attacker: IdP) -> Ctx:
    return Ctx(issuer=idp.issuer, now=int(time.time()), attacker_url=f"{attacker.issuer}/oauth2/certs")


_PARAM = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def challenge(response: httpx.Response) -> dict[str, str]:
    """The parameters of the response's Bearer challenge."""
    header = response.headers["www-authenticate"]
    assert header.startswith("Bearer ")
    return dict(_PARAM.findall(header))


def bearer(token: str | bytes, scheme: str = "Bearer") -> dict[str, bytes]:
    raw = token if isinstance(token, bytes) else token.encode("utf-8")
    return {"Authorization": scheme.encode() + b" " + raw}


def assert_invalid_token(response: httpx.Response, token: str | None = None) -> None:
    assert response.status_code == 401
    params = challenge(response)
    assert params["error"] == "invalid_token"
    assert params["resource_metadata"] == METADATA_URL
    assert response.json()["error"] == "invalid_token"
    if token:
        assert_not_echoed(response, token)


def assert_not_echoed(response: httpx.Response, token: str) -> None:
    for part in (token, *token.split(".")[1:]):
        if len(part) >= 16:
            assert part not in response.text
            assert not any(part in v for v in response.headers.values())


def test_valid_token_reaches_handler_with_current_token(client: httpx.Client, idp: IdP) -> None:
    token = idp.mint(azp="consumer-app", sub="consumer-app")
    r = client.get("/mcp", headers=bearer(token))
    assert r.status_code == 200
    assert r.json() == {"client_id": "consumer-app", "same_as_state": True, "permissions": SCOPES}
    assert_not_echoed(r, token)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_bearer_scheme_is_case_insensitive(client: httpx.Client, idp: IdP, scheme: str) -> None:
    r = client.post("/mcp", headers=bearer(idp.mint(), scheme))
    assert r.status_code == 200 and r.json()["client_id"] == "consumer-client"


def test_token_whose_audience_is_our_resource_url_is_accepted(client: httpx.Client, idp: IdP) -> None:
    assert client.get("/mcp", headers=bearer(idp.mint(aud=RESOURCE))).status_code == 200


def test_no_token_gets_401_with_resource_metadata_and_scope_but_no_error(client: httpx.Client) -> None:
    r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401
    params = challenge(r)
    assert params["resource_metadata"] == METADATA_URL
    assert params["scope"] == "api_read_access"
    assert "error" not in params and "error=" not in r.headers["www-authenticate"]
    assert r.json()["error"] != "invalid_token"
    assert r.headers["cache-control"] == "no-store"


def test_subpath_of_protected_path_needs_a_token_too(client: httpx.Client) -> None:
    assert client.get("/mcp/anything").status_code == 401


HTTP_CASES = [c for c in TOKEN_CASES if sendable(c.build(Ctx(issuer="http://127.0.0.1:1/t", now=0)))]


def test_almost_every_token_case_can_travel_in_a_header() -> None:
    unsendable = {c.name for c in TOKEN_CASES} - {c.name for c in HTTP_CASES}
    assert unsendable == {"empty_token", "leading_space", "trailing_newline", "newline_inside_payload"}


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda c: c.name)
def test_bad_token_gets_401_invalid_token(client: httpx.Client, ctx: Ctx, case: Case) -> None:
    token = case.build(ctx)
    assert_invalid_token(client.get("/mcp", headers=bearer(token)), token)


def test_key_url_headers_are_never_fetched(client: httpx.Client, ctx: Ctx, attacker: IdP) -> None:
    before = (attacker.discovery_fetches, attacker.jwks_fetches)
    for header in ("jku", "x5u"):
        token = ctx.token(ctx.header(**{header: ctx.attacker_url}), key=OTHER_KEY)
        assert_invalid_token(client.get("/mcp", headers=bearer(token)), token)
    assert (attacker.discovery_fetches, attacker.jwks_fetches) == before


@pytest.mark.parametrize("aud", ["https://other.example.com/mcp", "https://mcp.example.com/mcp/other",
                                 "https://mcp.example.com", "other-client", f"{AUDIENCE}.evil"])
def test_token_for_another_audience_or_resource_is_rejected(client: httpx.Client, idp: IdP, aud: str) -> None:
    token = idp.mint(aud=aud)
    assert_invalid_token(client.get("/mcp", headers=bearer(token)), token)


def assert_bare_challenge(response: httpx.Response, token: str | None = None) -> None:
    """401 without an error code (RFC 6750 §3.1): the request carried no usable credentials."""
    assert response.status_code == 401
    params = challenge(response)
    assert "error" not in params and "error=" not in response.headers["www-authenticate"]
    assert params["resource_metadata"] == METADATA_URL
    assert response.json()["error"] == "unauthorized"
    if token:
        assert_not_echoed(response, token)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_token_only_in_query_string_gets_bare_challenge(client: httpx.Client, idp: IdP, method: str) -> None:
    token = idp.mint()
    r = client.request(method, "/mcp", params={"access_token": token})
    assert_bare_challenge(r, token)


def test_query_string_token_is_never_used_even_when_valid_and_alone(client: httpx.Client, idp: IdP) -> None:
    token = idp.mint()
    for query in (f"access_token={token}", f"x=1&access_token={token}&y=2", f"access%5Ftoken={token}"):
        assert_bare_challenge(client.get(f"/mcp?{query}"), token)


def test_token_in_header_and_query_string_gets_401_invalid_token(client: httpx.Client, idp: IdP) -> None:
    token = idp.mint()
    assert_invalid_token(client.get("/mcp", params={"access_token": token}, headers=bearer(token)), token)
    assert_invalid_token(client.get("/mcp", params={"access_token": ""}, headers=bearer(token)), token)
    assert client.get("/mcp", params={"other": "1"}, headers=bearer(token)).status_code == 200


def test_token_in_form_body_without_header_gets_401_without_error_code(client: httpx.Client,
                                                                       idp: IdP) -> None:
    token = idp.mint()
    r = client.post("/mcp", data={"access_token": token})
    assert r.status_code == 401
    assert "error" not in challenge(r)
    assert_not_echoed(r, token)


def raw_get(base_url: str, path: str, header_lines: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a hand-written HTTP/1.1 request (httpx refuses trailing whitespace in header values)."""
    host, port = base_url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + header_lines + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("value", [b"Bearer", b"Bearer ", b"Bearer    ", b"Bearer \t", b"Bearer\t"],
                         ids=["bare", "one_space", "spaces", "space_tab", "tab"])
def test_bearer_without_token_gets_401_invalid_token(client: httpx.Client, value: bytes) -> None:
    status, headers, body = raw_get(str(client.base_url), "/mcp", b"Authorization: " + value + b"\r\n")
    assert status == 401
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert json.loads(body)["error"] == "invalid_token"


def test_two_authorization_headers_get_401_invalid_token(client: httpx.Client, idp: IdP) -> None:
    token = idp.mint()
    r = client.get("/mcp", headers=[("Authorization", f"Bearer {token}")] * 2)
    assert_invalid_token(r, token)


@pytest.mark.parametrize("scheme", ["Basic", "Token", "DPoP", "Bearer:", "Bearer,", "Bearertoken"])
def test_scheme_other_than_bearer_gets_401_invalid_token(client: httpx.Client, idp: IdP, scheme: str) -> None:
    token = idp.mint()
    assert_invalid_token(client.get("/mcp", headers=bearer(token, scheme)), token)


def test_token_without_scheme_gets_401_invalid_token(client: httpx.Client, idp: IdP) -> None:
    token = idp.mint()
    assert_invalid_token(client.get("/mcp", headers={"Authorization": token}), token)


def test_non_ascii_authorization_header_gets_401_invalid_token(client: httpx.Client) -> None:
    assert_invalid_token(client.get("/mcp", headers={"Authorization": "Bearer t\u00f6ken".encode("latin-1")}))


def test_log_never_contains_the_token(client: httpx.Client, idp: IdP, ctx: Ctx,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = idp.mint()
    expired = idp.mint(exp=ctx.now - 3600, iat=ctx.now - 7200)
    tampered = ".".join([*good.split(".")[:2], good.split(".")[2][::-1]])
    wrong_aud = idp.mint(aud="other-client")
    sent = [good, expired, tampered, wrong_aud]
    assert client.get("/mcp", headers=bearer(good)).status_code == 200
    for token in sent[1:]:
        assert client.get("/mcp", headers=bearer(token)).status_code == 401
    assert client.get("/mcp", params={"access_token": good}).status_code == 401
    assert client.get("/mcp", headers={"Authorization": good}).status_code == 401
    server_records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any("auth denied" in r.getMessage() for r in server_records)  # the log was captured
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in server_records)
    for token in sent:
        for part in (token, *token.split(".")[1:]):
            assert part not in text


OPAQUE = "sk_live_7f3a9c2e4b6d8f0a1c3e5b7d9f"


@pytest.mark.parametrize("value", [OPAQUE, f"Bearer\t{OPAQUE}"], ids=["no_scheme", "tab_instead_of_space"])
def test_log_never_contains_a_credential_sent_without_a_proper_scheme(
        client: httpx.Client, caplog: pytest.LogCaptureFixture, value: str) -> None:
    caplog.set_level(logging.DEBUG)
    assert_invalid_token(client.get("/mcp", headers={"Authorization": value}))
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "auth denied" in text
    assert not any(OPAQUE[i:i + 8] in text for i in range(len(OPAQUE) - 7))


def test_health_path_is_open(client: httpx.Client) -> None:
    assert client.get("/health").text == "ok"
    assert client.get("/health", headers={"Authorization": "Bearer garbage"}).status_code == 200


@pytest.mark.parametrize("path", ["/.well-known/oauth-protected-resource/mcp",
                                  "/.well-known/oauth-protected-resource"])
def test_metadata_is_served_at_path_and_root_form(client: httpx.Client, idp: IdP, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    doc = r.json()
    assert doc["resource"] == RESOURCE
    assert doc["authorization_servers"] == [idp.issuer, IAS_ISSUER]
    assert doc["scopes_supported"] == SCOPES
    assert doc["bearer_methods_supported"] == ["header"]
    assert doc["resource_name"]


def test_challenge_and_metadata_name_the_public_url_not_the_local_one(client: httpx.Client) -> None:
    r = client.get("/mcp")
    assert challenge(r)["resource_metadata"] == METADATA_URL
    assert "127.0.0.1" not in r.headers["www-authenticate"]
    assert client.get(METADATA_URL.split("mcp.example.com", 1)[1]).json()["resource"] == RESOURCE


def test_metadata_path_follows_a_local_resource_url(idp: IdP) -> None:
    def factory(base_url: str) -> BearerAuthMiddleware:
        return build_app(settings_for(idp.issuer, resource_url=f"{base_url}/mcp"))

    with running_server(factory=factory) as base_url, httpx.Client(base_url=base_url) as c:
        metadata_url = f"{base_url}/.well-known/oauth-protected-resource/mcp"
        assert challenge(c.get("/mcp"))["resource_metadata"] == metadata_url
        assert c.get("/.well-known/oauth-protected-resource/mcp").json()["resource"] == f"{base_url}/mcp"


def test_idp_down_with_nothing_cached_gets_503_with_retry_after() -> None:
    with running_idp(keys=[idp_key()], mode="down") as down:
        with running_server(build_app(trusting(down))) as base_url, httpx.Client(base_url=base_url) as c:
            for _ in range(3):
                r = c.get("/mcp", headers=bearer(down.mint()))
                assert r.status_code == 503
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"] == "temporarily_unavailable"
                assert "invalid_token" not in r.headers["www-authenticate"]
            assert down.discovery_fetches == 1  # backing off between requests


def test_verifier_crash_is_401_invalid_token_not_500(idp: IdP) -> None:
    class Broken:
        async def verify(self, token: str) -> Any:
            raise RuntimeError("verifier bug")

    with running_server(build_app(trusting(idp), verifier=Broken())) as base_url, \
            httpx.Client(base_url=base_url) as c:
        token = idp.mint()
        assert_invalid_token(c.get("/mcp", headers=bearer(token)), token)


def test_error_body_is_json(client: httpx.Client) -> None:
    r = client.get("/mcp", headers={"Authorization": "Bearer x.y.z"})
    assert r.headers["content-type"] == "application/json"
    description = challenge(r)["error_description"]
    assert json.loads(r.content) == {"error": "invalid_token", "error_description": description}


# --- issue 7: proof-of-possession we cannot check, malformed thumbprints, one spelling per token ---

THUMBPRINT = base64.urlsafe_b64encode(hashlib.sha256(b"some certificate").digest()).rstrip(b"=").decode()


@pytest.mark.parametrize("cnf", [{"jkt": THUMBPRINT},
                                 {"jkt": THUMBPRINT,
                                  "x5t#S256": THUMBPRINT},
                                 {"x5t": "abc"}, {"unknown": 1}],
                         ids=["dpop_jkt", "jkt_and_x5t", "sha1_x5t", "unknown_method"])
def test_token_with_confirmation_we_cannot_check_gets_401_invalid_token(client: httpx.Client, idp: IdP,
                                                                         cnf: dict[str, Any]) -> None:
    token = idp.mint(cnf=cnf)
    assert_invalid_token(client.get("/mcp", headers=bearer(token)), token)


@pytest.mark.parametrize("x5t", ["\u00e9" * 43, "\u2603", "abc", 42, ["x"]],
                         ids=["non_ascii", "snowman", "short", "number", "list"])
def test_signed_token_with_malformed_certificate_thumbprint_gets_401_invalid_token(client: httpx.Client, idp: IdP,
                                                                                  x5t: Any) -> None:
    token = idp.mint(cnf={"x5t#S256": x5t})
    assert_invalid_token(client.get("/mcp", headers=bearer(token)), token)


def test_certificate_bound_token_is_a_bearer_token_when_binding_is_off(client: httpx.Client, idp: IdP) -> None:
    token = idp.mint(cnf={"x5t#S256": THUMBPRINT})
    assert client.get("/mcp", headers=bearer(token)).status_code == 200


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_only_the_canonical_spelling_of_a_signature_is_accepted(client: httpx.Client, idp: IdP) -> None:
    token = idp.mint()
    head, signature = token.rsplit(".", 1)
    assert len(signature) % 4 == 2  # RSA-2048: 342 characters, the last one carries 4 unused bits
    base = ALPHABET.index(signature[-1]) & ~0b1111
    others = [ALPHABET[base + i] for i in range(16) if ALPHABET[base + i] != signature[-1]]
    assert client.get("/mcp", headers=bearer(token)).status_code == 200
    for last in others:  # each decodes to the same signature bytes under a lenient decoder
        spelling = f"{head}.{signature[:-1]}{last}"
        assert_invalid_token(client.get("/mcp", headers=bearer(spelling)))
    assert client.get("/mcp", headers=bearer(token)).status_code == 200


def test_connection_failure_lines_come_out_of_a_budget() -> None:
    """Forged tenant labels make the verifier connect nowhere; its log lines per window stay bounded."""
    from auth._http import LogBudget

    now = [0.0]
    budget = LogBudget(lines=3, window=60.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] = 59.9
    assert budget.take() is None
    now[0] = 60.0
    assert budget.take() == 3  # the next line says how many were held back
    assert budget.take() == 0


async def test_a_flood_of_unreachable_hosts_writes_a_bounded_number_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from auth import AuthSettings, IssuerConfig
    from auth._http import key_fetch_client
    from tests._live import free_port

    settings = AuthSettings(issuers=(IssuerConfig(issuer="https://a.example", audiences=("x",)),),
                            resource_url="https://rs.example/mcp")
    port = free_port()  # nothing listens there: connection refused
    caplog.set_level(logging.WARNING, logger="auth.http")
    async with key_fetch_client(settings) as client:
        for i in range(60):
            with pytest.raises(httpx.TransportError):
                await client.get(f"http://127.0.0.1:{port}/t{i}")
    lines = [r for r in caplog.records if r.name == "auth.http"]
    assert 1 <= len(lines) <= 20
