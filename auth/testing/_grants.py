"""The grants of the local issuer's token endpoint, one pure function each, looked up by ``grant_type``.

A grant decides *what* a token says (subject, audience, permission groups, extra claims) for an
already authenticated client; the issuer authenticates the client before and signs after, so a
grant never sees a secret and never signs. To add one (RFC 7523 JWT bearer, RFC 8693 token
exchange), write ``def my_grant(issuer: GrantContext, request: TokenRequest) -> Issued`` and add it
to `GRANTS` under its ``grant_type`` URI: discovery's ``grant_types_supported`` lists `GRANTS`.
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

__all__ = ["GRANTS", "Grant", "GrantContext", "Issued", "TokenRequest", "client_credentials", "unsupported"]


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
    """What a grant decided the token says; the issuer adds ``iss``, times, ``jti``, tenant and ``cnf``."""

    subject: str
    authorized_party: str
    audience: tuple[str, ...]
    permissions: tuple[str, ...]
    extra_claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


class GrantContext(Protocol):
    """What the issuer offers its grants."""

    def audience_for(self, resource: str | None) -> tuple[str, ...]:
        """The ``aud`` for an RFC 8707 ``resource`` (None: the default audience).

        Raises:
            TokenEndpointError: invalid_target when ``resource`` names no known application.
        """
        ...


def client_credentials(issuer: GrantContext, request: TokenRequest) -> Issued:
    """RFC 6749 §4.4, as IAS answers it: the client is the subject; ``resource`` picks the audience."""
    audience = issuer.audience_for(request.form.get("resource"))
    client = request.client
    return Issued(client.client_id, client.client_id, audience, client.permissions)


Grant = Callable[[GrantContext, TokenRequest], Issued]

GRANTS: Mapping[str, Grant] = MappingProxyType({"client_credentials": client_credentials})
"""``grant_type`` → grant. Unlisted types are answered ``unsupported_grant_type``."""


def unsupported(grant_type: str) -> TokenEndpointError:
    """The answer to a ``grant_type`` not in `GRANTS`."""
    supported = ", ".join(GRANTS)
    return TokenEndpointError("unsupported_grant_type", f"supported grant types: {supported}")
