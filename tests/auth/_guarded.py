"""A small Starlette app behind `BearerAuthMiddleware` + `JWTVerifier`, served by a real uvicorn server.

The key-cache, fault and flood tests talk to it over HTTP on 127.0.0.1 with httpx and assert
what a client sees: status, RFC 6750 error code, ``Retry-After``. The verifier's monotonic clock
can be injected (a `Clock` the test moves), so cool-downs and TTLs pass without sleeping.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from auth import AuthSettings, BearerAuthMiddleware, IssuerConfig, JWTVerifier, current_token
from tests._idp import IdP
from tests._live import running_server

from ._cases import AUDIENCE, OTHER_KEY, private_pem
from ._support import RESOURCE

BINDING_TID = "binding-tenant"  # the app_tid of our own identity binding
CLIENT_ID = "our-client-id"  # ours at IAS: sent as x-client_id
_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_FORGER = RSAKey.import_key(private_pem(OTHER_KEY), parameters={"kid": "forged", "use": "sig", "alg": "RS256"})


@dataclass
class Guarded:
    base_url: str
    verifier: JWTVerifier


def ias_settings(idp: IdP, *, multi_tenant: bool = False, **overrides: Any) -> AuthSettings:
    """IAS settings as a bound app has them: our client id, the binding's tenant, optionally multi-tenant."""
    config = IssuerConfig(
        issuer=idp.issuer,
        audiences=(AUDIENCE,),
        client_id=CLIENT_ID,
        app_tid=BINDING_TID,
        domains=(idp.tenant_domain,) if multi_tenant else (),
    )
    values: dict[str, Any] = {"issuers": (config,), "resource_url": RESOURCE, "http_timeout_s": 3.0}
    return AuthSettings(**(values | overrides))


@contextlib.contextmanager
def guarded(settings: AuthSettings, *, client: httpx.AsyncClient | None = None,
            monotonic: Callable[[], float] = time.monotonic) -> Iterator[Guarded]:
    """Serve ``/mcp`` (answers the principal's client id) and ``/health`` behind the middleware."""
    verifier = JWTVerifier(settings, client=client, monotonic=monotonic)

    async def mcp(_: Request) -> JSONResponse:
        token = current_token()
        return JSONResponse({"client_id": token.client_id, "issuer": token.issuer})

    async def health(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await verifier.aclose()
        if client is not None:
            await client.aclose()

    app = Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST"]), Route("/health", health)],
                    lifespan=lifespan)
    guarded_app = BearerAuthMiddleware(app, verifier=verifier, settings=settings)
    with running_server(guarded_app, lifespan="on") as base_url:
        yield Guarded(base_url, verifier)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> str | None:
    return dict(_PARAM.findall(response.headers.get("www-authenticate", ""))).get("error")


def assert_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, (response.status_code, response.headers.get("www-authenticate"))


def assert_invalid(response: httpx.Response) -> None:
    assert response.status_code == 401, response.status_code
    assert error_code(response) == "invalid_token"


def assert_unavailable(response: httpx.Response) -> int:
    """503, no error code (not the client's fault), an honest Retry-After; returns it."""
    assert response.status_code == 503, response.status_code
    assert error_code(response) is None
    assert response.json()["error"] == "temporarily_unavailable"
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def forged_token(issuer: str, *, kid: str | None = None, app_tid: str | None = None,
                 azp: str | None = None) -> str:
    """A well-formed token for ``issuer`` signed by a key the IdP never published (random kid by default)."""
    now = int(time.time())
    claims = {
        "iss": issuer, "sub": azp or "x", "azp": azp or f"forged-{uuid.uuid4().hex[:12]}",
        "aud": [AUDIENCE], "app_tid": app_tid or str(uuid.uuid4()), "iat": now, "exp": now + 3600,
        "ias_apis": ["api_read_access", "api_write_access"],
    }
    header = {"alg": "RS256", "kid": kid or f"forged-{uuid.uuid4().hex}", "typ": "JWT"}
    return jwt.encode(header, claims, _FORGER, algorithms=["RS256"])
