"""The grants of the local issuer's token endpoint, one pure function each, looked up by ``grant_type``.

A grant decides *what* a token says (subject, audience, permission groups, extra claims) for an
already authenticated client; the issuer authenticates the client before and signs after, so a
grant never sees a secret and never signs. Three are offered: client credentials (RFC 6749 §4.4),
the JWT bearer grant (RFC 7523, as IAS and XSUAA implement it) and token exchange (RFC 8693), the
last two for tokens this issuer signed. To add one, write
``def my_grant(issuer: GrantContext, request: TokenRequest) -> Issued`` and add it to `GRANTS`
under its ``grant_type`` URI: discovery's ``grant_types_supported`` lists `GRANTS`.
Anything a grant refuses is a `TokenEndpointError` with its RFC code (``invalid_grant``,
``invalid_target``, ``unauthorized_client``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from ._oauth import TokenEndpointError
from ._registry import RegisteredClient

__all__ = [
    "GRANTS",
    "Grant",
    "GrantContext",
    "Issued",
    "TokenRequest",
    "client_credentials",
    "jwt_bearer",
    "token_exchange",
    "unsupported",
    "JWT_BEARER",
    "TOKEN_EXCHANGE",
]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (RFC 8693 §2.1, a name)
_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
_TOKEN_TYPES = {"access_token": _ACCESS_TOKEN, _ACCESS_TOKEN: _ACCESS_TOKEN, "jwt": _JWT, _JWT: _JWT}
"""What an exchange takes and gives: access tokens and JWTs (IAS also accepts the short forms)."""


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A token request from an authenticated client.

    Attributes:
        form: the request's form parameters (``grant_type``, ``resource``, ...); secrets removed.
        client: the client that authenticated.
        certificate_thumbprint: ``x5t#S256`` of the TLS client certificate the request came with, if any.
    """

    form: Mapping[str, str]
    client: RegisteredClient
    certificate_thumbprint: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    """What a grant decided the token says; the issuer adds ``iss``, times, ``jti``, tenant and ``cnf``.

    Attributes:
        expires_at: the latest ``exp`` the token may have (an exchanged token never outlives the
            subject token); None: the issuer's lifetime.
        issued_token_type: RFC 8693 §2.2.1's ``issued_token_type`` for the answer; None: not sent.
    """

    subject: str
    authorized_party: str
    audience: tuple[str, ...]
    permissions: tuple[str, ...]
    extra_claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    expires_at: int | None = None
    issued_token_type: str | None = None


class GrantContext(Protocol):
    """What the issuer offers its grants."""

    def audience_for(self, resource: str | None) -> tuple[str, ...]:
        """The ``aud`` for an RFC 8707 ``resource`` (None: the default audience).

        Raises:
            TokenEndpointError: invalid_target when ``resource`` names no known application.
        """
        ...

    def audience_named(self, audience: str) -> tuple[str, ...] | None:
        """The ``aud`` for an RFC 8693 ``audience`` (an application's client id or name), or None."""
        ...

    def verify_own(self, token: str) -> Mapping[str, object] | None:
        """The claims of a token this issuer signed and that is valid now (``iss``, ``exp``, ``nbf``), else None."""
        ...


def client_credentials(issuer: GrantContext, request: TokenRequest) -> Issued:
    """RFC 6749 §4.4, as IAS answers it: the client is the subject; ``resource`` picks the audience."""
    audience = issuer.audience_for(request.form.get("resource"))
    client = request.client
    return Issued(client.client_id, client.client_id, audience, client.permissions)


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise TokenEndpointError("invalid_request", f"{name} is missing")
    return value


def _exchanged(
    issuer: GrantContext, request: TokenRequest, subject_token: str, actor: str, issued_token_type: str | None
) -> Issued:
    """The rules both exchange grants share, as a real issuer applies them.

    * The subject token must be ours, valid, and addressed to the exchanging client (its ``aud``
      names the client): a token meant for someone else cannot be turned into another.
    * A subject token with ``may_act`` (RFC 8693 §4.4) may only be exchanged by that actor.
    * The new token names the new audience, keeps the subject (``sub``) and the client (``azp``)
      of the subject token, carries the exchanging client's permission groups (as IAS grants an
      application's dependency), never outlives the subject token, and records the actor (RFC 8693
      §4.1 ``act``), with any earlier ``act`` nested inside.
    """
    form, client = request.form, request.client
    claims = issuer.verify_own(subject_token)
    if claims is None:
        raise TokenEndpointError("invalid_grant", "the subject token is invalid or expired")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client.client_id not in audiences:
        raise TokenEndpointError("invalid_grant", "the subject token is not addressed to the client")
    may_act = claims.get("may_act")
    if isinstance(may_act, dict) and may_act.get("sub") != actor:
        raise TokenEndpointError("invalid_grant", "the subject token does not allow this actor")
    subject, party, expires = claims.get("sub"), claims.get("azp") or claims.get("sub"), claims.get("exp")
    if not isinstance(subject, str) or not isinstance(party, str) or not isinstance(expires, int):
        raise TokenEndpointError("invalid_grant", "the subject token lacks sub, azp or exp")
    audience = issuer.audience_for(form.get("resource"))
    if form.get("audience"):  # RFC 8693 only (the JWT bearer grant has no audience parameter)
        named = issuer.audience_named(form["audience"])
        if named is None:
            raise TokenEndpointError("invalid_target", "audience does not name a known application")
        if form.get("resource") and named[0] != audience[0]:
            raise TokenEndpointError("invalid_target", "resource and audience name different applications")
        audience = audience if form.get("resource") else named
    act: dict[str, object] = {"sub": actor}
    if isinstance(claims.get("act"), dict):
        act["act"] = claims["act"]
    extra: dict[str, object] = {"act": act}
    if isinstance(claims.get("sap_id_type"), str):
        extra["sap_id_type"] = claims["sap_id_type"]
    return Issued(subject, party, audience, client.permissions, MappingProxyType(extra), expires, issued_token_type)


def jwt_bearer(issuer: GrantContext, request: TokenRequest) -> Issued:
    """RFC 7523 §2.1 as IAS and XSUAA implement it: ``assertion`` is the subject token.

    IAS's ``token_format`` may only ask for ``jwt`` here (the only kind this issuer signs).
    """
    form = request.form
    if form.get("token_format", "jwt") != "jwt":
        raise TokenEndpointError("invalid_request", "only token_format=jwt is supported")
    if "audience" in form or "subject_token" in form:
        raise TokenEndpointError("invalid_request", "audience and subject_token are RFC 8693 parameters")
    return _exchanged(issuer, request, _required(form, "assertion"), request.client.client_id, None)


def token_exchange(issuer: GrantContext, request: TokenRequest) -> Issued:
    """RFC 8693 §2.1: ``subject_token`` (an access token or JWT of ours), optional ``actor_token``,
    ``audience`` and/or ``resource``; the answer names its ``issued_token_type``."""
    form = request.form
    subject_token = _required(form, "subject_token")
    if _TOKEN_TYPES.get(_required(form, "subject_token_type")) is None:
        raise TokenEndpointError("invalid_request", "subject_token_type must be an access token or a JWT")
    issued_type = _TOKEN_TYPES.get(form.get("requested_token_type") or _ACCESS_TOKEN)
    if issued_type is None:
        raise TokenEndpointError("invalid_request", "requested_token_type must be an access token or a JWT")
    if ("actor_token" in form) != ("actor_token_type" in form):  # §2.1: REQUIRED together
        raise TokenEndpointError("invalid_request", "actor_token and actor_token_type go together")
    actor = request.client.client_id
    if "actor_token" in form:
        if _TOKEN_TYPES.get(form["actor_token_type"]) is None:
            raise TokenEndpointError("invalid_request", "actor_token_type must be an access token or a JWT")
        actor_claims = issuer.verify_own(form["actor_token"])
        if actor_claims is None or not isinstance(actor_claims.get("sub"), str):
            raise TokenEndpointError("invalid_grant", "the actor token is invalid or expired")
        actor = str(actor_claims["sub"])
    return _exchanged(issuer, request, subject_token, actor, issued_type)


Grant = Callable[[GrantContext, TokenRequest], Issued]

GRANTS: Mapping[str, Grant] = MappingProxyType(
    {"client_credentials": client_credentials, JWT_BEARER: jwt_bearer, TOKEN_EXCHANGE: token_exchange}
)
"""``grant_type`` → grant. Unlisted types are answered ``unsupported_grant_type``."""


def unsupported(grant_type: str) -> TokenEndpointError:
    """The answer to a ``grant_type`` not in `GRANTS`."""
    supported = ", ".join(GRANTS)
    return TokenEndpointError("unsupported_grant_type", f"supported grant types: {supported}")
