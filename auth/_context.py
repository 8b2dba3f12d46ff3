"""The verified principal of the request being served, one call away for handlers and tools.

Two routes set it: our `BearerAuthMiddleware` binds the `VerifiedToken` here, and the mcp SDK's
own ``token_verifier=`` route (and FastMCP's) keeps the ``AccessToken`` our verifier built in
the SDK's context, where `auth._sdk.sdk_principal` finds the `VerifiedToken` it carries.

Also, while its token is being verified, who the request comes from (the ASGI scope's
``client``): the verifier charges work a never-verified token causes to that source.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

from ._errors import MissingToken
from ._sdk import sdk_principal
from ._token import VerifiedToken

__all__ = ["current_token", "optional_token", "bind_token", "reset_token", "bind_client", "reset_client",
           "current_client"]

_CURRENT: ContextVar[VerifiedToken | None] = ContextVar("auth_current_token", default=None)
_CLIENT: ContextVar[Any] = ContextVar("auth_request_client", default=None)


def current_token() -> VerifiedToken:
    """Return the verified token of the current request.

    Works behind our middleware, on the mcp SDK's ``token_verifier=JWTVerifier(...)`` route and
    behind FastMCP with ``fastmcp_auth``: only a token our verifier accepted counts, never an
    ``AccessToken`` another verifier built.

    Raises:
        MissingToken: outside an authenticated request.
    """
    token = _CURRENT.get()
    if token is None:
        carried = sdk_principal()
        if carried is None:
            raise MissingToken("no verified token in this context")
        return carried[0]
    return token


def optional_token() -> VerifiedToken | None:
    """Return the verified token of the current request, or None outside one."""
    token = _CURRENT.get()
    if token is None:
        carried = sdk_principal()
        return None if carried is None else carried[0]
    return token


def bind_token(token: VerifiedToken | None) -> Token[VerifiedToken | None]:
    """Make ``token`` the current principal (used by the middleware and by tests)."""
    return _CURRENT.set(token)


def reset_token(handle: Token[VerifiedToken | None]) -> None:
    """Undo a `bind_token`."""
    _CURRENT.reset(handle)


def bind_client(client: Any) -> Token[Any]:
    """Name the requesting client (the ASGI scope's ``client``, as is) while its token is verified."""
    return _CLIENT.set(client)


def reset_client(handle: Token[Any]) -> None:
    """Undo a `bind_client`."""
    _CLIENT.reset(handle)


def current_client() -> Any:
    """The ASGI ``client`` of the request whose token is being verified; None when not known."""
    return _CLIENT.get()
