"""A refused token's 401 names the category of the refusal, never anything from the token (issue 16, item 7).

``error_description`` is a fixed text per category (expired, not yet valid, wrong audience, untrusted
issuer, bad signature, malformed, certificate mismatch); the detailed reason stays in the log. On main
every refusal read "The access token is invalid or expired".

Over real HTTP: a Starlette app behind `BearerAuthMiddleware` under uvicorn, the live test IdP as the
trusted issuer, certificate binding "if-bound". In process: every bad token of ``_cases`` raises the
category it belongs to.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auth import BearerAuthMiddleware, InvalidToken, JWTVerifier, current_token
from auth._errors import (
    BadSignature,
    CertificateMismatch,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    UntrustedIssuer,
    WrongAudience,
)
from tests._idp import IdP
from tests._live import running_server

from ._cases import AUDIENCE, TOKEN_CASES, Case, Ctx
from ._support import Clock, issuer_config, settings_for

pytestmark = pytest.mark.timeout(60)

EXPIRED = "The access token has expired"
NOT_YET_VALID = "The access token is not yet valid"
WRONG_AUDIENCE = "The access token was not issued for this resource (audience)"
UNTRUSTED_ISSUER = "The access token's issuer is not trusted by this server"
BAD_SIGNATURE = "The access token's signature does not verify with its issuer's keys"
MALFORMED = "The access token is malformed or of a kind this server does not accept"
CERTIFICATE = "The access token's certificate binding does not match the client certificate"

# Distinctive values a token may carry: none may come back to the client.
DISTINCT_ISS = "https://zz-distinct-issuer-5b7e.example/tenant"
DISTINCT_AUD = "urn:zz-distinct-audience-5b7e"
DISTINCT_KID = "zz-distinct-kid-5b7e"
DISTINCT_SUB = "zz-distinct-subject-5b7e"
THUMBPRINT = base64.urlsafe_b64encode(hashlib.sha256(b"a certificate").digest()).rstrip(b"=").decode()
_PARAM = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def challenge(response: httpx.Response) -> dict[str, str]:
    header = response.headers["www-authenticate"]
    assert header.startswith("Bearer ")
    return dict(_PARAM.findall(header))


@pytest.fixture(scope="module")
def base_url(idp: IdP) -> Iterator[str]:
    settings = settings_for(issuer_config(idp.issuer), cert_binding="if-bound")

    async def mcp(request: Request) -> JSONResponse:
        return JSONResponse({"client_id": current_token().client_id})

    app = BearerAuthMiddleware(Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST"])]),
                               verifier=JWTVerifier(settings), settings=settings, protect=["/mcp"])
    with running_server(app) as url:
        yield url


def now() -> int:
    return int(time.time())


# One token per category, each carrying distinctive values where the category allows.
CATEGORIES: dict[str, tuple[Callable[[IdP, IdP], str], str]] = {
    "expired": (lambda idp, _: idp.mint(aud=AUDIENCE, sub=DISTINCT_SUB, exp=now() - 3600, iat=now() - 7200), EXPIRED),
    "not_yet_valid": (lambda idp, _: idp.mint(aud=AUDIENCE, sub=DISTINCT_SUB, nbf=now() + 3600), NOT_YET_VALID),
    "wrong_audience": (lambda idp, _: idp.mint(aud=DISTINCT_AUD, sub=DISTINCT_SUB), WRONG_AUDIENCE),
    "untrusted_issuer": (lambda idp, _: idp.mint(aud=AUDIENCE, iss=DISTINCT_ISS, sub=DISTINCT_SUB), UNTRUSTED_ISSUER),
    "bad_signature": (lambda idp, attacker: idp.mint(aud=AUDIENCE, sub=DISTINCT_SUB, key=attacker.key), BAD_SIGNATURE),
    "unknown_key": (lambda idp, _: idp.mint(aud=AUDIENCE, sub=DISTINCT_SUB, header={"kid": DISTINCT_KID}),
                    BAD_SIGNATURE),
    "malformed": (lambda idp, _: "zz-distinct-not-a-jwt-5b7e", MALFORMED),
    "malformed_header": (lambda idp, _: idp.mint(aud=AUDIENCE, header={"kid": DISTINCT_KID, "jku": DISTINCT_ISS}),
                         MALFORMED),
    "certificate_mismatch": (lambda idp, _: idp.mint(aud=AUDIENCE, sub=DISTINCT_SUB, cnf={"x5t#S256": THUMBPRINT}),
                             CERTIFICATE),
}


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_each_category_gets_401_invalid_token_with_its_own_description(base_url: str, idp: IdP, attacker: IdP,
                                                                        category: str) -> None:
    build, description = CATEGORIES[category]
    response = httpx.get(base_url + "/mcp", headers={"Authorization": f"Bearer {build(idp, attacker)}"})
    assert response.status_code == 401
    params = challenge(response)
    assert params["error"] == "invalid_token"
    assert params["error_description"] == description
    assert response.json() == {"error": "invalid_token", "error_description": description}


def test_the_categories_read_differently() -> None:
    assert len({description for _, description in CATEGORIES.values()}) == 7
    assert all(re.fullmatch(r"[\x20\x21\x23-\x5b\x5d-\x7e]+", d) for _, d in CATEGORIES.values())  # RFC 6750 §3


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_no_token_content_reaches_the_client(base_url: str, idp: IdP, attacker: IdP, category: str) -> None:
    build, _ = CATEGORIES[category]
    token = build(idp, attacker)
    response = httpx.get(base_url + "/mcp", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    sent = response.text + " ".join(response.headers.values())
    for value in (DISTINCT_ISS, DISTINCT_AUD, DISTINCT_KID, DISTINCT_SUB, "zz-distinct", "5b7e", THUMBPRINT):
        assert value not in sent
    for part in token.split("."):
        assert len(part) < 8 or part not in sent


def test_the_detailed_reason_stays_in_the_log(base_url: str, idp: IdP, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="auth"):
        response = httpx.get(base_url + "/mcp", headers={"Authorization": f"Bearer {idp.mint(aud=DISTINCT_AUD)}"})
    assert challenge(response)["error_description"] == WRONG_AUDIENCE
    assert any(DISTINCT_AUD in r.getMessage() and "not ours" in r.getMessage() for r in caplog.records)


def test_a_certificate_bound_token_with_an_uncheckable_method_is_a_certificate_refusal(base_url: str,
                                                                                       idp: IdP) -> None:
    token = idp.mint(aud=AUDIENCE, cnf={"jkt": THUMBPRINT})  # DPoP (RFC 9449): not a bearer token for us
    response = httpx.get(base_url + "/mcp", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert challenge(response)["error_description"] == CERTIFICATE


@pytest.mark.parametrize("header", [b"Basic dXNlcjpwYXNz", b"Bearer", b"Bearer a b"])
def test_a_malformed_authorization_header_is_a_malformed_refusal(base_url: str, header: bytes) -> None:
    response = httpx.get(base_url + "/mcp", headers={"Authorization": header})
    assert response.status_code == 401
    assert challenge(response)["error"] == "invalid_token"
    assert challenge(response)["error_description"] == MALFORMED


# -- in process: every bad token of the attack table, by category -------------------------------------------


def expected_category(case: Case) -> type[InvalidToken]:
    """The category each case of ``_cases`` belongs to (pure)."""
    name = case.name
    if case.layer == "parse" or name == "signature_truncated":  # a truncated signature is no longer base64url
        return MalformedToken
    if case.layer in ("signature", "kid"):
        return BadSignature
    if name.startswith(("iss_", "ias_iss_")):
        return UntrustedIssuer
    if name.startswith("aud_"):
        return MalformedToken if name in ("aud_number", "aud_number_in_array", "aud_object") else WrongAudience
    if name == "exp_past_beyond_leeway":
        return TokenExpired
    if name in ("nbf_future_beyond_leeway", "iat_future_beyond_leeway"):
        return TokenNotYetValid
    return MalformedToken  # claims of the wrong type, missing exp or sub, malformed cnf


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def warm_verifier(idp: IdP) -> AsyncIterator[tuple[JWTVerifier, Ctx]]:
    clock = Clock()  # fixed: the time cases stay exactly beyond the leeway
    verifier = JWTVerifier(settings_for(idp.issuer), clock=clock)
    ctx = Ctx(issuer=idp.issuer, now=int(clock()))
    await verifier.verify(ctx.good())
    yield verifier, ctx
    await verifier.aclose()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", TOKEN_CASES, ids=lambda c: c.name)
async def test_every_bad_token_is_refused_with_its_category(warm_verifier: tuple[JWTVerifier, Ctx],
                                                            case: Case) -> None:
    verifier, ctx = warm_verifier
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(case.build(ctx))
    assert type(info.value) is expected_category(case), info.value.reason


def test_every_category_is_used_by_the_attack_table() -> None:
    used = {expected_category(c) for c in TOKEN_CASES}
    assert used == {MalformedToken, BadSignature, UntrustedIssuer, WrongAudience, TokenExpired, TokenNotYetValid}


def test_categories_are_invalid_token_with_a_fixed_description() -> None:
    categories: list[Any] = [TokenExpired, TokenNotYetValid, WrongAudience, UntrustedIssuer, BadSignature,
                             MalformedToken, CertificateMismatch]
    for cls in categories:
        exc = cls("a reason naming zz-distinct-5b7e")
        assert isinstance(exc, InvalidToken) and exc.error == "invalid_token" and exc.status == 401
        assert "zz-distinct" not in exc.description
