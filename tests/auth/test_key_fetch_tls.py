"""Key and discovery fetches over HTTPS from an issuer whose certificate a private CA signed.

The key server is `tests._idp` served by uvicorn with a certificate from a test CA made with
`server._devcerts`; the verifier fetches over real TLS.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth import AuthSettings, IssuerConfig, JWTVerifier, KeysUnavailable, load_settings
from auth._http import failure_reason
from tests._certs import TestCA
from tests._idp import PATH, IdP
from tests._live import running_server


@contextlib.contextmanager
def https_idp(ca: TestCA) -> Iterator[IdP]:
    leaf = ca.issue_server()
    idp = IdP()

    def build(base_url: str):  # type: ignore[no-untyped-def]
        idp.issuer = base_url + PATH
        return idp.app()

    with running_server(factory=build, ssl_certfile=str(leaf.cert_path), ssl_keyfile=str(leaf.key_path)):
        yield idp


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"), "Private issuer CA")


@pytest.fixture(scope="module")
def idp(ca: TestCA) -> Iterator[IdP]:
    with https_idp(ca) as running:
        yield running


def settings_for(idp: IdP, ca_file: str | None) -> AuthSettings:
    return AuthSettings(
        issuers=(IssuerConfig(issuer=idp.issuer, audiences=("mcp-client",)),),
        resource_url="https://mcp.example.com/mcp",
        ca_file=ca_file,
        http_timeout_s=10,
    )


async def test_ca_file_lets_the_verifier_fetch_keys_from_a_private_https_issuer(idp: IdP, ca: TestCA) -> None:
    verifier = JWTVerifier(settings_for(idp, str(ca.cert_path)))
    try:
        verified = await verifier.verify(idp.mint())
    finally:
        await verifier.aclose()
    assert verified.client_id == "consumer-client"


async def test_without_the_ca_keys_are_unavailable_and_the_log_says_why(
    idp: IdP, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = JWTVerifier(settings_for(idp, None))
    with caplog.at_level(logging.WARNING, logger="auth.http"):
        try:
            with pytest.raises(KeysUnavailable):
                await verifier.verify(idp.mint())
        finally:
            await verifier.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "auth.http"]
    assert any("certificate verify failed" in line and "MCP_AUTH_CA_FILE" in line for line in lines), lines


async def test_ssl_cert_file_is_honoured_when_no_ca_file_is_set(idp: IdP, ca: TestCA) -> None:
    env = {"MCP_AUTH_ISSUER": idp.issuer, "MCP_AUTH_AUDIENCE": "mcp-client",
           "MCP_RESOURCE_URL": "https://mcp.example.com/mcp", "SSL_CERT_FILE": str(ca.cert_path)}
    settings = load_settings(env)
    assert settings.ca_file == str(ca.cert_path)
    verifier = JWTVerifier(settings)
    try:
        assert (await verifier.verify(idp.mint())).client_id == "consumer-client"
    finally:
        await verifier.aclose()


async def test_a_ca_that_did_not_sign_the_issuer_still_fails(idp: IdP, tmp_path: Path) -> None:
    other = TestCA(tmp_path, "Unrelated CA")
    verifier = JWTVerifier(settings_for(idp, str(other.cert_path)))
    try:
        with pytest.raises(KeysUnavailable):
            await verifier.verify(idp.mint())
    finally:
        await verifier.aclose()


def test_failure_reason_prefers_the_certificate_check_message() -> None:
    import ssl

    inner = ssl.SSLCertVerificationError(1, "boom")
    inner.verify_message = "unable to get local issuer certificate"
    try:
        try:
            raise inner
        except ssl.SSLError as exc:
            raise ConnectionError("connect failed") from exc
    except ConnectionError as outer:
        assert failure_reason(outer) == "certificate verify failed: unable to get local issuer certificate"
    assert failure_reason(OSError("Connection refused")) == "Connection refused"
