"""The verified principal of the request being served, one call away for handlers and tools."""

from __future__ import annotations

from contextvars import ContextVar, Token

from ._errors import MissingToken
from ._token import VerifiedToken

__all__ = ["current_token", "optional_token", "bind_token", "reset_token"]

_CURRENT: ContextVar[VerifiedToken | None] = ContextVar("auth_current_token", default=None)


def current_token() -> VerifiedToken:
    """Return the verified token of the current request.

    Raises:
        MissingToken: outside an authenticated request.
    """
    token = _CURRENT.get()
    if token is None:
        raise MissingToken("no verified token in this context")
    return token


def optional_token() -> VerifiedToken | None:
    """Return the verified token of the current request, or None outside one."""
    return _CURRENT.get()


def bind_token(token: VerifiedToken | None) -> Token[VerifiedToken | None]:
    """Make ``token`` the current principal (used by the middleware and by tests)."""
    return _CURRENT.set(token)


def reset_token(handle: Token[VerifiedToken | None]) -> None:
    """Undo a `bind_token`."""
    _CURRENT.reset(handle)
