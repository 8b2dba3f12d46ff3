"""A stand-in for an IAS tenant's key endpoints, built to IAS's documented behaviour.

Serves ``{issuer}/.well-known/openid-configuration`` and ``{issuer}/oauth2/certs`` from a real
uvicorn server, counts every fetch, and can be told to go down, answer garbage, be slow, drip
its answer, refuse unknown ``x-app_tid`` values with 400 (as IAS does) or rotate keys. It also
serves multi-tenant issuers ``https://<label>.<tenant_domain>`` under ``/t/<label>``: give the
verifier an ``httpx.AsyncClient(transport=TenantRouting(idp))`` to reach them over real HTTP.
A label the IdP does not serve answers 404, as IAS does for a tenant that does not exist; a
label in ``unresolvable`` does not resolve (the routing is the resolver, no DNS is asked), and one
in ``refusing`` leads to a loopback port where nothing listens (a real refused connection).
Tokens are minted with joserfc (an independent library, not our code).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests._live import running_server

PATH = "/tenant"


@dataclass
class IdP:
    """Mutable test IdP; ``issuer`` is set once the server runs."""

    issuer: str = ""
    keys: list[RSAKey | ECKey] = field(default_factory=list)
    # ok | down | garbage (HTML) | invalid_json | empty | huge | wrong_type (only keys unfit for RS256) |
    # drip (the answer 64 bytes per ``delay`` seconds)
    mode: str = "ok"
    delay: float = 0.0
    discovery_fetches: int = 0
    jwks_fetches: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    discovery_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"issuer": "https://other"}
    known_tenants: set[str] | None = None  # when set, a key request naming another x-app_tid gets 400 (IAS)
    refused: int = 0  # key requests answered 400
    tenant_keys: dict[str, list[Any]] = field(default_factory=dict)  # x-app_tid -> the keys served to it instead
    consumer_fetches: int = 0  # key requests for the main issuer naming a consumer (x-azp)
    tenant_domain: str = "accounts.idp.test"
    tenants: set[str] = field(default_factory=set)  # multi-tenant labels served under /t/<label>
    tenant_fetches: collections.Counter[str] = field(default_factory=collections.Counter)  # discovery + keys
    tenant_consumer_fetches: collections.Counter[str] = field(default_factory=collections.Counter)
    unresolvable: set[str] = field(default_factory=set)  # labels whose host name does not resolve
    refusing: set[str] = field(default_factory=set)  # labels whose host refuses connections
    slow: set[str] = field(default_factory=set)  # labels whose discovery answers after ``slow_s`` seconds
    slow_s: float = 1.0
    lookups: collections.Counter[str] = field(default_factory=collections.Counter)  # requests per tenant host
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys.append(RSAKey.generate_key(2048, parameters={"kid": "key-1", "use": "sig", "alg": "RS256"}))

    @property
    def key(self) -> RSAKey | ECKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys]}

    @property
    def base_url(self) -> str:
        return self.issuer[: -len(PATH)]

    def rotate(self, kid: str) -> RSAKey:
        """Publish a new key first in the set and drop the old ones."""
        new = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        self.keys[:] = [new]
        return new

    def add_key(self, kid: str) -> RSAKey:
        """Publish a new key next to the current ones (the first step of a rotation)."""
        new = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        self.keys.append(new)
        return new

    def remove_key(self, kid: str) -> None:
        """Stop publishing ``kid`` (revocation, or the last step of a rotation)."""
        self.keys[:] = [k for k in self.keys if k.kid != kid]

    def replace_key(self, kid: str) -> RSAKey:
        """Publish new material behind the same ``kid``."""
        new = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        self.keys[:] = [new if k.kid == kid else k for k in self.keys]
        return new

    def tenant_issuer(self, label: str) -> str:
        return f"https://{label}.{self.tenant_domain}"

    def reset(self, keys: list[RSAKey | ECKey] | None = None) -> None:
        """Back to a healthy IdP with zeroed counters (lets one server serve many tests)."""
        with self.lock:
            self.mode, self.delay = "ok", 0.0
            self.discovery_fetches = self.jwks_fetches = self.refused = self.consumer_fetches = 0
            self.last_headers = {}
            self.discovery_overrides.clear()
            self.known_tenants = None
            self.tenants.clear()
            self.tenant_keys.clear()
            self.tenant_fetches.clear()
            self.tenant_consumer_fetches.clear()
            self.unresolvable.clear()
            self.refusing.clear()
            self.slow.clear()
            self.slow_s = 1.0
            self.lookups.clear()
            if keys is not None:
                self.keys[:] = keys

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """IAS client-credentials claims (ias.md) for audience ``mcp-client``."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "consumer-client",
            "azp": "consumer-client",
            "aud": ["mcp-client"],
            "sap_id_type": "app",
            "app_tid": "7b20408e-3fe0-4ade-aa2e-ad97baac72e8",
            "iat": now,
            "exp": now + 3600,
            "jti": str(uuid.uuid4()),
            "ias_apis": ["api_read_access", "api_write_access"],
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def mint(self, claims: Mapping[str, Any] | None = None, *, key: RSAKey | ECKey | None = None,
             header: Mapping[str, Any] | None = None, **overrides: Any) -> str:
        """Sign ``claims`` (default: `claims(**overrides)`) with joserfc."""
        k = key or self.key
        hdr = {"alg": "RS256", "kid": k.kid, "typ": "JWT"} | dict(header or {})
        body = dict(claims) if claims is not None else self.claims(**overrides)
        return jwt.encode(hdr, body, k, algorithms=[hdr["alg"]])

    def app(self) -> Starlette:
        async def discovery(request: Request) -> Response:
            with self.lock:
                self.discovery_fetches += 1
            return await self._answer(request, {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/oauth2/certs",
                "token_endpoint": f"{self.issuer}/oauth2/token",
                "id_token_signing_alg_values_supported": ["RS256"],
            } | self.discovery_overrides)

        async def certs(request: Request) -> Response:
            tid = request.headers.get("x-app_tid")
            with self.lock:
                self.jwks_fetches += 1
                self.consumer_fetches += "x-azp" in request.headers
                self.last_headers = dict(request.headers)
                refuse = self.known_tenants is not None and tid is not None and tid not in self.known_tenants
                self.refused += refuse
            if refuse:  # IAS: {"error": ...} with 400 for an x-app_tid it does not know
                return JSONResponse({"error": "invalid_request", "error_description": "unknown app_tid"}, 400)
            if tid in self.tenant_keys:
                return await self._answer(request, {"keys": [k.as_dict(private=False) for k in self.tenant_keys[tid]]})
            return await self._answer(request, self.jwks())

        async def tenant_discovery(request: Request) -> Response:
            label = request.path_params["label"]
            with self.lock:
                self.tenant_fetches[label] += 1
            if label in self.slow:
                await asyncio.sleep(self.slow_s)
            if label not in self.tenants:
                return JSONResponse({"error": "tenant not found"}, status_code=404)
            issuer = self.tenant_issuer(label)
            return await self._answer(request, {"issuer": issuer, "jwks_uri": f"{issuer}/oauth2/certs"})

        async def tenant_certs(request: Request) -> Response:
            label = request.path_params["label"]
            with self.lock:
                if "x-azp" in request.headers:  # a question about a tenant and consumer, not a key refresh
                    self.tenant_consumer_fetches[label] += 1
                else:
                    self.tenant_fetches[label] += 1
            if label not in self.tenants:
                return JSONResponse({"error": "tenant not found"}, status_code=404)
            return await self._answer(request, self.jwks())

        return Starlette(routes=[
            Route(f"{PATH}/.well-known/openid-configuration", discovery),
            Route(f"{PATH}/oauth2/certs", certs),
            Route("/t/{label}/.well-known/openid-configuration", tenant_discovery),
            Route("/t/{label}/oauth2/certs", tenant_certs),
        ])

    async def _answer(self, request: Request, doc: dict[str, Any]) -> Response:
        if self.delay and self.mode != "drip":
            await asyncio.sleep(self.delay)
        if self.mode == "down":
            return PlainTextResponse("unavailable", status_code=503)
        if self.mode == "garbage":
            return Response("<html><body>Service temporarily unavailable</body></html>", media_type="text/html")
        if self.mode == "invalid_json":
            return Response('{"keys": [{"kty": "RSA", ', media_type="application/json")
        if self.mode == "empty":
            return JSONResponse({"keys": []})
        if self.mode == "huge":
            return JSONResponse({"keys": [], "pad": "x" * (1024 * 1024)})
        if self.mode == "wrong_type" and "keys" in doc:
            ec = ECKey.generate_key("P-256", parameters={"kid": self.key.kid, "use": "sig"})
            oct_key = {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}
            return JSONResponse({"keys": [ec.as_dict(private=False), oct_key]})
        if self.mode == "drip":
            body = json.dumps(doc).encode()
            delay = self.delay or 1.0

            async def drip() -> Any:
                for start in range(0, len(body), 64):
                    yield body[start:start + 64]
                    await asyncio.sleep(delay)

            return StreamingResponse(drip(), media_type="application/json")
        return JSONResponse(doc)


class TenantRouting(httpx.AsyncBaseTransport):
    """Sends requests for ``https://<label>.<tenant_domain>/...`` to the IdP's ``/t/<label>/...`` over
    real HTTP on loopback (DNS and public TLS cannot be had in a test); everything else goes as is.

    It is the resolver for tenant hosts: a label in ``idp.unresolvable`` fails as httpx fails for a
    name that does not exist (``ConnectError`` from the resolver's ``EAI_NONAME``), one in
    ``idp.refusing`` goes to a loopback port bound but never listening (the kernel refuses).
    """

    def __init__(self, idp: IdP) -> None:
        self._idp = idp
        self._inner = httpx.AsyncHTTPTransport()
        self._closed = socket.socket()  # bound, never listening: connections to it are refused
        self._closed.bind(("127.0.0.1", 0))
        self._closed_port = self._closed.getsockname()[1]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        suffix = "." + self._idp.tenant_domain
        host = request.url.host
        if request.url.scheme == "https" and host.endswith(suffix):
            label = host[: -len(suffix)]
            with self._idp.lock:
                self._idp.lookups[label] += 1
            if label in self._idp.unresolvable:
                raise _no_such_host(request)
            base = f"http://127.0.0.1:{self._closed_port}" if label in self._idp.refusing else self._idp.base_url
            target = httpx.URL(f"{base}/t/{label}{request.url.raw_path.decode('ascii')}")
            request.url = target
            request.headers["host"] = target.netloc.decode("ascii")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
        self._closed.close()


def _no_such_host(request: httpx.Request) -> httpx.ConnectError:
    """What httpx raises for a host name that does not exist: ConnectError from httpcore's, from ``gaierror``."""
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except socket.gaierror as exc:
            raise httpcore.ConnectError(str(exc)) from exc
    except httpcore.ConnectError as exc:
        error = httpx.ConnectError(str(exc), request=request)
        error.__cause__ = exc
        return error


@contextlib.contextmanager
def running_idp(**kwargs: Any) -> Iterator[IdP]:
    idp = IdP(**kwargs)

    def build(base_url: str) -> Starlette:
        idp.issuer = base_url + PATH
        return idp.app()

    with running_server(factory=build) as _:
        yield idp


