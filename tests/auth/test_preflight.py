"""Only a real CORS preflight passes `BearerAuthMiddleware` without a token (issue 15, item 6).

A user's Starlette app answers ``OPTIONS /api`` with its data (a route that allows OPTIONS) and
lets Starlette's ``CORSMiddleware`` answer preflights, all behind the middleware, served by real
uvicorn. An ``OPTIONS`` that is not a preflight (no ``Origin`` or no
``Access-Control-Request-Method``, or with a body) is an ordinary request and needs a token.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auth import BearerAuthMiddleware, JWTVerifier
from tests._idp import IdP
from tests._live import running_server

from ._cases import AUDIENCE
from ._guarded import error_code, forged_token
from ._support import RESOURCE, issuer_config, settings_for

pytestmark = pytest.mark.timeout(60)

ORIGIN = "https://app.example"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}


@pytest.fixture(scope="module")
def api(idp: IdP) -> Iterator[str]:
    settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE,)), resource_url=RESOURCE)
    verifier = JWTVerifier(settings)

    async def data(_: Request) -> JSONResponse:
        return JSONResponse({"data": "secret"})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await verifier.aclose()

    app = Starlette(
        routes=[Route("/api", data, methods=["GET", "POST", "OPTIONS"])],
        middleware=[Middleware(CORSMiddleware, allow_origins=[ORIGIN], allow_methods=["GET", "POST"],
                               allow_headers=["authorization", "content-type"])],
        lifespan=lifespan,
    )
    with running_server(BearerAuthMiddleware(app, verifier=verifier, settings=settings, protect=["/api"]),
                        lifespan="on") as base_url:
        yield base_url + "/api"


def options(url: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    return httpx.request("OPTIONS", url, headers=headers, timeout=10, **kwargs)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, None),  # a bare OPTIONS
        ({"Origin": ORIGIN}, None),  # no Access-Control-Request-Method
        ({"Access-Control-Request-Method": "POST"}, None),  # no Origin
        (PREFLIGHT, b'{"jsonrpc":"2.0"}'),  # a preflight does not carry a body
        (PREFLIGHT, iter([b"chunked", b"body"])),  # nor a chunked one
    ],
    ids=["bare", "origin only", "no origin", "with a body", "chunked body"],
)
def test_options_that_is_no_preflight_needs_a_token(api: str, headers: dict[str, str], body: Any) -> None:
    response = options(api, headers, content=body)
    assert response.status_code == 401, (response.status_code, response.text[:200])
    assert error_code(response) is None  # RFC 6750 §3.1: no credentials, no error code
    assert "secret" not in response.text


def test_options_with_a_bad_token_is_invalid_token(api: str, idp: IdP) -> None:
    response = options(api, {"Authorization": f"Bearer {forged_token(idp.issuer)}"})
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"
    assert "secret" not in response.text


def test_options_with_a_valid_token_reaches_the_app(api: str, idp: IdP) -> None:
    response = options(api, {"Authorization": f"Bearer {idp.mint()}"})
    assert response.status_code == 200
    assert response.json() == {"data": "secret"}


def test_a_real_preflight_passes_without_a_token(api: str) -> None:
    response = options(api, PREFLIGHT | {"Access-Control-Request-Headers": "authorization"})
    assert response.status_code == 200, (response.status_code, response.text[:200])
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "www-authenticate" not in response.headers
    assert "secret" not in response.text  # CORSMiddleware answered it; the route never ran
