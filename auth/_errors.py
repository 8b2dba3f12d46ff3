"""Errors that carry their OAuth meaning.

Each member knows its HTTP status and RFC 6750 error code, so one function
(`auth.challenge`) renders every ``WWW-Authenticate`` header. The client sees only
the stable code and a short fixed description; ``reason`` is for the log.

    AuthError
     ├── MissingToken        401, no error code (RFC 6750 §3.1)
     ├── InvalidToken        401 invalid_token
     ├── InsufficientScope   403 insufficient_scope, carries the permissions needed
     └── KeysUnavailable     503 with Retry-After: our outage, not the client's fault
"""

from __future__ import annotations

from typing import ClassVar, Literal

__all__ = [
    "AuthError",
    "MissingToken",
    "InvalidToken",
    "InsufficientScope",
    "KeysUnavailable",
    "ConfigError",
]

ErrorCode = Literal["invalid_token", "insufficient_scope"]


class AuthError(Exception):
    """Base of every authentication or authorization failure.

    Args:
        reason: the detailed cause, written to the log and never sent to the client.
    """

    status: ClassVar[int] = 401
    error: ClassVar[ErrorCode | None] = None
    description: ClassVar[str | None] = None

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or type(self).__name__)
        self.reason = reason or type(self).__name__


class MissingToken(AuthError):
    """No credentials at all: the challenge carries no error code (RFC 6750 §3.1)."""


class InvalidToken(AuthError):
    """Malformed, expired, wrongly signed or not meant for us (RFC 6750 §3.1)."""

    error = "invalid_token"
    description = "The access token is invalid or expired"


class InsufficientScope(AuthError):
    """The token is valid but lacks a permission the operation needs (RFC 6750 §3.1)."""

    status = 403
    error = "insufficient_scope"
    description = "The access token lacks a required permission"

    def __init__(self, required: frozenset[str], missing: frozenset[str], reason: str = "") -> None:
        super().__init__(reason or f"missing permissions: {' '.join(sorted(missing))}")
        self.required = required
        self.missing = missing


class KeysUnavailable(AuthError):
    """The issuer's signing keys cannot be had right now: 503, so clients retry instead of re-authenticating."""

    status = 503
    description = "Token signing keys are temporarily unavailable"

    def __init__(self, reason: str = "", retry_after: int = 30) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
