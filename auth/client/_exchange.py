"""Token exchange, the pure half: what to ask the token endpoint, and whether the answer will do.

Two grants turn a token we received (the *subject*, say the caller's token) into one for another
audience, without ever forwarding the received token itself:

* ``jwt-bearer``: RFC 7523 §2.1, ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` with
  ``assertion=<subject token>``, as SAP Cloud Identity Services (IAS) and XSUAA implement it. IAS
  needs ``token_format=jwt``, or it may answer with a SAML assertion or an opaque token.
* ``token-exchange``: RFC 8693 §2.1 with ``subject_token``, ``subject_token_type``,
  ``requested_token_type``, ``audience``/``resource`` and an optional ``actor_token`` (off by
  default per IAS application).

The target (RFC 8707 ``resource``, such as IAS's
``urn:sap:identity:application:provider:name:<dependency>``, or RFC 8693 ``audience``) is part of
`ExchangeTarget`, which is also half of the cache key; the other half is a digest of the subject
token, so an exchanged token is only ever handed back for the very token it was made from.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from .._errors import ConfigError
from ._credentials import ClientCredentials, IssuedToken, TokenResponseError, check_resource, json_object

__all__ = [
    "ExchangeGrant",
    "ExchangeTarget",
    "GRANT_TYPES",
    "JWT_BEARER",
    "TOKEN_EXCHANGE",
    "ACCESS_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "ID_TOKEN_TYPE",
    "exchange_request_form",
    "check_exchange_response",
    "token_digest",
    "looks_like_jwt",
]

ExchangeGrant = Literal["jwt-bearer", "token-exchange"]
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (RFC 8693 §2.1)
GRANT_TYPES: dict[ExchangeGrant, str] = {"jwt-bearer": JWT_BEARER, "token-exchange": TOKEN_EXCHANGE}

# RFC 8693 §3 token type identifiers (names, not secrets)
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
_SHORT_TYPES = {"access_token": ACCESS_TOKEN_TYPE, "jwt": JWT_TOKEN_TYPE, "id_token": ID_TOKEN_TYPE}
_TOKEN_FORMATS = ("jwt", "opaque")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")  # RFC 6749 §3.3
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def _token_type(value: str | None, setting: str) -> str | None:
    if value is None:
        return None
    full = _SHORT_TYPES.get(value, value)
    if not full.startswith("urn:") or any(c.isspace() for c in full):
        raise ConfigError(setting, f"must be a token type URI such as {ACCESS_TOKEN_TYPE!r}, got {value!r}")
    return full


@dataclass(frozen=True, slots=True)
class ExchangeTarget:
    """What to exchange a subject token for: the grant and the token wanted (hashable: a cache key part).

    Attributes:
        grant: ``jwt-bearer`` (RFC 7523, IAS and XSUAA) or ``token-exchange`` (RFC 8693).
        resource: RFC 8707 resource: a URL or IAS's ``urn:sap:identity:application:provider:name:<dependency>``.
        audience: RFC 8693 ``audience`` (the target's client id or logical name); ``token-exchange`` only.
        scope: space-separated scopes to ask for (RFC 6749 §3.3).
        token_format: IAS's ``token_format``; ``jwt`` by default for ``jwt-bearer`` (without it IAS
            may answer with a SAML assertion). None sends none.
        requested_token_type: RFC 8693 ``requested_token_type`` (full URI or IAS's short form).
        subject_token_type: RFC 8693 ``subject_token_type``; an access token by default.

    Raises:
        ConfigError: naming the attribute at fault.
    """

    grant: ExchangeGrant = "jwt-bearer"
    resource: str | None = None
    audience: str | None = None
    scope: str | None = None
    token_format: str | None = "jwt"  # noqa: S105 (a format name)
    requested_token_type: str | None = None
    subject_token_type: str = ACCESS_TOKEN_TYPE

    def __post_init__(self) -> None:
        if self.grant not in GRANT_TYPES:
            raise ConfigError("grant", f"must be 'jwt-bearer' or 'token-exchange', got {self.grant!r}")
        check_resource(self.resource)
        if self.audience is not None and (not self.audience or any(c.isspace() for c in self.audience)):
            raise ConfigError("audience", f"must be a non-empty name without spaces, got {self.audience!r}")
        if self.audience is not None and self.grant != "token-exchange":
            raise ConfigError("audience", "is an RFC 8693 parameter: use resource with the jwt-bearer grant")
        if self.scope is not None and not _SCOPE.fullmatch(self.scope):
            raise ConfigError("scope", f"must be space-separated scope tokens, got {self.scope!r}")
        if self.token_format is not None and self.token_format not in _TOKEN_FORMATS:
            raise ConfigError("token_format", f"must be 'jwt' or 'opaque', got {self.token_format!r}")
        requested = _token_type(self.requested_token_type, "requested_token_type")
        subject = _token_type(self.subject_token_type, "subject_token_type")
        if requested is not None and self.grant != "token-exchange":
            raise ConfigError("requested_token_type", "is an RFC 8693 parameter (grant token-exchange)")
        object.__setattr__(self, "requested_token_type", requested)
        object.__setattr__(self, "subject_token_type", subject)

    @property
    def grant_type(self) -> str:
        """The ``grant_type`` URI."""
        return GRANT_TYPES[self.grant]

    @property
    def expects_jwt(self) -> bool:
        """Whether only a JWT will do as the answer (we asked for one)."""
        return self.token_format == "jwt" or self.requested_token_type == JWT_TOKEN_TYPE  # noqa: S105


def token_digest(token: str) -> bytes:
    """SHA-256 of a token: how caches remember *which* token without holding it as a key."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def looks_like_jwt(token: str) -> bool:
    """A JWS compact serialisation (three base64url parts), not a SAML assertion or an opaque handle."""
    return len(token) < 65536 and _JWT.fullmatch(token) is not None


def exchange_request_form(
    credentials: ClientCredentials,
    subject_token: str,
    target: ExchangeTarget,
    *,
    resource: str | None = None,
    actor_token: str | None = None,
    actor_token_type: str | None = None,
) -> dict[str, str]:
    """The form body of an exchange request (RFC 7523 §2.1 or RFC 8693 §2.1).

    ``resource`` is the effective resource (the target's, else the credentials' default).

    Raises:
        ConfigError: an actor token with the jwt-bearer grant, or an empty subject token.
    """
    if not subject_token or any(c.isspace() for c in subject_token):
        raise ConfigError("subject_token", "must be a non-empty token without whitespace")
    form = {"grant_type": target.grant_type}
    if credentials.auth_method == "tls_client_auth":
        form["client_id"] = credentials.client_id  # RFC 8705 §2: the id is not in the certificate
    if target.grant == "jwt-bearer":
        if actor_token is not None:
            raise ConfigError("actor_token", "is an RFC 8693 parameter (grant token-exchange)")
        form["assertion"] = subject_token
    else:
        form["subject_token"] = subject_token
        form["subject_token_type"] = target.subject_token_type
        if target.requested_token_type is not None:
            form["requested_token_type"] = target.requested_token_type
        if target.audience is not None:
            form["audience"] = target.audience
        if actor_token is not None:
            # §2.1: actor_token_type is REQUIRED when actor_token is present.
            form["actor_token"] = actor_token
            form["actor_token_type"] = _token_type(actor_token_type, "actor_token_type") or ACCESS_TOKEN_TYPE
    if resource is not None:
        form["resource"] = resource
    if target.scope is not None:
        form["scope"] = target.scope
    if target.token_format is not None:
        form["token_format"] = target.token_format
    return form


def check_exchange_response(
    issued: IssuedToken, body: bytes, target: ExchangeTarget, *, token_endpoint: str | None = None
) -> IssuedToken:
    """Refuse an exchange answer that parsed as a token response but is not what was asked for.

    RFC 8693 §2.2.1 answers name ``issued_token_type``; one other than an access token or a JWT (a
    SAML assertion, an id token) is no bearer token for an API. When a JWT was asked for
    (`ExchangeTarget.expects_jwt`), anything else is refused: IAS without ``token_format=jwt``
    may answer with a SAML assertion, which a downstream API would reject with a less clear error.

    Raises:
        TokenResponseError: the token is of the wrong type.
    """
    doc = json_object(body) or {}
    issued_type = doc.get("issued_token_type")
    if target.grant == "token-exchange" and isinstance(issued_type, str):
        if issued_type not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
            raise TokenResponseError(
                f"exchange answered issued_token_type {issued_type[:80]!r}, not an access token",
                token_endpoint=token_endpoint,
                status=200,
            )
    if target.expects_jwt and not looks_like_jwt(issued.access_token):
        raise TokenResponseError(
            "exchange answered with a token that is not a JWT (token_format=jwt was asked for)",
            token_endpoint=token_endpoint,
            status=200,
        )
    return issued
