"""`BearerAuth`: the auth layer as a FastAPI security scheme, dependency and exception handler.

FastAPI shows a dependency in the OpenAPI document when it is a ``fastapi.security`` scheme
(a `SecurityBase`), and hands it the scopes ``Security(..., scopes=[...])`` declares along the
dependency chain (`SecurityScopes`). `BearerAuth` is such a scheme: it authenticates the request
the way `BearerAuthMiddleware` does (the same method: header-only token, verifier, certificate
binding), checks the route's permissions, and refuses with the same status, challenge and body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from fastapi import FastAPI, HTTPException, Security  # type: ignore[import-not-found, unused-ignore]
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel  # type: ignore[import-not-found, unused-ignore]
from fastapi.openapi.models import OpenIdConnect as OpenIdConnectModel  # type: ignore[import-not-found, unused-ignore]
from fastapi.security import SecurityScopes  # type: ignore[import-not-found, unused-ignore]
from fastapi.security.base import SecurityBase  # type: ignore[import-not-found, unused-ignore]
from starlette.applications import Starlette
from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.status import WS_1008_POLICY_VIOLATION

from .._challenge import error_body, error_headers
from .._context import bind_token
from .._errors import AuthError, InsufficientScope
from .._metadata import metadata_routes, resource_metadata_url
from .._middleware import SCOPE_KEY, BearerAuthMiddleware
from .._permissions import expand_permissions, missing_permissions, parse_permission_name
from .._settings import AuthSettings
from .._token import VerifiedToken
from .._verifier import JWTVerifier, TokenVerifier
from ._openapi import declared_scopes

__all__ = ["BearerAuth", "AuthHTTPException", "auth_error_handler"]

log = logging.getLogger("auth")

_LOGGED_PATH = 200  # characters of a request path that reach the log


class AuthHTTPException(HTTPException):  # type: ignore[misc, unused-ignore]  # Any without fastapi
    """An `auth.AuthError` as FastAPI's ``HTTPException``: its status, challenge headers and body.

    ``detail`` is the OAuth error object, so FastAPI's default handler answers
    ``{"detail": {"error": ...}}`` with the right status and ``WWW-Authenticate``; with
    `auth_error_handler` installed (`BearerAuth.install`) the body is the OAuth error object
    itself, byte for byte what `BearerAuthMiddleware` sends.

    Attributes:
        error: the refusal (its ``reason`` is for the log only).
        body: the JSON body `auth_error_handler` sends.
    """

    def __init__(self, error: AuthError, *, resource_metadata: str, scopes: Iterable[str] = ()) -> None:
        self.error = error
        self.body = error_body(error)
        headers = dict(error_headers(error, resource_metadata=resource_metadata, scopes=scopes))
        super().__init__(status_code=error.status, detail=json.loads(self.body), headers=headers)


async def auth_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI exception handler answering an `AuthHTTPException` as `BearerAuthMiddleware` does.

    Raises:
        TypeError: when registered for another exception type.
    """
    if not isinstance(exc, AuthHTTPException):
        raise TypeError(f"auth_error_handler handles AuthHTTPException, not {type(exc).__name__}")
    return Response(exc.body, status_code=exc.status_code, headers=exc.headers, media_type="application/json")


async def _no_app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # pragma: no cover - never served
    raise RuntimeError("BearerAuth uses its middleware only to authenticate")


class BearerAuth(SecurityBase):  # type: ignore[misc, unused-ignore]  # Any without fastapi
    """Bearer tokens for FastAPI routes: ``Security(bearer, scopes=[...])`` yields the `VerifiedToken`.

    As a dependency it verifies the ``Authorization: Bearer`` token (only the header counts),
    checks the permissions the route declares (after the deployment's ``permission_aliases``,
    against the granted set closed under ``implies``) and makes the token the current principal
    for the rest of the request (``request.state.token``, `auth.current_token()`). A refusal is an
    `AuthHTTPException`: 401 without ``error`` when no token came (RFC 6750 §3.1), 401
    ``invalid_token``, 403 ``insufficient_scope`` with ``scope=`` naming what the route needs,
    503 with ``Retry-After`` while the issuer's keys cannot be had; every challenge names the
    RFC 9728 metadata at ``settings.resource_url`` (the public URL, whatever prefix or mount
    serves the app). On a WebSocket route a refusal closes with 1008.

    In the OpenAPI document it is an HTTP bearer scheme (JWT) naming the trusted issuers, or,
    with ``openid_connect_url``, an ``openIdConnect`` scheme; each operation lists the
    permissions its dependencies declare, as the scheme's scopes.

    Args:
        settings: issuers, resource URL, aliases and implication rules, certificate binding.
        verifier: defaults to a `JWTVerifier` over ``settings`` (closed by `aclose`).
        scheme_name: the scheme's name in the OpenAPI document.
        description: the scheme's description there; by default it names the trusted issuers.
        openid_connect_url: publish an ``openIdConnect`` scheme with this discovery URL instead
            (e.g. ``issuer + "/.well-known/openid-configuration"``), so OpenAPI tools find the
            authorization server's endpoints.
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        verifier: TokenVerifier | None = None,
        scheme_name: str = "bearer",
        description: str | None = None,
        openid_connect_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.verifier: TokenVerifier = verifier if verifier is not None else JWTVerifier(settings)
        self._owns_verifier = verifier is None
        self.scheme_name = scheme_name
        self.metadata_url = resource_metadata_url(settings.resource_url)
        if description is None:
            description = (
                f"OAuth 2.0 access token (JWT) from {', '.join(dict.fromkeys(settings.issuer_urls))} for "
                f"{settings.resource_url}; RFC 9728 metadata: {self.metadata_url}"
            )
        self.model = (
            OpenIdConnectModel(openIdConnectUrl=openid_connect_url, description=description)
            if openid_connect_url
            else HTTPBearerModel(bearerFormat="JWT", description=description)
        )
        # One authentication path: the middleware's own (header parsing, verifier, RFC 8705 binding).
        self._authenticator = BearerAuthMiddleware(_no_app, verifier=self.verifier, settings=settings, protect=())
        self._aliases = settings.permission_aliases
        self._implies = settings.implies
        self._challenge_scopes = settings.challenge_scopes
        # Declared scope lists come from the app's code, never from requests: a handful of entries.
        self._resolved: dict[tuple[str, ...], frozenset[str]] = {}

    def require(self, *permissions: str) -> Any:
        """``Security(self, scopes=permissions)``, with each name checked now rather than per request.

        Use it as a parameter's ``Annotated`` metadata (the token is the value) or in a route's
        ``dependencies=[...]``.

        Raises:
            ValueError: a name that is not an RFC 6749 scope token.
        """
        return Security(self, scopes=[parse_permission_name(p) for p in permissions])

    async def __call__(self, connection: HTTPConnection, security_scopes: SecurityScopes) -> VerifiedToken:
        """Authenticate the request and check the route's permissions (FastAPI calls this).

        Raises:
            AuthHTTPException: the request is refused (401, 403 or 503).
            WebSocketException: the same, on a WebSocket route (close code 1008).
        """
        required = self._required(security_scopes.scopes)
        scope = cast(dict[str, Any], connection.scope)  # the ASGI scope, a dict under every server
        try:
            token = await self._authenticator.authenticate(scope)
            if required:
                granted = expand_permissions(token.permissions, self._implies) if self._implies else token.permissions
                missing = missing_permissions(granted, required)
                if missing:
                    raise InsufficientScope(required, missing)
        except AuthError as exc:
            log.log(
                logging.WARNING if exc.status >= 500 else logging.INFO,
                "auth denied: status=%d error=%s reason=%s path=%s",
                exc.status,
                exc.error or "-",
                exc.reason,
                str(scope.get("path", ""))[:_LOGGED_PATH],
            )
            if scope["type"] == "websocket":
                raise WebSocketException(WS_1008_POLICY_VIOLATION) from None
            challenge = self._challenge_scopes if self._challenge_scopes is not None else required
            raise AuthHTTPException(exc, resource_metadata=self.metadata_url, scopes=challenge) from None
        scope[SCOPE_KEY] = token
        scope.setdefault("state", {})["token"] = token
        # Bound in the request's own task (an async dependency runs there, and the endpoint after
        # it, or a copy of its context for sync endpoints), so it ends with the request.
        bind_token(token)
        return token

    def _required(self, scopes: list[str]) -> frozenset[str]:
        key = tuple(scopes)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = self._resolve(parse_permission_name(p) for p in scopes)
            self._resolved[key] = resolved
        return resolved

    def _resolve(self, permissions: Iterable[str]) -> frozenset[str]:
        return frozenset(self._aliases.get(p, p) for p in permissions)

    def scopes_supported(self, app: Starlette) -> frozenset[str]:
        """Every permission the routes of ``app`` (and the apps mounted in it) require with this
        scheme, after aliasing; routes left out of the OpenAPI document are not seen."""
        return self._resolve(declared_scopes(app.routes, self.scheme_name))

    def metadata_routes(self, app: Starlette) -> list[BaseRoute]:
        """RFC 9728 metadata routes (path and root form) for the app that serves the host root.

        ``scopes_supported`` lists what the routes of ``app`` declare, read from them on the first
        metadata request (so routes added after `install` count).
        """
        paths = [route.path for route in metadata_routes(self.settings) if isinstance(route, Route)]
        served: Callable[[Request], Awaitable[Response]] | None = None

        async def endpoint(request: Request) -> Response:
            nonlocal served
            if served is None:  # the core's endpoint: the same document and headers as metadata_routes()
                served = metadata_routes(self.settings, self.scopes_supported(app))[0].endpoint
            return await served(request)

        return [Route(path, endpoint, methods=["GET"]) for path in paths]

    def install(self, app: FastAPI, *, root: Starlette | None = None) -> None:
        """Answer refusals with the OAuth error body in ``app`` and serve the metadata.

        Args:
            app: the FastAPI app whose routes use this scheme.
            root: the app that serves the host root when ``app`` is mounted under a prefix in it;
                the metadata routes go there (RFC 9728 §3.1 puts them at the host's root). Behind
                a proxy that strips a prefix (``root_path``), route ``/.well-known/oauth-protected-resource``
                to ``app`` instead.
        """
        app.add_exception_handler(AuthHTTPException, auth_error_handler)
        target = root if root is not None else app
        target.router.routes[0:0] = self.metadata_routes(app)  # ahead of any catch-all mount

    async def aclose(self) -> None:
        """Close the verifier's HTTP client if this scheme created the verifier."""
        if self._owns_verifier and isinstance(self.verifier, JWTVerifier):
            await self.verifier.aclose()
