"""Certificate-bound tokens (RFC 8705 §3, ``auth._binding``): the pure parsing and decisions, then the
forwarded-certificate path through a real uvicorn HTTP server running the real app.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import time
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


BEGIN, END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
LIMIT = 16 * 1024


def _fill(prefix: str, unit: str, suffix: str = "") -> str:
    """``prefix + unit * k + suffix`` as close to the 16 KiB limit as the unit allows."""
    return prefix + unit * ((LIMIT - len(prefix) - len(suffix)) // len(unit)) + suffix


# Shapes that made the old backtracking pattern (or a naive splitter) super-linear, each 16 KiB.
WORST_CASES = {
    "begin_whitespace_x": _fill(BEGIN, " ", "x"),  # issue 7 item 3: cubic in the old regex
    "begin_mixed_space_x": _fill(BEGIN, " \t\n\r\x0b", "x"),
    "begin_repeated": _fill("", BEGIN),
    "begin_space_end_space": _fill(BEGIN, " ", END + " x"),
    "begin_then_ends": _fill(BEGIN, " " + END[:-1]),
    "cert_whitespace": _fill("Cert=" + BEGIN, "%20", "x"),
    "quoted_cert_whitespace": _fill('Cert="' + BEGIN, " ", 'x"'),
    "separators": _fill("Hash=a", ";"),
    "elements": _fill("", "Hash=a,"),
    "unterminated_quote_separators": _fill('Cert="', ";,"),
    "escapes": _fill('Subject="', "\\\""),
    "quotes": _fill("Cert=", '"'),
    "equals": _fill("", "="),
    "keys_with_spaces": _fill("", " Hash =;"),
}


@pytest.mark.parametrize("value", WORST_CASES.values(), ids=WORST_CASES.keys())
def test_worst_case_16_kib_header_is_refused_in_linear_time(value: str) -> None:
    assert len(value) <= LIMIT
    started = time.process_time()
    with pytest.raises(InvalidToken):
        parse_forwarded_client_cert(value)
    assert time.process_time() - started < 0.5  # linear: about a millisecond; the old regex took minutes


def test_header_over_16_kib_is_refused_without_parsing() -> None:
    started = time.process_time()
    with pytest.raises(InvalidToken, match="too long"):
        parse_forwarded_client_cert(_fill(BEGIN, " ", "x") + " " * 8 + "x")
    assert time.process_time() - started < 0.5


def test_quoted_separators_and_escapes_stay_inside_their_element(certs: Certs) -> None:
    tricky = 'Subject="CN=x,\\"O=y;z\\\\";URI=a'
    assert parse_forwarded_client_cert(f"{envoy_element(certs.b)},{tricky};{envoy_element(certs.a)}") == certs.a.der
    with pytest.raises(InvalidToken):
        parse_forwarded_client_cert(f"{envoy_element(certs.a)},{tricky}")  # the last element has no Cert


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

    # h11 refuses header blocks over 16 KiB by default; allow more so a 16 KiB XFCC reaches the app.
    with running_server(factory=factory, lifespan="on", h11_max_incomplete_event_size=64 * 1024):
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


@pytest.mark.parametrize("shape", ["begin_whitespace_x", "cert_whitespace", "quotes", "separators"])
def test_worst_case_16_kib_forwarded_header_gets_401_invalid_token_quickly(live: Live, certs: Certs,
                                                                           shape: str) -> None:
    token = bound(live, certs.a)
    started = time.monotonic()
    response = live.call(token, WORST_CASES[shape])
    elapsed = time.monotonic() - started
    assert_invalid_token(response)
    assert response.json()["error"] == "invalid_token"
    assert elapsed < 2.0  # the old pattern held the event loop for minutes at this size
    assert live.call(token, btp_header(certs.a)).status_code == 200  # and the server is still serving


@pytest.mark.parametrize("thumbprint", ["\u00e9" * 43, "\u2603" + "A" * 42, "abc", "A" * 44],
                         ids=["latin1", "snowman_prefix", "short", "long"])
def test_bound_token_with_malformed_thumbprint_gets_401_invalid_token_not_500(live: Live, certs: Certs,
                                                                              thumbprint: str) -> None:
    token = live.issuer.mint("dev-full", client_certificate_thumbprint=thumbprint)
    for headers in ((btp_header(certs.a),), ()):
        response = live.call(token, *headers)
        assert_invalid_token(response)
        assert response.json()["error"] == "invalid_token"


def test_dpop_bound_token_is_not_accepted_as_a_bearer_token(live: Live, certs: Certs) -> None:
    jkt = certificate_thumbprint(certs.a.der)  # any well-formed JWK thumbprint
    for cnf in ({"jkt": jkt}, {"jkt": jkt, "x5t#S256": certificate_thumbprint(certs.a.der)}):
        response = live.call(live.issuer.mint("dev-full", cnf=cnf), btp_header(certs.a))
        assert_invalid_token(response)
        assert response.json()["error"] == "invalid_token"
