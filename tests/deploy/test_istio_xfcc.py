"""Certificate-bound tokens behind Kyma's Istio ingress gateway and the app's own sidecar.

The gateway (mutual TLS; the APIRule sets ``X-Forwarded-Client-Cert: Cert="%DOWNSTREAM_PEER_CERT%"``,
or the gateway runs ``forwardClientCertDetails: SANITIZE_SET``) writes the client's element; the
app's Istio sidecar then appends its own, as Istio configures every sidecar's inbound listener
(``APPEND_FORWARD`` with ``Subject``, ``URI`` and ``DNS`` of its peer, no ``Cert``). So the app reads
``<gateway's element>,<sidecar's element>`` and the last element never holds the client's
certificate. With ``MCP_AUTH_XFCC_GATEWAY`` set to the gateway's SPIFFE ID the server takes the
element before the sidecar's, and only when the sidecar names that gateway as its peer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from auth import ConfigError, InvalidToken, certificate_thumbprint, load_settings
from auth._binding import parse_forwarded_client_cert
from server import create_app
from server._dev_issuer import DevIssuer
from server._main import dev_settings
from tests._certs import Issued, TestCA
from tests._live import running_server

pytestmark = pytest.mark.timeout(60)

GATEWAY = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
APP = "spiffe://cluster.local/ns/notes/sa/notes-mcp"
ATTACKER = "spiffe://cluster.local/ns/other/sa/default"


@dataclasses.dataclass(frozen=True)
class Certs:
    a: Issued
    b: Issued


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca = TestCA(tmp_path_factory.mktemp("istio-pki"))
    return Certs(ca.issue_client("agent-a", kind="rsa"), ca.issue_client("agent-b"))


def gateway_element(cert: Issued) -> str:
    """What the ingress gateway writes (an APIRule header ``Cert="%DOWNSTREAM_PEER_CERT%"``, or SANITIZE_SET)."""
    pem = quote(cert.cert_pem.decode(), safe="")
    return f'Hash={hashlib.sha256(cert.der).hexdigest()};Cert="{pem}";Subject="CN=agent,O=Agents"'


def sidecar_element(peer: str) -> str:
    """What the app's sidecar appends: its own id (By), the peer certificate's hash, subject and URI; no Cert."""
    return f'By={APP};Hash={"ab" * 32};Subject="";URI={peer}'


def istio(cert: Issued, peer: str = GATEWAY) -> str:
    return f"{gateway_element(cert)},{sidecar_element(peer)}"


# -- pure --------------------------------------------------------------------------------------------


def test_the_element_before_the_gateways_sidecar_entry_is_the_clients(certs: Certs) -> None:
    assert parse_forwarded_client_cert(istio(certs.a), gateway=GATEWAY) == certs.a.der
    quoted_uri = f'{gateway_element(certs.a)},By={APP};Subject="";URI="{GATEWAY}"'
    assert parse_forwarded_client_cert(quoted_uri, gateway=GATEWAY) == certs.a.der


def test_without_the_gateway_setting_the_sidecars_element_has_no_certificate(certs: Certs) -> None:
    with pytest.raises(InvalidToken):
        parse_forwarded_client_cert(istio(certs.a))


@pytest.mark.parametrize("header", [
    "forged-in-mesh",          # another workload sent a Cert element straight to the app's sidecar
    "sidecar-only",            # the gateway wrote nothing (a route without mutual TLS)
    "gateway-only",            # no sidecar element: the request did not come through the mesh hop
    "btp-form",                # the gorouter's base64 DER is not what an Istio gateway writes
    "gateway-without-cert",
])
def test_elements_not_vouched_for_by_the_sidecar_are_refused(certs: Certs, header: str) -> None:
    value = {
        "forged-in-mesh": istio(certs.a, peer=ATTACKER),
        "sidecar-only": sidecar_element(GATEWAY),
        "gateway-only": gateway_element(certs.a),
        "btp-form": certs.a.der.hex(),
        "gateway-without-cert": f'Hash=00;Subject="CN=x",{sidecar_element(GATEWAY)}',
    }[header]
    with pytest.raises(InvalidToken):
        parse_forwarded_client_cert(value, gateway=GATEWAY)


def test_a_forged_element_before_the_gateways_is_never_read(certs: Certs) -> None:
    header = f"{gateway_element(certs.b)},{istio(certs.a)}"  # client-sent b survived a misconfigured gateway
    assert parse_forwarded_client_cert(header, gateway=GATEWAY) == certs.a.der


# -- settings ----------------------------------------------------------------------------------------

BASE = {"MCP_AUTH_ISSUER": "https://t.accounts.ondemand.com", "MCP_AUTH_AUDIENCE": "a",
        "MCP_RESOURCE_URL": "https://notes-mcp.c-1.kyma.ondemand.com/mcp"}


def test_gateway_setting_is_read_and_needs_trust() -> None:
    env = {**BASE, "MCP_AUTH_TRUST_XFCC": "true", "MCP_AUTH_XFCC_GATEWAY": GATEWAY}
    assert load_settings(env).forwarded_client_cert_gateway == GATEWAY
    assert load_settings(BASE).forwarded_client_cert_gateway is None
    with pytest.raises(ConfigError) as err:
        load_settings({**env, "MCP_AUTH_TRUST_XFCC": "false"})
    assert err.value.setting == "MCP_AUTH_XFCC_GATEWAY"


@pytest.mark.parametrize("value", ["istio-ingressgateway", "https://x", f"{GATEWAY};URI=x", f"{GATEWAY} x"])
def test_gateway_setting_must_be_one_spiffe_id(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({**BASE, "MCP_AUTH_TRUST_XFCC": "true", "MCP_AUTH_XFCC_GATEWAY": value})
    assert err.value.setting == "MCP_AUTH_XFCC_GATEWAY"


# -- through a real server ---------------------------------------------------------------------------


@dataclasses.dataclass
class Live:
    base_url: str
    issuer: DevIssuer

    def call(self, token: str, *xfcc: str) -> httpx.Response:
        headers = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"),
                   ("Accept", "application/json, text/event-stream"), ("MCP-Protocol-Version", "2025-11-25")]
        headers += [("X-Forwarded-Client-Cert", value) for value in xfcc]
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
        return httpx.post(self.base_url + "/mcp", content=body, headers=headers, timeout=10)

    def bound(self, cert: Issued) -> str:
        return self.issuer.mint("dev-full", client_certificate_thumbprint=certificate_thumbprint(cert.der))


@contextlib.contextmanager
def kyma_server(db: Path) -> Iterator[Live]:
    """The app with the settings docs/deploy-kyma.md gives (read from the environment), behind 'Istio'."""
    built: list[Live] = []

    def factory(base_url: str) -> Any:
        issuer = DevIssuer(base_url)
        env = {"MCP_NOTES_DB": str(db), "HOST": "127.0.0.1", "PORT": base_url.rsplit(":", 1)[1],
               "MCP_AUTH_ISSUER": issuer.issuer, "MCP_AUTH_AUDIENCE": issuer.server_client_id,
               "MCP_RESOURCE_URL": base_url + "/mcp", "MCP_AUTH_CERT_BINDING": "if-bound",
               "MCP_AUTH_TRUST_XFCC": "true", "MCP_AUTH_XFCC_GATEWAY": GATEWAY}
        settings = dev_settings(env, base_url, issuer)
        settings = dataclasses.replace(settings, auth=load_settings(env))
        built.append(Live(base_url, issuer))
        return create_app(settings, extra_routes=[*issuer.well_known_routes(), issuer.mount()])

    with running_server(factory=factory, lifespan="on"):
        yield built[0]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with kyma_server(tmp_path_factory.mktemp("istio") / "notes.db") as server:
        yield server


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_bound_token_through_gateway_and_sidecar_is_accepted(live: Live, certs: Certs) -> None:
    response = live.call(live.bound(certs.a), istio(certs.a))
    assert response.status_code == 200, response.text
    assert response.json()["result"]["structuredContent"]["client_id"] == "dev-full"


@pytest.mark.parametrize("case", ["other-certificate", "forged-in-mesh", "no-header", "sidecar-only", "twice"])
def test_bound_token_without_its_certificate_through_the_gateway_is_401(live: Live, certs: Certs, case: str) -> None:
    token = live.bound(certs.a)
    headers = {
        "other-certificate": [istio(certs.b)],
        "forged-in-mesh": [istio(certs.a, peer=ATTACKER)],
        "no-header": [],
        "sidecar-only": [sidecar_element(GATEWAY)],
        "twice": [istio(certs.a), istio(certs.a)],
    }[case]
    assert_invalid_token(live.call(token, *headers))


def test_unbound_token_needs_no_certificate(live: Live) -> None:
    response = live.call(live.issuer.mint("dev-full"), "garbage")
    assert response.status_code == 200, response.text
