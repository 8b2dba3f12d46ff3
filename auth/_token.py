"""The verified principal: a frozen value, so nothing downstream can alter what was checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["VerifiedToken"]


@dataclass(frozen=True, slots=True)
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
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), repr=False, compare=False)

    def has(self, *permissions: str) -> bool:
        """True when every named permission was granted."""
        return self.permissions.issuperset(permissions)
