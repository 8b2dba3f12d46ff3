"""Token exchange at the dev issuer: the JWT bearer grant (RFC 7523) and RFC 8693, for tokens it issued.

The rules a real issuer applies, as one pure function (`decide_exchange`), given the subject token's
claims already verified (our signature, not expired):

* the subject token must be valid and addressed to the exchanging client (its ``aud`` names the
  client): a token meant for someone else cannot be turned into another (``invalid_grant``);
* a subject token carrying ``may_act`` (RFC 8693 §4.4) may only be exchanged by that actor;
* the new token names the new audience (``resource`` as in RFC 8707 and IAS app-to-app URNs, or
  RFC 8693 ``audience``), keeps the subject (``sub``) and the client (``azp``) of the subject
  token, carries the exchanging client's permission groups for that audience (as IAS grants an
  application's dependency), never outlives the subject token, and records the actor per
  RFC 8693 §4.1: ``act: {"sub": <exchanging client or actor token subject>}``, with any earlier
  ``act`` nested inside;
* IAS's ``token_format`` may only ask for ``jwt`` here; RFC 8693 token types other than access
  tokens and JWTs are ``invalid_request``.

`ExchangingDevIssuer` adds both grants to the dev issuer (`server._dev_issuer.DevIssuer`) and lets
it issue tokens for further applications (the example downstream API, the Destination service
look-alike). Written to move into ``auth.testing`` as two entries of its ``GRANTS`` table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._dev_issuer import _NO_STORE, _URN_CLIENTID, _URN_NAME, DevIssuer, _read_form, _TokenEndpointError, logger

__all__ = [
    "JWT_BEARER",
    "TOKEN_EXCHANGE",
    "DevApplication",
    "Exchanged",
    "ExchangeRefused",
    "decide_exchange",
    "ExchangingDevIssuer",
]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a grant type name)
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
_TOKEN_TYPES = {
    "access_token": ACCESS_TOKEN_TYPE, ACCESS_TOKEN_TYPE: ACCESS_TOKEN_TYPE,
    "jwt": JWT_TOKEN_TYPE, JWT_TOKEN_TYPE: JWT_TOKEN_TYPE,
}


@dataclass(frozen=True, slots=True)
class DevApplication:
    """Another application tokens may be asked for (an IAS "provider" application).

    Attributes:
        client_id: the token's ``aud``.
        name: for ``resource=urn:sap:identity:application:provider:name:<name>``.
        resources: RFC 8707 resource URLs naming it (added to ``aud`` beside the client id).
    """

    client_id: str
    name: str
    resources: tuple[str, ...] = ()

    def audience_for(self, resource: str) -> tuple[str, ...] | None:
        if resource in self.resources:
            return (self.client_id, resource)
        if resource in (_URN_NAME + self.name, _URN_CLIENTID + self.client_id):
            return (self.client_id,)
        return None


class ExchangeRefused(Exception):
    """An RFC 6749 §5.2 error for the token endpoint to answer."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(error)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class Exchanged:
    """What the exchanged token says; the issuer adds ``iss``, ``iat``, ``jti`` and the tenant."""

    subject: str
    authorized_party: str
    audience: tuple[str, ...]
    permissions: tuple[str, ...]
    expires_at: int
    issued_token_type: str | None  # RFC 8693 answers name it; JWT bearer answers do not
    extra_claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


def _one_of(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise ExchangeRefused("invalid_request", f"{name} is missing")
    return value


def decide_exchange(
    form: Mapping[str, str],
    *,
    client_id: str,
    client_permissions: tuple[str, ...],
    verify: Callable[[str], Mapping[str, Any] | None],
    audience_for: Callable[[str | None], tuple[str, ...]],
    audience_named: Callable[[str], tuple[str, ...] | None],
    now: int,
    lifetime: int,
) -> Exchanged:
    """Decide an exchange request of an authenticated client (pure but for ``verify``).

    Args:
        form: the request's parameters.
        client_id: the authenticated (exchanging) client.
        client_permissions: its permission groups.
        verify: our own token's claims if its signature and times hold, else None.
        audience_for: the ``aud`` for an RFC 8707 ``resource`` (None: the default audience);
            raises LookupError for an unknown one.
        audience_named: the ``aud`` for an RFC 8693 ``audience`` (a client id or a name), or None.
        now: seconds since the epoch.
        lifetime: the issuer's token lifetime.

    Raises:
        ExchangeRefused: ``invalid_request``, ``invalid_grant``, ``invalid_target``.
    """
    grant_type = form.get("grant_type")
    issued_type: str | None = None
    actor = client_id
    if grant_type == JWT_BEARER:
        subject_token = _one_of(form, "assertion")  # RFC 7523 §2.1
        if form.get("token_format", "jwt") != "jwt":
            raise ExchangeRefused("invalid_request", "only token_format=jwt is supported")
    elif grant_type == TOKEN_EXCHANGE:
        subject_token = _one_of(form, "subject_token")  # RFC 8693 §2.1
        if _TOKEN_TYPES.get(_one_of(form, "subject_token_type")) is None:
            raise ExchangeRefused("invalid_request", "subject_token_type must be an access token or a JWT")
        requested = form.get("requested_token_type")
        issued_type = _TOKEN_TYPES.get(requested or ACCESS_TOKEN_TYPE)
        if issued_type is None:
            raise ExchangeRefused("invalid_request", "requested_token_type must be an access token or a JWT")
        if ("actor_token" in form) != ("actor_token_type" in form):
            raise ExchangeRefused("invalid_request", "actor_token and actor_token_type go together")
        if "actor_token" in form:
            if _TOKEN_TYPES.get(form["actor_token_type"]) is None:
                raise ExchangeRefused("invalid_request", "actor_token_type must be an access token or a JWT")
            actor_claims = verify(form["actor_token"])
            if actor_claims is None or not isinstance(actor_claims.get("sub"), str):
                raise ExchangeRefused("invalid_grant", "the actor token is invalid or expired")
            actor = str(actor_claims["sub"])
    else:
        raise ExchangeRefused("unsupported_grant_type", "not an exchange grant")

    claims = verify(subject_token)
    if claims is None:
        raise ExchangeRefused("invalid_grant", "the subject token is invalid or expired")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise ExchangeRefused("invalid_grant", "the subject token is not addressed to the client")
    may_act = claims.get("may_act")
    if isinstance(may_act, dict) and may_act.get("sub") != actor:  # RFC 8693 §4.4
        raise ExchangeRefused("invalid_grant", "the subject token does not allow this actor")
    subject, party = claims.get("sub"), claims.get("azp") or claims.get("client_id") or claims.get("sub")
    expires = claims.get("exp")
    if not isinstance(subject, str) or not isinstance(party, str) or not isinstance(expires, int):
        raise ExchangeRefused("invalid_grant", "the subject token lacks sub, azp or exp")

    try:
        target = audience_for(form.get("resource"))
    except LookupError:
        raise ExchangeRefused("invalid_target", "resource does not name a known application") from None
    if grant_type == TOKEN_EXCHANGE and form.get("audience"):
        named = audience_named(form["audience"])
        if named is None:
            raise ExchangeRefused("invalid_target", "audience does not name a known application")
        if form.get("resource") and named[0] != target[0]:
            raise ExchangeRefused("invalid_target", "resource and audience name different applications")
        target = target if form.get("resource") else named

    act: dict[str, object] = {"sub": actor}
    if isinstance(claims.get("act"), dict):
        act["act"] = claims["act"]  # §4.1: the earlier actors, nested
    extra: dict[str, object] = {"act": act}
    if isinstance(claims.get("sap_id_type"), str):
        extra["sap_id_type"] = claims["sap_id_type"]
    return Exchanged(
        subject=subject,
        authorized_party=party,
        audience=target,
        permissions=client_permissions,
        expires_at=min(now + lifetime, expires),
        issued_token_type=issued_type,
        extra_claims=MappingProxyType(extra),
    )


class ExchangingDevIssuer(DevIssuer):
    """The dev issuer with both exchange grants, and tokens for further applications.

    Args:
        applications: the other applications tokens may be requested for (by ``resource`` or
            RFC 8693 ``audience``), besides the MCP server.
        **options: as `DevIssuer`.
    """

    def __init__(self, base_url: str, *, applications: Iterable[DevApplication] = (), **options: Any) -> None:
        super().__init__(base_url, **options)
        self.applications = tuple(applications)

    def accepted_resources(self) -> frozenset[str]:
        apps = {r for a in self.applications for r in (*a.resources, _URN_NAME + a.name, _URN_CLIENTID + a.client_id)}
        return super().accepted_resources() | apps

    def _audience(self, resource: str | None) -> list[str]:
        for app in self.applications if resource is not None else ():
            found = app.audience_for(resource)
            if found is not None:
                return list(found)
        return super()._audience(resource)

    def _audience_named(self, audience: str) -> tuple[str, ...] | None:
        if audience in (self.server_client_id, self.server_name):
            return (self.server_client_id,)
        return next(((a.client_id,) for a in self.applications if audience in (a.client_id, a.name)), None)

    def metadata(self) -> dict[str, object]:
        doc = super().metadata()
        doc["grant_types_supported"] = ["client_credentials", JWT_BEARER, TOKEN_EXCHANGE]
        return doc

    def verify_own(self, token: str) -> Mapping[str, Any] | None:
        """The claims of a token this issuer signed, if it is still valid (else None)."""
        try:
            decoded = jwt.decode(token, self._key, algorithms=["RS256"])
        except (JoseError, ValueError):
            return None
        claims = decoded.claims
        now = self._clock()
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if claims.get("iss") != self.issuer or not isinstance(exp, int) or exp <= now or not isinstance(nbf, int):
            return None
        return claims if nbf <= now + 60 else None

    async def _token_endpoint(self, request: Request) -> Response:
        # Peek at the grant without consuming the body twice: read and authenticate once here.
        try:
            form = await _read_form(request)
            who = self._authenticate(request, form)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise _TokenEndpointError("invalid_request", "grant_type is missing")
        except _TokenEndpointError as exc:
            logger.info("dev issuer: token request rejected: %s", exc.error)
            return exc.response()
        if grant_type not in (JWT_BEARER, TOKEN_EXCHANGE):
            return self._client_credentials(grant_type, form, who)
        now = int(self._clock())
        try:
            exchanged = decide_exchange(
                form,
                client_id=who.client_id,
                client_permissions=who.client.apis,
                verify=self.verify_own,
                audience_for=self._audience_or_lookup_error,
                audience_named=self._audience_named,
                now=now,
                lifetime=self.token_lifetime,
            )
        except ExchangeRefused as exc:
            logger.info("dev issuer: exchange rejected for client_id=%r: %s", who.client_id, exc.error)
            return JSONResponse({"error": exc.error, "error_description": exc.description}, 400, headers=_NO_STORE)
        claims = self._claims(
            exchanged.subject,
            apis=exchanged.permissions,
            audience=list(exchanged.audience),
            thumbprint=who.certificate_thumbprint,
            lifetime=exchanged.expires_at - now,
        )
        claims["azp"] = exchanged.authorized_party
        claims.update(exchanged.extra_claims)
        token = self._sign(claims)
        logger.info(
            "dev issuer: exchanged token client_id=%r grant=%s sub=%r aud=%r jti=%s",
            who.client_id, grant_type, exchanged.subject, list(exchanged.audience), claims["jti"],
        )
        lifetime = exchanged.expires_at - now
        answer: dict[str, object] = {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}
        if exchanged.issued_token_type is not None:
            answer["issued_token_type"] = exchanged.issued_token_type
        return JSONResponse(answer, headers=_NO_STORE)

    def _audience_or_lookup_error(self, resource: str | None) -> tuple[str, ...]:
        try:
            return tuple(self._audience(resource))
        except ValueError:
            raise LookupError(resource) from None

    def _client_credentials(self, grant_type: str, form: Mapping[str, str], who: Any) -> Response:
        try:
            if grant_type != "client_credentials":
                raise _TokenEndpointError(
                    "unsupported_grant_type", "supported: client_credentials, jwt-bearer, token-exchange"
                )
            try:
                audience = self._audience(form.get("resource"))
            except ValueError:
                raise _TokenEndpointError("invalid_target", "resource does not name a known application") from None
        except _TokenEndpointError as exc:
            logger.info("dev issuer: token request rejected: %s", exc.error)
            return exc.response()
        claims = self._claims(
            who.client_id, apis=who.client.apis, audience=audience, thumbprint=who.certificate_thumbprint,
            lifetime=self.token_lifetime,
        )
        token = self._sign(claims)
        logger.info("dev issuer: issued token client_id=%r aud=%r jti=%s", who.client_id, audience, claims["jti"])
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime}, headers=_NO_STORE
        )
