"""ASGI middleware that guards paths with bearer tokens and renders RFC 6750 challenges."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from mcp.server.auth.middleware.auth_context import auth_context_var

from ._binding import certificate_check as _binding_check
from ._challenge import error_body, error_headers
from ._context import bind_client, bind_token, reset_client, reset_token
from ._errors import AuthError, InvalidToken, MalformedToken, MissingToken
from ._metadata import resource_metadata_url
from ._observe import NO_OBSERVER, Observer
from ._request import clip, is_preflight, route_path
from ._sdk import PrincipalCache
from ._settings import AuthSettings
from ._token import VerifiedToken
from ._verifier import TokenVerifier

__all__ = ["BearerAuthMiddleware", "RequireToken", "bearer_token", "send_auth_error", "SCOPE_KEY"]

log = logging.getLogger("auth")

SCOPE_KEY = "auth.token"
"""Where the verified token sits in the ASGI scope (also in ``scope["state"]["token"]``)."""

ASGIApp = Callable[[dict[str, Any], Callable[..., Any], Callable[..., Any]], Any]
CertificateCheck = Callable[[dict[str, Any], VerifiedToken], None]
Scopes = Iterable[str] | Callable[[], Iterable[str]]
"""Scope names for the 401 challenge: fixed, or a callable read at each challenge (a registry that grows)."""


def _challenge_scopes(settings: AuthSettings, scopes: Scopes) -> Callable[[], Iterable[str]]:
    """The configured challenge scopes, else ``scopes`` (read once, or at each call when callable)."""
    if settings.challenge_scopes is not None:
        fixed = tuple(settings.challenge_scopes)
    elif callable(scopes):
        return scopes
    else:
        fixed = tuple(scopes)
    return lambda: fixed


def bearer_token(headers: Iterable[tuple[bytes, bytes]], query_string: bytes = b"") -> str:
    """Extract the token from the one ``Authorization: Bearer`` header (RFC 6750 §2.1).

    Only the header counts: a token in the query string (RFC 6750 §2.3, not supported because
    URLs end up in logs) is never read or used, so a request carrying nothing else has no
    credentials and gets the bare challenge (§3.1).

    Raises:
        MissingToken: no Authorization header (whatever the query string holds).
        InvalidToken: two headers, another scheme, an empty or malformed token, or a header
            together with an ``access_token`` query parameter (RFC 6750 §2: one method only).
    """
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if not values:
        raise MissingToken("no Authorization header")
    if len(values) > 1:
        raise MalformedToken("more than one Authorization header")
    if query_string and _has_access_token(query_string):
        raise MalformedToken("token in both the Authorization header and the query string")
    try:
        raw = values[0].decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedToken("Authorization header is not ASCII") from exc
    scheme, _, token = raw.strip().partition(" ")
    if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 9110 §11.1)
        # Without a space there is no scheme, only a credential: never log (part of) it.
        raise MalformedToken(f"authorization scheme {scheme[:20]!r} is not Bearer" if token else "no scheme")
    token = token.strip()
    if not token or " " in token:
        raise MalformedToken("Bearer credentials are empty or malformed")
    return token


def _has_access_token(query_string: bytes) -> bool:
    return any(k == "access_token" for k, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


async def send_auth_error(
    send: Callable[..., Any],
    exc: AuthError,
    *,
    resource_metadata: str,
    scopes: Iterable[str] = (),
    body: bytes | None = None,
) -> None:
    """Answer with ``exc``'s status and challenge; the JSON body is ``body`` or the OAuth error object."""
    body = body if body is not None else error_body(exc)
    headers = [
        (k.encode(), v.encode()) for k, v in error_headers(exc, resource_metadata=resource_metadata, scopes=scopes)
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BearerAuthMiddleware:
    """Require a verified bearer token on the protected paths; leave every other path open.

    The principal reaches handlers as ``scope["auth.token"]``, ``request.state.token`` and
    `auth.current_token()`; and where the mcp SDK and Starlette look for it: the SDK's
    ``get_access_token()``, ``scope["user"]`` (the SDK's ``AuthenticatedUser``, a Starlette
    ``BaseUser``, which the SDK's stateful transport also binds sessions to) and
    ``scope["auth"]`` (Starlette ``AuthCredentials`` with the permissions as scopes, so
    ``starlette.authentication.requires`` works).

    Args:
        app: the ASGI app to guard.
        verifier: turns a token into a `VerifiedToken` or raises an `AuthError`.
        settings: supplies the resource URL for ``resource_metadata`` in challenges.
        protect: path prefixes that need a token (``/mcp`` guards ``/mcp`` and ``/mcp/...``), as the
            app's router sees them: mounted under ``/notes`` (a Starlette ``Mount`` or uvicorn's
            ``root_path``), ``/mcp`` guards ``/notes/mcp``.
        scopes: what basic use needs, named in the 401 challenge (unless configured); a callable is
            read at each challenge.
        certificate_check: RFC 8705 binding check raising `InvalidToken` on mismatch; by default
            the one ``settings.cert_binding`` and ``settings.trust_forwarded_client_cert`` describe.
        observer: told of each authentication and its outcome (`auth._observe`); none by default.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        settings: AuthSettings,
        protect: Iterable[str] = ("/mcp",),
        scopes: Scopes = (),
        certificate_check: CertificateCheck | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.app = app
        self._verifier = verifier
        self._observer = observer or NO_OBSERVER
        self._protect = tuple(p.rstrip("/") for p in protect)
        self._metadata_url = resource_metadata_url(settings.resource_url)
        self._scopes = _challenge_scopes(settings, scopes)
        self._certificate_check = certificate_check if certificate_check is not None else _binding_check(settings)
        self._principals = PrincipalCache(settings.resource_url, aliases=settings.permission_aliases)

    def _protected(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self._protect)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        # The path the router will route on (without root_path), or a prefix opens the door.
        if scope["type"] not in ("http", "websocket") or not self._protected(route_path(scope)):
            await self.app(scope, receive, send)
            return
        if is_preflight(scope):
            await self.app(scope, receive, send)  # a CORS preflight carries no credentials (and no body)
            return
        try:
            with self._observer.verifying():
                raw, token = await self._authenticate(scope)
        except AuthError as exc:
            _log_denial(exc, scope)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send_auth_error(send, exc, resource_metadata=self._metadata_url, scopes=self._scopes())
            return
        user, credentials = self._principals.get(token, raw)  # the raw token keys the SDK's view of it
        scope[SCOPE_KEY] = token
        scope.setdefault("state", {})["token"] = token
        scope["user"] = user
        scope["auth"] = credentials
        handle = bind_token(token)
        sdk_handle = auth_context_var.set(user)
        try:
            await self.app(scope, receive, send)
        finally:
            auth_context_var.reset(sdk_handle)
            reset_token(handle)

    async def authenticate(self, scope: dict[str, Any]) -> VerifiedToken:
        """Verify the request's bearer token (and certificate binding, if configured).

        Raises:
            AuthError: the request is not authenticated; unexpected failures become `InvalidToken`.
        """
        return (await self._authenticate(scope))[1]

    async def _authenticate(self, scope: dict[str, Any]) -> tuple[str, VerifiedToken]:
        raw = bearer_token(scope.get("headers", ()), scope.get("query_string", b""))
        client = bind_client(scope.get("client"))  # who pays for work a never-verified token causes
        try:
            token = await self._verifier.verify(raw)
        except AuthError:
            raise
        except Exception as exc:  # a verifier bug must not become a bare 500 without a challenge
            log.exception("token verifier failed unexpectedly")
            raise InvalidToken(f"verifier error: {type(exc).__name__}") from exc
        finally:
            reset_client(client)
        if self._certificate_check is not None:
            self._certificate_check(scope, token)
        return raw, token


def _log_denial(exc: AuthError, scope: dict[str, Any]) -> None:
    """One log line for a refused request; the reason and path (attacker-chosen) are `clip`-ped."""
    log.log(
        logging.WARNING if exc.status >= 500 else logging.INFO,
        "auth denied: status=%d error=%s reason=%s path=%s",
        exc.status,
        exc.error or "-",
        clip(exc.reason),
        clip(scope.get("path", "")),
    )


class RequireToken:
    """The last check in front of an endpoint: no verified principal in the scope, no entry (fail closed).

    `BearerAuthMiddleware` in front puts the principal at ``scope["auth.token"]``; a request that
    arrives without one (the middleware left out, mounted for another path, or skipped by a
    routing mistake) gets the 401 challenge (RFC 6750 §3.1, no error code: no credentials were
    checked) instead of the endpoint. CORS preflights (`is_preflight`) and lifespan events pass.

    Args:
        app: the endpoint app (every path it serves needs a principal).
        settings: supplies the resource URL for ``resource_metadata`` in the challenge.
        scopes: what basic use needs, named in the challenge (unless configured); a callable is
            read at each challenge.
    """

    def __init__(self, app: ASGIApp, *, settings: AuthSettings, scopes: Scopes = ()) -> None:
        self.app = app
        self._metadata_url = resource_metadata_url(settings.resource_url)
        self._scopes = _challenge_scopes(settings, scopes)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or isinstance(scope.get(SCOPE_KEY), VerifiedToken)
            or is_preflight(scope)
        ):
            await self.app(scope, receive, send)
            return
        exc = MissingToken("no verified principal reached the endpoint (no auth layer in front of this path)")
        _log_denial(exc, scope)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_auth_error(send, exc, resource_metadata=self._metadata_url, scopes=self._scopes())
