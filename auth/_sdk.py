"""Fit with the ``mcp`` SDK: its ``TokenVerifier`` protocol, its ``AccessToken`` and its authenticated user.

Two routes use this module:

* ``MCPServer(token_verifier=JWTVerifier(...), auth=AuthSettings(...))``: the SDK calls
  `verify_token`, which can only answer "an AccessToken" or "None". Every refusal therefore
  becomes the SDK's 401 ``invalid_token`` (our 503 for unavailable keys included), the SDK has no
  per-tool 403 gate, and the connection's client certificate is out of reach, so tokens bound
  to a certificate (RFC 8705) are refused rather than accepted unchecked.
* `BearerAuthMiddleware` (our route): after verifying, it publishes the principal where the SDK
  and Starlette look for it (``get_access_token()``, ``scope["user"]``, ``scope["auth"]``), using
  a `PrincipalCache` so that the objects are built once per verified token, not per request.
"""

from __future__ import annotations

import logging
from typing import Protocol

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from pydantic import ConfigDict
from starlette.authentication import AuthCredentials

from ._errors import AuthError
from ._request import clip
from ._settings import CertBinding
from ._token import VerifiedToken

__all__ = ["SharedAccessToken", "access_token", "verify_token", "PrincipalCache"]

log = logging.getLogger("auth")


class SharedAccessToken(AccessToken):
    """The SDK's `AccessToken`, frozen: one instance serves every request made with the same token."""

    model_config = ConfigDict(frozen=True)


class _Verifies(Protocol):
    async def verify(self, token: str) -> VerifiedToken: ...


def access_token(verified: VerifiedToken, raw: str, *, resource: str, shared: bool = False) -> AccessToken:
    """The SDK's view of a verified token: client id, the mapped permissions as scopes, expiry, resource.

    ``subject`` and ``claims["iss"]`` make the SDK's principal (client id, issuer, subject) whole,
    which its stateful transport compares against the session's owner.
    """
    claims = dict(verified.claims)
    claims.setdefault("iss", verified.issuer)
    cls = SharedAccessToken if shared else AccessToken
    return cls(
        token=raw,
        client_id=verified.client_id,
        scopes=sorted(verified.permissions),
        expires_at=verified.expires_at,
        resource=resource,  # check_claims accepted the token only if its audience names us
        subject=verified.subject,
        claims=claims,
    )


async def verify_token(
    verifier: _Verifies, token: str, *, resource: str, cert_binding: CertBinding = "off"
) -> AccessToken | None:
    """The SDK's ``TokenVerifier.verify_token``: an `AccessToken`, or None for any refusal.

    The reason goes to the log (never the token). None is all the protocol can say, so the SDK
    answers 401 even where our middleware answers 503 (keys unavailable).
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
    # RFC 8705 §3: a bound token is only good with its certificate, which this protocol cannot see.
    if cert_binding == "required" or (cert_binding == "if-bound" and verified.certificate_thumbprint is not None):
        log.info("sdk verify_token refused: certificate binding cannot be checked through the SDK's TokenVerifier")
        return None
    return access_token(verified, token, resource=resource)


class PrincipalCache:
    """What the SDK and Starlette read, built once per verified token (bounded, oldest dropped first).

    Keyed by the identity of the `VerifiedToken` (the verifier's cache returns the same object for
    the same token); the entry keeps that object alive, so an id is never reused while cached.
    Only verified tokens get here, so an unauthenticated caller cannot fill it.
    """

    __slots__ = ("_resource", "_max", "_entries")

    def __init__(self, resource: str, *, max_entries: int = 1024) -> None:
        self._resource = resource
        self._max = max_entries
        self._entries: dict[int, tuple[VerifiedToken, str, AuthenticatedUser, AuthCredentials]] = {}

    def get(self, verified: VerifiedToken, raw: str) -> tuple[AuthenticatedUser, AuthCredentials]:
        """The SDK user (a Starlette ``BaseUser``) and the Starlette credentials for ``verified``."""
        entry = self._entries.get(id(verified))
        if entry is not None and entry[0] is verified and entry[1] == raw:
            return entry[2], entry[3]
        user = AuthenticatedUser(access_token(verified, raw, resource=self._resource, shared=True))
        credentials = AuthCredentials(sorted(verified.permissions))
        if len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[id(verified)] = (verified, raw, user, credentials)
        return user, credentials

    def __len__(self) -> int:
        return len(self._entries)
