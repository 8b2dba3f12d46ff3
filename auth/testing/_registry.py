"""Who may ask the local issuer for tokens, and for whom: clients, audiences, their text syntax (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .._errors import ConfigError

__all__ = [
    "Audience",
    "RegisteredClient",
    "DEFAULT_AUDIENCE",
    "DEFAULT_CLIENTS",
    "URN_NAME",
    "URN_CLIENTID",
    "parse_clients",
    "parse_resources",
    "resolve_audience",
    "check_resource_url",
]

URN_NAME = "urn:sap:identity:application:provider:name:"
URN_CLIENTID = "urn:sap:identity:application:provider:clientid:"
DEFAULT_AUDIENCE = "mcp-dev-server"

_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SECRET = re.compile(r"[^\s:,]{1,128}")
_GROUP = re.compile(r"[A-Za-z0-9._-]{1,128}")
_AUDIENCE_ID = re.compile(r"[A-Za-z0-9._:/-]{1,256}")


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    """A client of the local issuer: its secret and the API permission groups granted to it (``ias_apis``).

    ``certificate_thumbprint`` (``base64url(SHA-256(DER))``, as `auth.certificate_thumbprint`
    computes it) registers an X.509 client for ``tls_client_auth``; such a client may have no
    secret. The permission groups hold for every audience, as if an administrator had granted
    all of them to the client.
    """

    client_id: str
    secret: str | None
    permissions: tuple[str, ...] = ()
    certificate_thumbprint: str | None = None

    def __post_init__(self) -> None:
        if not self.client_id or not (self.secret or self.certificate_thumbprint):
            raise ValueError(f"client {self.client_id!r} needs a non-empty id and a secret or a certificate thumbprint")
        if isinstance(self.permissions, str):
            raise TypeError("permissions must be a sequence of group names, not one string")
        object.__setattr__(self, "permissions", tuple(self.permissions))

    def __repr__(self) -> str:  # keep the secret out of reprs, logs and tracebacks
        secret = "'***'" if self.secret is not None else "None"
        return (
            f"RegisteredClient(client_id={self.client_id!r}, secret={secret}, permissions={self.permissions!r}, "
            f"certificate_thumbprint={self.certificate_thumbprint!r})"
        )


@dataclass(frozen=True, slots=True)
class Audience:
    """An application tokens are issued for (an IAS "provider" application).

    Attributes:
        client_id: its client id, the token's ``aud``; the server trusts tokens naming it.
        resources: RFC 8707 ``resource`` values that name it, typically the MCP endpoint URL of
            each of its instances (``http://127.0.0.1:9000/mcp``); a token requested for one of
            them has ``aud: [client_id, resource]``.
        name: its IAS application name, for ``resource=urn:sap:identity:application:provider:name:<name>``;
            defaults to ``client_id``. ``...:provider:clientid:<client_id>`` is always accepted.
    """

    client_id: str
    resources: tuple[str, ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if not _AUDIENCE_ID.fullmatch(self.client_id):
            raise ValueError(f"audience must be 1-256 of A-Z a-z 0-9 . _ : / -, got {self.client_id[:80]!r}")
        if isinstance(self.resources, str):
            raise TypeError("resources must be a sequence of URLs, not one string")
        object.__setattr__(self, "resources", tuple(check_resource_url(r) for r in self.resources))

    def names(self) -> frozenset[str]:
        """The IAS URNs that name this application."""
        return frozenset({URN_NAME + (self.name or self.client_id), URN_CLIENTID + self.client_id})


DEFAULT_CLIENTS: tuple[RegisteredClient, ...] = (
    RegisteredClient("dev-full", "dev-full-secret", ("api_read_access", "api_write_access")),
    RegisteredClient("dev-read", "dev-read-secret", ("api_read_access",)),
)
"""The two public, fixed dev clients (their secrets are no secret): read+write and read-only."""


def check_resource_url(url: str) -> str:
    """An RFC 8707 resource indicator: an absolute http(s) URL without fragment (§2).

    Raises:
        ValueError: otherwise.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"resource is not a URL: {url[:80]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment or "#" in url:
        raise ValueError(f"resource must be an absolute http(s) URL without fragment, got {url[:80]!r}")
    if any(c.isspace() for c in url) or len(url) > 2048:
        raise ValueError(f"resource must be a URL without whitespace, got {url[:80]!r}")
    return url


def resolve_audience(resource: str | None, audiences: Sequence[Audience]) -> tuple[str, ...]:
    """The ``aud`` of a token requested with ``resource`` (RFC 8707), or None's default (pure).

    Without ``resource`` the token is for the first audience: a convenience of the local issuer
    (IAS would issue a token for the requesting client itself, without ``ias_apis``).

    Raises:
        LookupError: when ``resource`` names no audience (the token endpoint's ``invalid_target``).
    """
    if resource is None:
        if not audiences:
            raise LookupError("no audience")
        return (audiences[0].client_id,)
    for audience in audiences:
        if resource in audience.resources:
            return (audience.client_id, resource)
        if resource in audience.names():
            return (audience.client_id,)
    raise LookupError("resource names no known application")


def parse_clients(
    value: str, *, setting: str, reserved: Iterable[str] = ()
) -> dict[str, RegisteredClient]:
    """Clients from text: comma-separated ``<client_id>:<secret>:<group>[+<group>...]`` (pure).

    E.g. ``my-agent:my-secret:api_read_access+api_archive``; an empty group list (``nobody:pw:``)
    is a client without permission groups. Client ids and groups are ``[A-Za-z0-9._-]``; a secret
    has no ``:``, ``,`` or whitespace.

    Raises:
        ConfigError: naming ``setting`` and the faulty entry (its secret masked).
    """
    clients: dict[str, RegisteredClient] = {}
    taken = set(reserved)
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":")
        shown = f"{parts[0]}:***:{parts[2]}" if len(parts) == 3 else parts[0][:64] + ":..."
        if len(parts) != 3:
            raise ConfigError(setting, f"expected entries like 'client:secret:group+group', got {shown!r}")
        client_id, secret, groups = parts
        if not _CLIENT_ID.fullmatch(client_id):
            raise ConfigError(setting, f"client id must be 1-64 of A-Z a-z 0-9 . _ - in {shown!r}")
        if not _SECRET.fullmatch(secret):
            raise ConfigError(setting, f"secret must be 1-128 characters without ':' ',' or spaces in {shown!r}")
        permissions = tuple(groups.split("+")) if groups else ()
        if not all(_GROUP.fullmatch(g) for g in permissions):
            raise ConfigError(setting, f"groups must be A-Z a-z 0-9 . _ - joined by '+' in {shown!r}")
        if client_id in taken or client_id in clients:
            raise ConfigError(setting, f"client id {client_id!r} is already defined")
        clients[client_id] = RegisteredClient(client_id, secret, permissions)
    return clients


def parse_resources(
    values: Iterable[str], audience_ids: Sequence[str], *, setting: str
) -> Mapping[str, tuple[str, ...]]:
    """RFC 8707 resources per audience, from ``URL`` (the first audience's) or ``<audience>=URL`` (pure).

    Raises:
        ConfigError: naming ``setting``: not a URL, or no audience to attach it to.
    """
    found: dict[str, list[str]] = {a: [] for a in audience_ids}
    for raw in values:
        value = raw.strip()
        if not value:
            continue
        left, eq, right = value.partition("=")
        target = left if eq and left in found and right.startswith(("http://", "https://")) else None
        url = right if target is not None else value
        if target is None:
            if not audience_ids:
                raise ConfigError(setting, "a resource needs an audience to name")
            target = audience_ids[0]
        try:
            found[target].append(check_resource_url(url))
        except ValueError as exc:
            raise ConfigError(setting, str(exc)) from None
    return {a: tuple(urls) for a, urls in found.items()}
