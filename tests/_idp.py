"""A stand-in for an IAS tenant's key endpoints, built to IAS's documented behaviour.

Serves ``{issuer}/.well-known/openid-configuration`` and ``{issuer}/oauth2/certs`` from a real
uvicorn server, counts every fetch, and can be told to go down, answer garbage, be slow or
rotate keys. Tokens are minted with joserfc (an independent library, not our code).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests._live import running_server

PATH = "/tenant"


@dataclass
class IdP:
    """Mutable test IdP; ``issuer`` is set once the server runs."""

    issuer: str = ""
    keys: list[RSAKey | ECKey] = field(default_factory=list)
    mode: str = "ok"  # ok | down | garbage | slow | empty | huge
    delay: float = 0.0
    discovery_fetches: int = 0
    jwks_fetches: int = 0
    last_headers: dict[str, str] = field(default_factory=dict)
    discovery_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"issuer": "https://other"}
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys.append(RSAKey.generate_key(2048, parameters={"kid": "key-1", "use": "sig", "alg": "RS256"}))

    @property
    def key(self) -> RSAKey | ECKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys]}

    def rotate(self, kid: str) -> RSAKey:
        """Publish a new key first in the set and drop the old ones."""
        new = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        self.keys[:] = [new]
        return new

    def reset(self, keys: list[RSAKey | ECKey] | None = None) -> None:
        """Back to a healthy IdP with zeroed counters (lets one server serve many tests)."""
        with self.lock:
            self.mode, self.delay = "ok", 0.0
            self.discovery_fetches = self.jwks_fetches = 0
            self.last_headers = {}
            self.discovery_overrides.clear()
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
            with self.lock:
                self.jwks_fetches += 1
                self.last_headers = dict(request.headers)
            return await self._answer(request, self.jwks())

        return Starlette(routes=[
            Route(f"{PATH}/.well-known/openid-configuration", discovery),
            Route(f"{PATH}/oauth2/certs", certs),
        ])

    async def _answer(self, request: Request, doc: dict[str, Any]) -> Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "down":
            return PlainTextResponse("unavailable", status_code=503)
        if self.mode == "garbage":
            return PlainTextResponse("<html>not json</html>")
        if self.mode == "empty":
            return JSONResponse({"keys": []})
        if self.mode == "huge":
            return JSONResponse({"keys": [], "pad": "x" * (1024 * 1024)})
        return JSONResponse(doc)


@contextlib.contextmanager
def running_idp(**kwargs: Any) -> Iterator[IdP]:
    idp = IdP(**kwargs)

    def build(base_url: str) -> Starlette:
        idp.issuer = base_url + PATH
        return idp.app()

    with running_server(factory=build) as _:
        yield idp


