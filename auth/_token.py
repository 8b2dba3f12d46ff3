"""The verified principal: a frozen value, so nothing downstream can alter what was checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

__all__ = ["VerifiedToken"]

_NO_CLAIMS: Mapping[str, object] = MappingProxyType({})


@dataclass(frozen=True, slots=True, init=False)
class VerifiedToken:
    """Claims of a token that passed every check.

    ``permissions`` are already mapped from the issuer's claim (``ias_apis``, ``scope``,
    ``scp``/``roles``) and expanded by the configured implication rules.
    """

    subject: str
    client_id: str
    issuer: str
    audience: tuple[str, ...]
    permissions: frozenset[str]
    expires_at: int
    issued_at: int | None = None
    tenant: str | None = None
    certificate_thumbprint: str | None = None  # cnf.x5t#S256 (RFC 8705 §3.1), base64url
    claims: Mapping[str, object] = field(default_factory=lambda: _NO_CLAIMS, repr=False, compare=False)

    def __init__(
        self,
        subject: str,
        client_id: str,
        issuer: str,
        audience: tuple[str, ...],
        permissions: frozenset[str],
        expires_at: int,
        issued_at: int | None = None,
        tenant: str | None = None,
        certificate_thumbprint: str | None = None,
        claims: Mapping[str, object] = _NO_CLAIMS,
    ) -> None:
        # Built once per verified token: the slot setters cost half of the generated frozen
        # __init__ (which goes through object.__setattr__ for every field).
        _set_subject(self, subject)
        _set_client_id(self, client_id)
        _set_issuer(self, issuer)
        _set_audience(self, audience)
        _set_permissions(self, permissions)
        _set_expires_at(self, expires_at)
        _set_issued_at(self, issued_at)
        _set_tenant(self, tenant)
        _set_certificate_thumbprint(self, certificate_thumbprint)
        _set_claims(self, claims)

    def has(self, *permissions: str) -> bool:
        """True when every named permission was granted."""
        return self.permissions.issuperset(permissions)


def _setter(name: str) -> Any:
    return VerifiedToken.__dict__[name].__set__


_set_subject = _setter("subject")
_set_client_id = _setter("client_id")
_set_issuer = _setter("issuer")
_set_audience = _setter("audience")
_set_permissions = _setter("permissions")
_set_expires_at = _setter("expires_at")
_set_issued_at = _setter("issued_at")
_set_tenant = _setter("tenant")
_set_certificate_thumbprint = _setter("certificate_thumbprint")
_set_claims = _setter("claims")
assert [f.name for f in fields(VerifiedToken)] == list(VerifiedToken.__slots__)  # every field has its setter
