"""`auth.fastapi` on the user's path: their FastAPI app, written as files outside the checkout, served by uvicorn.

The app is the data API of the Entra and IAS scenarios: ``GET /data`` needs ``data.read``,
``POST /data`` needs ``data.write``. It runs as separate ``python -m uvicorn`` processes: two
instances behind one public URL (Entra profile, ``scp``), one behind a prefix-stripping proxy
(``--root-path``), and one mounted under ``/v1`` in a parent app (IAS profile, ``ias_apis``). Each
is attacked over real HTTP on 127.0.0.1 with tokens from the local IdP in ``tests/_idp.py``; every
refusal is asserted by status and error code. Details (an issuer that is down, aliases, the body
without `BearerAuth.install`) use small apps built in the test, served by uvicorn in-process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket

from auth import AuthSettings, IssuerConfig, VerifiedToken, current_token, optional_token
from auth.fastapi import AuthHTTPException, BearerAuth, auth_error_handler
from tests._idp import IdP, running_idp
from tests._live import free_port, running_server, stop_process

from ._cases import AUDIENCE, OTHER_KEY
from ._support import idp_key

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
PUBLIC = "https://data.example"  # the load balancer's URL in front of the two instances
ENTRA_TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"

APP = '''
import os
from typing import Annotated

from fastapi import FastAPI, WebSocket

from auth import VerifiedToken, current_token, load_settings
from auth.fastapi import BearerAuth

settings = load_settings(os.environ)
bearer = BearerAuth(settings)
app = FastAPI(title="data API")
bearer.install(app)
items: list[str] = []


@app.get("/data")
async def read_data(token: Annotated[VerifiedToken, bearer.require("data.read")]) -> dict[str, object]:
    return {"client_id": token.client_id, "items": items, "pid": os.getpid()}


@app.post("/data", status_code=201, dependencies=[bearer.require("data.write")])
def write_data(item: str) -> dict[str, object]:  # sync: FastAPI runs it in a thread, current_token() still works
    items.append(item)
    return {"client_id": current_token().client_id, "count": len(items)}


@app.get("/whoami")
async def whoami(token: Annotated[VerifiedToken, bearer.require()]) -> dict[str, object]:
    return {"client_id": token.client_id, "permissions": sorted(token.permissions)}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
'''

MOUNTED = '''
import os
from typing import Annotated

from fastapi import FastAPI, WebSocket

from auth import VerifiedToken, load_settings
from auth.fastapi import BearerAuth

settings = load_settings(os.environ)
bearer = BearerAuth(settings, openid_connect_url=settings.issuer_urls[0] + "/.well-known/openid-configuration")
api = FastAPI(title="data API v1")


@api.get("/data")
async def read_data(token: Annotated[VerifiedToken, bearer.require("data.read")]) -> dict[str, object]:
    return {"client_id": token.client_id}


@api.post("/data", dependencies=[bearer.require("data.write")])
async def write_data() -> dict[str, str]:
    return {"written": "yes"}


root = FastAPI(title="site")
root.mount("/v1", api)
bearer.install(api, root=root)  # the metadata belongs at the host's root


@root.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
'''


@dataclass
class Served:
    base_url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _start(folder: Path, target: str, env: dict[str, str], *args: str, port: int | None = None) -> Served:
    port = port or free_port()
    log = folder / f"uvicorn-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    return Served(f"http://127.0.0.1:{port}", log, proc)


def _wait(served: Served, health: str = "/health", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert served.proc.poll() is None, served.text()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(served.base_url + health, timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"no {health} within {timeout} s:\n{served.text()}"
        time.sleep(0.1)


def _env(folder: Path, issuer: str, resource: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        "PYTHONPATH": str(REPO),
        "MCP_AUTH_ISSUER": issuer,
        "MCP_AUTH_AUDIENCE": AUDIENCE,
        "MCP_RESOURCE_URL": resource,
        **extra,
    }


@dataclass
class Apps:
    first: Served  # two instances of app.py behind PUBLIC, Entra profile
    second: Served
    prefixed: Served  # app.py behind a proxy that strips /v1 (uvicorn --root-path), IAS profile
    mounted: Served  # mounted.py: the API mounted under /v1 in a parent app, IAS profile


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with running_idp(keys=[idp_key()]) as server:
        yield server


@pytest.fixture(scope="module")
def apps(idp: IdP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    folder = tmp_path_factory.mktemp("fastapi-user-app")  # outside the checkout
    assert REPO not in folder.parents
    (folder / "app.py").write_text(APP)
    (folder / "mounted.py").write_text(MOUNTED)
    entra = {"MCP_AUTH_PROFILE": "entra", "MCP_RESOURCE_NAME": "data API"}
    prefixed_port, mounted_port = free_port(), free_port()
    started: list[Served] = []
    try:
        for target, env, args, port in [
            ("app:app", _env(folder, idp.issuer, PUBLIC, **entra), (), None),
            ("app:app", _env(folder, idp.issuer, PUBLIC, **entra), (), None),
            ("app:app", _env(folder, idp.issuer, f"http://127.0.0.1:{prefixed_port}/v1"),
             ("--root-path", "/v1"), prefixed_port),
            ("mounted:root", _env(folder, idp.issuer, f"http://127.0.0.1:{mounted_port}/v1"), (), mounted_port),
        ]:
            started.append(_start(folder, target, env, *args, port=port))
        for served in started:
            _wait(served)
        yield Apps(*started)
    finally:
        for served in started:
            stop_process(served.proc)
    logs = "".join(s.text() for s in started)
    assert "Traceback" not in logs, logs[-4000:]


def _entra(idp: IdP, scp: str | None = "data.read data.write", **overrides: Any) -> str:
    """An Entra v2 app token: permissions in ``scp``, tenant in ``tid``, no IAS claims."""
    claims = idp.claims(ias_apis=None, app_tid=None, sap_id_type=None, tid=ENTRA_TID, scp=scp, ver="2.0",
                        azp="client-app", sub="client-app", **overrides)
    return idp.mint(claims)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _challenge(response: httpx.Response) -> str:
    return response.headers["www-authenticate"]


# --- 401: no token, bad tokens ------------------------------------------------------------------------


def test_no_token_gets_a_bare_challenge_naming_the_public_metadata_url(apps: Apps) -> None:
    response = httpx.get(apps.first.base_url + "/data")
    assert response.status_code == 401
    challenge = _challenge(response)
    assert challenge.startswith("Bearer ")
    assert "error=" not in challenge  # RFC 6750 §3.1: no error code without credentials
    assert f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource"' in challenge
    assert 'scope="data.read"' in challenge
    assert response.json() == {"error": "unauthorized"}  # the middleware's body, not FastAPI's {"detail": ...}
    assert response.headers["cache-control"] == "no-store"


def test_a_token_in_the_query_string_only_counts_as_no_token(apps: Apps, idp: IdP) -> None:
    response = httpx.get(apps.first.base_url + "/data", params={"access_token": _entra(idp)})
    assert response.status_code == 401
    assert "error=" not in _challenge(response)


@pytest.mark.parametrize("authorization", [
    "Bearer not-a-jwt",
    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",  # alg=none
    "Basic ZGV2OnNlY3JldA==",
    "Bearer a b",
], ids=["garbage", "alg-none", "basic", "two-credentials"])
def test_a_bad_token_gets_invalid_token(apps: Apps, authorization: str) -> None:
    response = httpx.get(apps.first.base_url + "/data", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert 'error="invalid_token"' in _challenge(response)
    assert response.json()["error"] == "invalid_token"


def test_a_token_signed_by_another_key_gets_invalid_token(apps: Apps, idp: IdP) -> None:
    forged = idp.mint(idp.claims(ias_apis=None, tid=ENTRA_TID, scp="data.read data.write"), key=idp_key(OTHER_KEY))
    response = httpx.get(apps.first.base_url + "/data", headers=_bearer(forged))
    assert response.status_code == 401
    assert 'error="invalid_token"' in _challenge(response)


def test_an_expired_token_gets_invalid_token(apps: Apps, idp: IdP) -> None:
    now = int(time.time())
    response = httpx.get(apps.first.base_url + "/data", headers=_bearer(_entra(idp, iat=now - 7200, exp=now - 3600)))
    assert response.status_code == 401
    assert 'error="invalid_token"' in _challenge(response)
    assert response.json()["error"] == "invalid_token"


def test_a_token_for_another_audience_gets_invalid_token(apps: Apps, idp: IdP) -> None:
    response = httpx.get(apps.first.base_url + "/data", headers=_bearer(_entra(idp, aud=["other-api"])))
    assert response.status_code == 401
    assert 'error="invalid_token"' in _challenge(response)


# --- 403 and 200 ----------------------------------------------------------------------------------------


def test_a_read_only_token_reads_but_cannot_write(apps: Apps, idp: IdP) -> None:
    token = _entra(idp, scp="data.read")
    assert httpx.get(apps.first.base_url + "/data", headers=_bearer(token)).status_code == 200
    response = httpx.post(apps.first.base_url + "/data", params={"item": "x"}, headers=_bearer(token))
    assert response.status_code == 403
    challenge = _challenge(response)
    assert 'error="insufficient_scope"' in challenge and 'scope="data.write"' in challenge
    assert f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource"' in challenge
    assert response.json()["error"] == "insufficient_scope"


def test_a_token_without_permissions_is_refused_reading_but_authenticated(apps: Apps, idp: IdP) -> None:
    token = _entra(idp, scp=None)
    response = httpx.get(apps.first.base_url + "/data", headers=_bearer(token))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in _challenge(response) and 'scope="data.read"' in _challenge(response)
    whoami = httpx.get(apps.first.base_url + "/whoami", headers=_bearer(token))
    assert whoami.status_code == 200 and whoami.json() == {"client_id": "client-app", "permissions": []}


def test_a_full_token_reads_and_writes(apps: Apps, idp: IdP) -> None:
    token = _entra(idp)
    written = httpx.post(apps.first.base_url + "/data", params={"item": "first"}, headers=_bearer(token))
    assert written.status_code == 201, written.text
    assert written.json()["client_id"] == "client-app"  # current_token() in a sync endpoint
    read = httpx.get(apps.first.base_url + "/data", headers=_bearer(token))
    assert read.status_code == 200
    assert read.json()["client_id"] == "client-app" and "first" in read.json()["items"]


def test_open_routes_stay_open(apps: Apps) -> None:
    assert httpx.get(apps.first.base_url + "/health").json() == {"status": "ok"}


# --- OpenAPI and RFC 9728 metadata ----------------------------------------------------------------------


def test_openapi_shows_the_bearer_scheme_and_each_routes_permissions(apps: Apps, idp: IdP) -> None:
    doc = httpx.get(apps.first.base_url + "/openapi.json").json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    assert idp.issuer in scheme["description"]
    assert doc["paths"]["/data"]["get"]["security"] == [{"bearer": ["data.read"]}]
    assert doc["paths"]["/data"]["post"]["security"] == [{"bearer": ["data.write"]}]
    assert doc["paths"]["/whoami"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/health"]["get"]


def test_metadata_lists_the_issuer_and_the_permissions_the_routes_declare(apps: Apps, idp: IdP) -> None:
    response = httpx.get(apps.first.base_url + "/.well-known/oauth-protected-resource")
    assert response.status_code == 200
    doc = response.json()
    assert doc["resource"] == PUBLIC
    assert doc["authorization_servers"] == [idp.issuer]
    assert doc["scopes_supported"] == ["data.read", "data.write"]
    assert doc["resource_name"] == "data API"
    paths = httpx.get(apps.first.base_url + "/openapi.json").json()["paths"]
    assert set(paths) == {"/data", "/whoami", "/health"}  # the metadata routes stay out of the API document


# --- under a prefix -------------------------------------------------------------------------------------


def test_behind_a_prefix_stripping_proxy_the_challenge_names_the_public_url(apps: Apps, idp: IdP) -> None:
    base = apps.prefixed.base_url  # uvicorn --root-path /v1: what the app sees behind such a proxy
    response = httpx.get(base + "/data")
    assert response.status_code == 401 and "error=" not in _challenge(response)
    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/v1"' in _challenge(response)
    doc = httpx.get(base + "/.well-known/oauth-protected-resource/v1").json()
    assert doc["resource"] == base + "/v1" and doc["scopes_supported"] == ["data.read", "data.write"]
    reader = idp.mint(ias_apis=["data.read"])
    assert httpx.get(base + "/data", headers=_bearer(reader)).status_code == 200
    refused = httpx.post(base + "/data", params={"item": "x"}, headers=_bearer(reader))
    assert refused.status_code == 403 and 'scope="data.write"' in _challenge(refused)
    assert httpx.get(base + "/openapi.json").json()["servers"] == [{"url": "/v1"}]


def test_mounted_under_a_prefix_the_parent_serves_the_metadata(apps: Apps, idp: IdP) -> None:
    base = apps.mounted.base_url
    response = httpx.get(base + "/v1/data")
    assert response.status_code == 401 and "error=" not in _challenge(response)
    metadata_url = f"{base}/.well-known/oauth-protected-resource/v1"
    assert f'resource_metadata="{metadata_url}"' in _challenge(response)
    assert response.json() == {"error": "unauthorized"}  # the handler installed in the mounted app
    doc = httpx.get(metadata_url).json()
    assert doc["resource"] == base + "/v1"
    assert doc["authorization_servers"] == [idp.issuer]
    assert doc["scopes_supported"] == ["data.read", "data.write"]

    reader = idp.mint(ias_apis=["data.read"])
    assert httpx.get(base + "/v1/data", headers=_bearer(reader)).json() == {"client_id": "consumer-client"}
    refused = httpx.post(base + "/v1/data", headers=_bearer(reader))
    assert refused.status_code == 403 and 'error="insufficient_scope"' in _challenge(refused)
    assert 'scope="data.write"' in _challenge(refused)
    writer = idp.mint(ias_apis=["data.read", "data.write"])
    assert httpx.post(base + "/v1/data", headers=_bearer(writer)).json() == {"written": "yes"}
    assert httpx.get(base + "/v1/data", headers=_bearer("x.y.z")).status_code == 401


def test_mounted_api_publishes_an_openid_connect_scheme_that_resolves(apps: Apps, idp: IdP) -> None:
    doc = httpx.get(apps.mounted.base_url + "/v1/openapi.json").json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "openIdConnect"
    discovery = httpx.get(scheme["openIdConnectUrl"]).json()
    assert discovery["issuer"] == idp.issuer
    assert doc["paths"]["/data"]["post"]["security"] == [{"bearer": ["data.write"]}]


# --- several instances ----------------------------------------------------------------------------------


def test_two_instances_accept_the_same_token_and_refuse_the_same_way(apps: Apps, idp: IdP) -> None:
    full, reader = _entra(idp), _entra(idp, scp="data.read")
    pids = set()
    for served in (apps.first, apps.second, apps.first, apps.second):
        read = httpx.get(served.base_url + "/data", headers=_bearer(full))
        assert read.status_code == 200 and read.json()["client_id"] == "client-app"
        pids.add(read.json()["pid"])
        refused = httpx.post(served.base_url + "/data", params={"item": "x"}, headers=_bearer(reader))
        assert refused.status_code == 403 and 'scope="data.write"' in _challenge(refused)
        unauthenticated = httpx.get(served.base_url + "/data")
        assert f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource"' in _challenge(unauthenticated)
    assert len(pids) == 2


# --- in-process details ---------------------------------------------------------------------------------


def _local_settings(idp: IdP, resource: str, **overrides: Any) -> AuthSettings:
    issuer = IssuerConfig(issuer=idp.issuer, audiences=(AUDIENCE,))
    return AuthSettings(issuers=(issuer,), resource_url=resource, **overrides)


def test_aliases_map_declared_permissions_to_granted_groups(idp: IdP) -> None:
    """Routes say ``data.write``; this deployment's issuer grants ``api_write_access`` for it."""

    def factory(base_url: str) -> FastAPI:
        settings = _local_settings(idp, base_url, permission_aliases={"data.write": "api_write_access"},
                                   implies={"api_write_access": frozenset({"api_read_access"})})
        bearer = BearerAuth(settings)
        app = FastAPI()
        bearer.install(app)

        @app.post("/data")
        async def write(token: VerifiedToken = bearer.require("data.write")) -> str:  # a local `bearer`: no Annotated
            return token.client_id

        @app.get("/data")
        async def read(token: VerifiedToken = bearer.require("api_read_access")) -> str:
            return token.client_id

        return app

    with running_server(factory=factory) as base:
        writer = idp.mint(ias_apis=["api_write_access"])
        assert httpx.post(base + "/data", headers=_bearer(writer)).status_code == 200
        assert httpx.get(base + "/data", headers=_bearer(writer)).status_code == 200  # implied
        refused = httpx.post(base + "/data", headers=_bearer(idp.mint(ias_apis=["data.write"])))
        assert refused.status_code == 403 and 'scope="api_write_access"' in _challenge(refused)
        scopes = httpx.get(base + "/.well-known/oauth-protected-resource").json()["scopes_supported"]
        assert scopes == ["api_read_access", "api_write_access"]


def test_without_install_the_status_and_challenge_still_hold(idp: IdP) -> None:
    def factory(base_url: str) -> FastAPI:
        bearer = BearerAuth(_local_settings(idp, base_url + "/api"))
        app = FastAPI()

        @app.get("/api")
        async def read(token: VerifiedToken = bearer.require("data.read")) -> str:
            return token.client_id

        return app

    with running_server(factory=factory) as base:
        response = httpx.get(base + "/api", headers=_bearer(idp.mint(ias_apis=[])))
        assert response.status_code == 403
        assert 'error="insufficient_scope"' in _challenge(response) and 'scope="data.read"' in _challenge(response)
        assert response.json() == {"detail": {"error": "insufficient_scope",
                                              "error_description": "The access token lacks a required permission"}}


def test_an_issuer_whose_keys_cannot_be_had_gets_503_with_retry_after_not_invalid_token() -> None:
    with running_idp(keys=[idp_key()], mode="down") as broken:  # its key endpoints answer 503

        def factory(base_url: str) -> FastAPI:
            bearer = BearerAuth(AuthSettings(issuers=(IssuerConfig(issuer=broken.issuer, audiences=(AUDIENCE,)),),
                                             resource_url=base_url + "/api", retry_after_s=7))
            app = FastAPI()
            bearer.install(app)

            @app.get("/api")
            async def read(token: VerifiedToken = bearer.require("data.read")) -> str:
                return token.client_id

            return app

        with running_server(factory=factory) as base:
            response = httpx.get(base + "/api", headers=_bearer(broken.mint(ias_apis=["data.read"])))
            assert response.status_code == 503
            assert int(response.headers["retry-after"]) > 0
            assert "error=" not in _challenge(response)  # not the client's fault: no invalid_token
            assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/api"' in _challenge(response)
            assert response.json()["error"] == "temporarily_unavailable"
            assert broken.jwks_fetches + broken.discovery_fetches >= 1


def test_the_principal_does_not_outlive_its_request(idp: IdP) -> None:
    """One keep-alive connection: an open route after an authenticated one sees no token."""

    def factory(base_url: str) -> FastAPI:
        bearer = BearerAuth(_local_settings(idp, base_url))
        app = FastAPI()

        @app.get("/me")
        async def me(token: VerifiedToken = bearer.require()) -> str:
            return current_token().client_id

        @app.get("/open")
        async def open_async() -> str:
            return str(optional_token())

        @app.get("/open-sync")
        def open_sync() -> str:
            return str(optional_token())

        return app

    for http in ("h11", "httptools"):
        with running_server(factory=factory, http=http) as base, httpx.Client() as client:
            assert client.get(base + "/me", headers=_bearer(idp.mint())).json() == "consumer-client"
            assert client.get(base + "/open").json() == "None"
            assert client.get(base + "/open-sync").json() == "None"


async def test_a_websocket_route_refuses_the_handshake_without_the_permission(idp: IdP) -> None:
    websockets = pytest.importorskip("websockets")

    def factory(base_url: str) -> FastAPI:
        bearer = BearerAuth(_local_settings(idp, base_url))
        app = FastAPI()

        @app.websocket("/ws")
        async def feed(websocket: WebSocket, token: VerifiedToken = bearer.require("data.read")) -> None:
            await websocket.accept()
            await websocket.send_text(token.client_id)
            await websocket.close()

        return app

    with running_server(factory=factory) as base:
        url = base.replace("http://", "ws://") + "/ws"
        for headers in ({}, _bearer("not-a-jwt"), _bearer(idp.mint(ias_apis=[]))):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403  # uvicorn's answer to a close before accept
        async with websockets.connect(url, additional_headers=_bearer(idp.mint(ias_apis=["data.read"]))) as ws:
            assert await ws.recv() == "consumer-client"


def test_require_refuses_a_name_that_is_not_a_scope_token(idp: IdP) -> None:
    bearer = BearerAuth(_local_settings(idp, "https://api.example"))
    for bad in ("data read", 'data"read', ""):
        with pytest.raises(ValueError, match="scope token"):
            bearer.require(bad)


async def test_the_handler_refuses_other_exceptions() -> None:
    with pytest.raises(TypeError):
        await auth_error_handler(None, ValueError("x"))  # type: ignore[arg-type]
    assert issubclass(AuthHTTPException, Exception)
