"""Certificate-bound tokens (RFC 8705 §3, ``auth._binding``): the pure parsing and decisions, then the
forwarded-certificate path through a real uvicorn HTTP server running the real app.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from auth import AuthSettings, InvalidToken, IssuerConfig, VerifiedToken
from auth._binding import (
    certificate_check,
    certificate_thumbprint,
    check_certificate_binding,
    client_certificate,
    parse_forwarded_client_cert,
)
from server import create_app
from server._dev_issuer import DevIssuer
from server._main import dev_settings
from tests._certs import Issued, TestCA
from tests._live import running_server

pytestmark = pytest.mark.timeout(60)

XFCC = "x-forwarded-client-cert"


@dataclass(frozen=True)
class Certs:
    a: Issued
    b: Issued


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca = TestCA(tmp_path_factory.mktemp("binding-pki"))
    return Certs(ca.issue_client("agent-a", kind="rsa"), ca.issue_client("agent-b"))


def btp_header(cert: Issued) -> str:
    """SAP BTP's gorouter form: one line of base64 DER, no armour."""
    return base64.b64encode(cert.der).decode()


def envoy_element(cert: Issued, subject: str = "CN=a,O=b") -> str:
    pem = cert.cert_pem.decode()
    return (f"By=spiffe://cluster.local/ns/notes/sa/mcp;Hash={hashlib.sha256(cert.der).hexdigest()};"
            f'Cert="{quote(pem, safe="")}";Subject="{subject}";URI=spiffe://cluster.local/ns/agents/sa/agent')


def token(thumbprint: str | None) -> VerifiedToken:
    return VerifiedToken(subject="agent", client_id="agent", issuer="https://t.example", audience=("mcp",),
                         permissions=frozenset(), expires_at=2_000_000_000, certificate_thumbprint=thumbprint)


def scope(headers: list[tuple[bytes, bytes]] | None = None,
          tls_chain: list[str] | None = None) -> dict[str, Any]:
    built: dict[str, Any] = {"type": "http", "headers": list(headers or [])}
    if tls_chain is not None:
        built["extensions"] = {"tls": {"client_cert_chain": tls_chain}}
    return built


# --------------------------------------------------------------------------- pure: parsing


def test_thumbprint_is_unpadded_base64url_sha256_of_the_der(certs: Certs) -> None:
    expected = base64.urlsafe_b64encode(hashlib.sha256(certs.a.der).digest()).decode().rstrip("=")
    assert certificate_thumbprint(certs.a.der) == expected and len(expected) == 43


def test_btp_header_is_one_line_of_base64_der(certs: Certs) -> None:
    assert parse_forwarded_client_cert(btp_header(certs.a)) == certs.a.der
    assert parse_forwarded_client_cert("  " + btp_header(certs.a) + "\t") == certs.a.der


def test_pem_armour_is_tolerated(certs: Certs) -> None:
    assert parse_forwarded_client_cert(certs.a.cert_pem.decode()) == certs.a.der


def test_envoy_form_uses_the_last_elements_cert(certs: Certs) -> None:
    header = ",".join([envoy_element(certs.b, "CN=b,O=x"), envoy_element(certs.a, "CN=a,O=b")])
    assert parse_forwarded_client_cert(header) == certs.a.der
    assert parse_forwarded_client_cert(envoy_element(certs.b)) == certs.b.der


def test_envoy_last_element_without_cert_is_refused_even_if_an_earlier_one_has_one(certs: Certs) -> None:
    header = envoy_element(certs.a) + ",By=spiffe://x;Hash=abc;Subject=\"CN=c\""
    with pytest.raises(InvalidToken):
        parse_forwarded_client_cert(header)


@pytest.mark.parametrize("value", [
    "",
    "   ",
    "not base64 at all!",
    base64.b64encode(b"definitely not DER").decode(),
    'Hash=abc;Cert="-----BEGIN%20CERTIFICATE-----%0AAAAA%0A-----END%20CERTIFICATE-----"',
    'Hash=abc;Cert="unterminated',
    "A" * 20_000,
])
def test_garbled_headers_are_invalid_token(value: str) -> None:
    with pytest.raises(InvalidToken):
        parse_forwarded_client_cert(value)


# --------------------------------------------------------------------------- pure: whose certificate


def test_forwarded_header_is_ignored_unless_trusted(certs: Certs) -> None:
    request = scope([(XFCC.encode(), btp_header(certs.a).encode())])
    assert client_certificate(request, trust_forwarded=False) is None
    assert client_certificate(request, trust_forwarded=True) == certs.a.der


def test_garbage_in_an_untrusted_header_does_no_harm() -> None:
    assert client_certificate(scope([(XFCC.encode(), b"garbage")]), trust_forwarded=False) is None


def test_duplicate_forwarded_headers_are_invalid_token(certs: Certs) -> None:
    request = scope([(XFCC.encode(), btp_header(certs.a).encode()), (b"X-Forwarded-Client-Cert", b"x")])
    with pytest.raises(InvalidToken):
        client_certificate(request, trust_forwarded=True)


def test_the_tls_connection_wins_over_the_header(certs: Certs) -> None:
    request = scope([(XFCC.encode(), btp_header(certs.b).encode())], tls_chain=[certs.a.cert_pem.decode()])
    assert client_certificate(request, trust_forwarded=True) == certs.a.der
    assert client_certificate(request, trust_forwarded=False) == certs.a.der


def test_an_empty_tls_chain_means_no_certificate() -> None:
    assert client_certificate(scope(tls_chain=[]), trust_forwarded=False) is None


# --------------------------------------------------------------------------- pure: the decision per mode


@pytest.mark.parametrize(("mode", "bound", "presented", "ok"), [
    ("off", True, None, True),
    ("off", True, "b", True),
    ("off", False, None, True),
    ("if-bound", False, None, True),
    ("if-bound", False, "a", True),
    ("if-bound", True, "a", True),
    ("if-bound", True, "b", False),
    ("if-bound", True, None, False),
    ("required", False, None, False),
    ("required", False, "a", False),
    ("required", True, "a", True),
    ("required", True, "b", False),
    ("required", True, None, False),
])
def test_modes(certs: Certs, mode: str, bound: bool, presented: str | None, ok: bool) -> None:
    verified = token(certificate_thumbprint(certs.a.der) if bound else None)
    der = getattr(certs, presented).der if presented else None
    if ok:
        check_certificate_binding(verified, der, mode=mode)
    else:
        with pytest.raises(InvalidToken):
            check_certificate_binding(verified, der, mode=mode)


def test_no_middleware_hook_when_binding_is_off() -> None:
    settings = AuthSettings(issuers=(IssuerConfig(issuer="https://t.example", audiences=("mcp",)),),
                            resource_url="https://mcp.example/mcp")
    assert certificate_check(settings) is None
    assert certificate_check(dataclasses.replace(settings, cert_binding="if-bound")) is not None


def test_if_bound_hook_does_not_parse_headers_for_unbound_tokens() -> None:
    settings = AuthSettings(issuers=(IssuerConfig(issuer="https://t.example", audiences=("mcp",)),),
                            resource_url="https://mcp.example/mcp", cert_binding="if-bound",
                            trust_forwarded_client_cert=True)
    check = certificate_check(settings)
    assert check is not None
    check(scope([(XFCC.encode(), b"garbage")]), token(None))  # nothing to compare: no error


# --------------------------------------------------------------------------- through a real server


@dataclass
class Live:
    base_url: str
    issuer: DevIssuer

    def call(self, token: str, *xfcc: str) -> httpx.Response:
        headers = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"),
                   ("Accept", "application/json, text/event-stream"), ("MCP-Protocol-Version", "2025-11-25")]
        headers += [("X-Forwarded-Client-Cert", value) for value in xfcc]
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
        return httpx.post(self.base_url + "/mcp", content=body, headers=headers, timeout=10)


@contextlib.contextmanager
def live_server(db: Path, *, trust: bool = True, mode: str = "if-bound") -> Iterator[Live]:
    built: list[Live] = []

    def factory(base_url: str) -> Any:
        issuer = DevIssuer(base_url)
        port = base_url.rsplit(":", 1)[1]
        env = {"MCP_NOTES_DB": str(db), "HOST": "127.0.0.1", "PORT": port}
        settings = dev_settings(env, base_url, issuer)
        auth = dataclasses.replace(settings.auth, cert_binding=mode, trust_forwarded_client_cert=trust)
        built.append(Live(base_url, issuer))
        return create_app(dataclasses.replace(settings, auth=auth),
                          extra_routes=[*issuer.well_known_routes(), issuer.mount()])

    with running_server(factory=factory, lifespan="on"):
        yield built[0]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_server(tmp_path_factory.mktemp("binding") / "notes.db") as server:
        yield server


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def bound(live: Live, cert: Issued) -> str:
    return live.issuer.mint("dev-full", client_certificate_thumbprint=certificate_thumbprint(cert.der))


@pytest.mark.parametrize("form", ["btp", "envoy"])
def test_bound_token_with_its_forwarded_certificate_is_accepted(live: Live, certs: Certs, form: str) -> None:
    header = btp_header(certs.a) if form == "btp" else f"{envoy_element(certs.b)},{envoy_element(certs.a)}"
    response = live.call(bound(live, certs.a), header)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["structuredContent"]["client_id"] == "dev-full"


@pytest.mark.parametrize("form", ["btp", "envoy"])
def test_bound_token_with_another_forwarded_certificate_is_invalid_token(live: Live, certs: Certs,
                                                                           form: str) -> None:
    header = btp_header(certs.b) if form == "btp" else envoy_element(certs.b)
    assert_invalid_token(live.call(bound(live, certs.a), header))


def test_bound_token_without_a_certificate_is_invalid_token(live: Live, certs: Certs) -> None:
    assert_invalid_token(live.call(bound(live, certs.a)))


@pytest.mark.parametrize("garbage", ["garbage", 'Hash=1;Cert="%%%"', base64.b64encode(b"nope").decode()])
def test_bound_token_with_a_garbled_header_is_invalid_token(live: Live, certs: Certs, garbage: str) -> None:
    assert_invalid_token(live.call(bound(live, certs.a), garbage))


def test_bound_token_with_duplicate_headers_is_invalid_token(live: Live, certs: Certs) -> None:
    assert_invalid_token(live.call(bound(live, certs.a), btp_header(certs.a), btp_header(certs.a)))


def test_unbound_token_passes_in_if_bound_mode_whatever_the_header(live: Live) -> None:
    unbound = live.issuer.mint("dev-full")
    assert live.call(unbound).status_code == 200
    assert live.call(unbound, "garbage").status_code == 200


def test_untrusted_header_cannot_satisfy_a_bound_token(certs: Certs, tmp_path: Path) -> None:
    with live_server(tmp_path / "notes.db", trust=False) as server:
        assert_invalid_token(server.call(bound(server, certs.a), btp_header(certs.a)))


def test_required_mode_refuses_unbound_tokens(certs: Certs, tmp_path: Path) -> None:
    with live_server(tmp_path / "notes.db", mode="required") as server:
        assert_invalid_token(server.call(server.issuer.mint("dev-full"), btp_header(certs.a)))
        assert server.call(bound(server, certs.a), btp_header(certs.a)).status_code == 200
