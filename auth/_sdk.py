"""Fit with the ``mcp`` SDK: its ``TokenVerifier`` protocol, its ``AccessToken`` and its authenticated user.

Two routes use this module:

* ``MCPServer(token_verifier=JWTVerifier(...), auth=AuthSettings(...))``: the SDK calls
  `verify_token`, which can only answer "an AccessToken" or "None". Every refusal therefore
  becomes the SDK's 401 ``invalid_token`` (our 503 for unavailable keys included), the SDK has no
  per-tool 403 gate, and the connection's client certificate is out of reach, so tokens bound
  to a certificate (RFC 8705) are refused rather than accepted unchecked. The `AccessToken` it
  gets is a `VerifiedAccessToken`: it carries the frozen `VerifiedToken` (and the deployment's
  permission aliases), which `sdk_principal` reads back from the SDK's ``get_access_token()``,
  so ``current_token()`` and ``@requires`` work on that route without verifying again.
* `BearerAuthMiddleware` (our route): after verifying, it publishes the principal where the SDK
  and Starlette look for it (``get_access_token()``, ``scope["user"]``, ``scope["auth"]``), using
  a `PrincipalCache` so that the objects are built once per verified token, not per request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol, TypeVar

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from pydantic import ConfigDict, PrivateAttr
from starlette.authentication import AuthCredentials

from ._errors import AuthError
from ._request import clip
from ._settings import CertBinding
from ._token import VerifiedToken

__all__ = [
    "VerifiedAccessToken",
    "SharedAccessToken",
    "access_token",
    "carry",
    "sdk_principal",
    "verified_or_none",
    "verify_token",
    "PrincipalCache",
]

log = logging.getLogger("auth")

_NO_ALIASES: Mapping[str, str] = MappingProxyType({})


class VerifiedAccessToken(AccessToken):
    """The SDK's `AccessToken` for a token our verifier accepted, carrying the frozen `VerifiedToken`.

    Only our code attaches the principal (`carry`), right after verifying; an ``AccessToken``
    built by any other verifier carries none, so nothing it says is taken for verified.
    """

    _verified: VerifiedToken | None = PrivateAttr(default=None)
    _aliases: Mapping[str, str] | None = PrivateAttr(default=None)

    def verified(self) -> tuple[VerifiedToken, Mapping[str, str]] | None:
        """The principal our verifier produced and the deployment's permission aliases, if attached."""
        verified = self._verified
        return None if verified is None else (verified, self._aliases or _NO_ALIASES)


class SharedAccessToken(VerifiedAccessToken):
    """`VerifiedAccessToken`, frozen: one instance serves every request made with the same token."""

    model_config = ConfigDict(frozen=True)


T = TypeVar("T", bound=VerifiedAccessToken)


def carry(token: T, verified: VerifiedToken, aliases: Mapping[str, str] | None = None) -> T:
    """Attach ``verified`` (and the permission aliases ``@requires`` applies) to ``token``; returns it."""
    token._verified = verified
    token._aliases = aliases
    return token


def sdk_principal() -> tuple[VerifiedToken, Mapping[str, str]] | None:
    """The `VerifiedToken` behind the SDK's ``get_access_token()``, with its aliases; None without one.

    None too when the SDK's principal came from another verifier (a plain ``AccessToken``).
    """
    token = get_access_token()
    return token.verified() if isinstance(token, VerifiedAccessToken) else None


class _Verifies(Protocol):
    async def verify(self, token: str) -> VerifiedToken: ...


def access_fields(verified: VerifiedToken, raw: str, *, resource: str) -> dict[str, object]:
    """The SDK's view of a verified token: client id, the mapped permissions as scopes, expiry, resource.

    ``subject`` and ``claims["iss"]`` make the SDK's principal (client id, issuer, subject) whole,
    which its stateful transport compares against the session's owner.
    """
    claims = dict(verified.claims)
    claims.setdefault("iss", verified.issuer)
    return {
        "token": raw,
        "client_id": verified.client_id,
        "scopes": sorted(verified.permissions),
        "expires_at": verified.expires_at,
        "resource": resource,  # check_claims accepted the token only if its audience names us
        "subject": verified.subject,
        "claims": claims,
    }


def access_token(
    verified: VerifiedToken,
    raw: str,
    *,
    resource: str,
    shared: bool = False,
    aliases: Mapping[str, str] | None = None,
) -> VerifiedAccessToken:
    """The SDK's `AccessToken` for ``verified`` (see `access_fields`), carrying it (see `carry`)."""
    cls = SharedAccessToken if shared else VerifiedAccessToken
    return carry(cls.model_validate(access_fields(verified, raw, resource=resource)), verified, aliases)


async def verified_or_none(
    verifier: _Verifies, token: str, *, cert_binding: CertBinding = "off"
) -> VerifiedToken | None:
    """Verify ``token`` for a protocol that can only say "None" on refusal; the reason goes to the log.

    Never the token itself in the log. A certificate-bound token is refused (RFC 8705 §3: it is only
    good with its certificate, which such a protocol cannot see).
    """
    try:
        verified = await verifier.verify(token)
    except AuthError as exc:
        reason = clip(exc.reason)  # may quote an unverified claim
        log.info("sdk verify_token refused: status=%d error=%s reason=%s", exc.status, exc.error or "-", reason)
        return None
    except Exception:  # the SDK turns an exception into a bare 500 without a challenge
        log.exception("token verifier failed unexpectedly")
        return None
    if cert_binding == "required" or (cert_binding == "if-bound" and verified.certificate_thumbprint is not None):
        log.info("sdk verify_token refused: certificate binding cannot be checked through the SDK's TokenVerifier")
        return None
    return verified


async def verify_token(
    verifier: _Verifies,
    token: str,
    *,
    resource: str,
    cert_binding: CertBinding = "off",
    aliases: Mapping[str, str] | None = None,
) -> AccessToken | None:
    """The SDK's ``TokenVerifier.verify_token``: a `VerifiedAccessToken`, or None for any refusal.

    None is all the protocol can say, so the SDK answers 401 even where our middleware answers
    503 (keys unavailable).
    """
    verified = await verified_or_none(verifier, token, cert_binding=cert_binding)
    return None if verified is None else access_token(verified, token, resource=resource, aliases=aliases)


class PrincipalCache:
    """What the SDK and Starlette read, built once per verified token (bounded, oldest dropped first).

    Keyed by the identity of the `VerifiedToken` (the verifier's cache returns the same object for
    the same token); the entry keeps that object alive, so an id is never reused while cached.
    Only verified tokens get here, so an unauthenticated caller cannot fill it.
    """

    __slots__ = ("_resource", "_aliases", "_max", "_entries")

    def __init__(self, resource: str, *, max_entries: int = 1024, aliases: Mapping[str, str] | None = None) -> None:
        self._resource = resource
        self._aliases = aliases
        self._max = max_entries
        self._entries: dict[int, tuple[VerifiedToken, str, AuthenticatedUser, AuthCredentials]] = {}

    def get(self, verified: VerifiedToken, raw: str) -> tuple[AuthenticatedUser, AuthCredentials]:
        """The SDK user (a Starlette ``BaseUser``) and the Starlette credentials for ``verified``."""
        entry = self._entries.get(id(verified))
        if entry is not None and entry[0] is verified and entry[1] == raw:
            return entry[2], entry[3]
        shared = access_token(verified, raw, resource=self._resource, shared=True, aliases=self._aliases)
        user = AuthenticatedUser(shared)
        credentials = AuthCredentials(sorted(verified.permissions))
        if len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[id(verified)] = (verified, raw, user, credentials)
        return user, credentials

    def __len__(self) -> int:
        return len(self._entries)
