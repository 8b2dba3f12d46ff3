"""`BearerAuthMiddleware` on the user's path: their Starlette app, written as a file outside the checkout.

The app is the one ``docs/library.md`` documents (metadata routes, the middleware on ``/api``,
Starlette's own ``@requires`` on a write route), run as ``python -m uvicorn`` processes: two
instances behind one public URL, and the same app mounted under ``/v1`` in a parent app. Each is
attacked over real HTTP on 127.0.0.1 with tokens from the local IdP (``tests/_idp.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests._idp import IdP, running_idp
from tests._live import free_port, stop_process

from ._support import idp_key
from .test_fastapi import REPO, Served, _bearer, _env, _start, _wait

pytestmark = pytest.mark.timeout(120)

PUBLIC = "https://api.example"

APP = '''
import os

from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from auth import BearerAuthMiddleware, JWTVerifier, current_token, load_settings, metadata_routes

settings = load_settings(os.environ)
written: list[str] = []


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"client_id": current_token().client_id, "pid": os.getpid(), "written": written})


@requires("api_write_access", status_code=403)
async def write(request: Request) -> JSONResponse:
    written.append(current_token().client_id)
    return JSONResponse({"written": len(written)})


api = Starlette(routes=[*metadata_routes(settings, ["api_read_access", "api_write_access"]),
                        Route("/health", health), Route("/api", hello), Route("/api/write", write, methods=["POST"])])
app = BearerAuthMiddleware(api, verifier=JWTVerifier(settings), settings=settings, protect=["/api"])
root = Starlette(routes=[Mount("/v1", app=app)])
'''


@dataclass
class Apps:
    first: Served
    second: Served
    mounted: Served  # root: the app under Mount("/v1")
    mounted_port: int


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with running_idp(keys=[idp_key()]) as server:
        yield server


@pytest.fixture(scope="module")
def apps(idp: IdP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    folder = tmp_path_factory.mktemp("starlette-user-app")  # outside the checkout
    assert REPO not in folder.parents
    (folder / "app.py").write_text(APP)
    mounted_port = free_port()
    started: list[Served] = []
    try:
        started.append(_start(folder, "app:app", _env(folder, idp.issuer, PUBLIC + "/api")))
        started.append(_start(folder, "app:app", _env(folder, idp.issuer, PUBLIC + "/api")))
        started.append(_start(folder, "app:root", _env(folder, idp.issuer, f"http://127.0.0.1:{mounted_port}/v1/api"),
                              port=mounted_port))
        for served, health in zip(started, ["/health", "/health", "/v1/health"], strict=True):
            _wait(served, health)
        yield Apps(*started, mounted_port)
    finally:
        for served in started:
            stop_process(served.proc)
    logs = "".join(s.text() for s in started)
    assert "Traceback" not in logs, logs[-4000:]


def _targets(apps: Apps) -> list[tuple[str, str]]:
    """(URL of the protected API, the RFC 9728 metadata URL its challenges name: the public one, prefix kept)."""
    return [(apps.first.base_url + "/api", PUBLIC + "/.well-known/oauth-protected-resource/api"),
            (f"{apps.mounted.base_url}/v1/api",
             f"http://127.0.0.1:{apps.mounted_port}/.well-known/oauth-protected-resource/v1/api")]


def test_no_token_gets_the_bare_challenge_naming_the_public_url(apps: Apps) -> None:
    for api, metadata in _targets(apps):
        for response in (httpx.get(api), httpx.post(api + "/write"), httpx.options(api)):  # OPTIONS: no preflight
            assert response.status_code == 401, (api, response.text)
            challenge = response.headers["www-authenticate"]
            assert "error=" not in challenge  # RFC 6750 §3.1: no credentials, no error code
            assert f'resource_metadata="{metadata}"' in challenge, challenge


def test_bad_tokens_are_invalid_token(apps: Apps, idp: IdP) -> None:
    expired = idp.mint(exp=1_000_000, iat=999_000)
    foreign = idp.mint(aud="someone-else")
    for api, _ in _targets(apps):
        for token in ("not-a-jwt", expired, foreign):
            response = httpx.get(api, headers=_bearer(token))
            assert response.status_code == 401, response.text
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
            assert response.json()["error"] == "invalid_token"


def test_a_read_only_token_cannot_write(apps: Apps, idp: IdP) -> None:
    read = idp.mint(ias_apis=["api_read_access"])
    for api, _ in _targets(apps):
        refused = httpx.post(api + "/write", headers=_bearer(read))
        assert (refused.status_code, refused.text) == (403, "Forbidden")  # Starlette's own `requires`
        assert httpx.get(api, headers=_bearer(read)).json()["written"] == []  # nothing was written


def test_a_full_token_is_served_by_every_instance(apps: Apps, idp: IdP) -> None:
    full = idp.mint()
    answers = [httpx.get(base + "/api", headers=_bearer(full)) for base in (apps.first.base_url, apps.second.base_url)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["pid"] != answers[1].json()["pid"]  # two processes, one token
    written = httpx.post(f"{apps.mounted.base_url}/v1/api/write", headers=_bearer(full))
    assert written.status_code == 200 and written.json() == {"written": 1}
