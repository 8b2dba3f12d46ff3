"""Errors that carry their OAuth meaning.

Each member knows its HTTP status and RFC 6750 error code, so one function
(`auth.challenge`) renders every ``WWW-Authenticate`` header. The client sees only
the stable code and a short fixed description; ``reason`` is for the log.

    AuthError
     ├── MissingToken        401, no error code (RFC 6750 §3.1)
     ├── InvalidToken        401 invalid_token; its subclasses name the category in a fixed
     │                       error_description (expired, not yet valid, audience, issuer,
     │                       signature, malformed, certificate binding), never the token's content
     ├── InsufficientScope   403 insufficient_scope, carries the permissions needed
     └── KeysUnavailable     503 with Retry-After: our outage, not the client's fault
"""

from __future__ import annotations

from typing import ClassVar, Literal

__all__ = [
    "AuthError",
    "MissingToken",
    "InvalidToken",
    "TokenExpired",
    "TokenNotYetValid",
    "WrongAudience",
    "UntrustedIssuer",
    "BadSignature",
    "MalformedToken",
    "CertificateMismatch",
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


# The categories of `InvalidToken`: the client reads a fixed text per category (RFC 6750 §3:
# printable ASCII without quotes or backslashes), the log the detailed reason. Nothing from the
# token appears in a description, so it cannot echo attacker-chosen text into a header.


class TokenExpired(InvalidToken):
    """``exp`` has passed (beyond the leeway)."""

    description = "The access token has expired"


class TokenNotYetValid(InvalidToken):
    """``nbf`` or ``iat`` lies in the future (beyond the leeway)."""

    description = "The access token is not yet valid"


class WrongAudience(InvalidToken):
    """``aud`` is missing or names no audience of this resource server."""

    description = "The access token was not issued for this resource (audience)"


class UntrustedIssuer(InvalidToken):
    """``iss`` names no trusted issuer, or the issuer does not serve this token's tenant and consumer."""

    description = "The access token's issuer is not trusted by this server"


class BadSignature(InvalidToken):
    """The signature does not verify, or the issuer has no key the token names."""

    description = "The access token's signature does not verify with its issuer's keys"


class MalformedToken(InvalidToken):
    """Not a JWS this server accepts, a claim of the wrong type, or a malformed Authorization header."""

    description = "The access token is malformed or of a kind this server does not accept"


class CertificateMismatch(InvalidToken):
    """RFC 8705: a bound token without its certificate or with another, or unbound where binding is required."""

    description = "The access token's certificate binding does not match the client certificate"


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
