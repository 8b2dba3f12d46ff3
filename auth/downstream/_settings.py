"""Which downstream APIs a server calls, and how: frozen settings, parsed at the edge (pure).

A downstream has a name (what a tool asks for), a URL and a *mode*, chosen in configuration and
never in the tool:

* ``as-server``: the server's own identity, a client-credentials token for the downstream's
  ``resource`` (IAS: ``urn:sap:identity:application:provider:name:<dependency>``);
* ``on-behalf-of``: the caller's token exchanged for one addressed to the downstream, by the
  ``jwt-bearer`` grant (RFC 7523, IAS's default) or ``token-exchange`` (RFC 8693);
* or ``destination``: the name of a BTP Destination, whose URL and authentication the Destination
  service supplies (its type decides whether the caller's token is needed).

Every token a downstream receives is issued for it: a downstream without a target (``resource``
or ``audience``) is a configuration error, so the caller's token can never be forwarded.

Sources, in `load_downstreams`::

    MCP_DOWNSTREAMS='{"backend": {"url": "https://backend.example/api", "mode": "on-behalf-of",
                      "resource": "urn:sap:identity:application:provider:name:backend"},
                      "s4": {"destination": "S4_ORDERS"}}'
    VCAP_SERVICES   user-provided services tagged "mcp-downstream" (the service name is the
    (or bindings    downstream's name, its credentials the same object), the server's own
    mounted under   identity (or xsuaa) binding for its credentials, a "destination" binding
    SERVICE_BINDING_ROOT, read by the same rules as the auth layer's)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from .._errors import ConfigError
from .._service_bindings import service_bindings
from .._settings import check_issuer_url
from ..client._credentials import ClientCredentials, credentials_from_env
from ..client._exchange import ExchangeGrant, ExchangeTarget

__all__ = [
    "Downstream",
    "DownstreamSettings",
    "DestinationBinding",
    "Mode",
    "load_downstreams",
    "credentials_from_binding",
    "DEFAULT_TIMEOUT_S",
]

Mode = Literal["as-server", "on-behalf-of", "destination"]
_MODES: tuple[Mode, ...] = ("as-server", "on-behalf-of", "destination")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DESTINATION_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")  # SAP: letters, digits, '-', '_', '.'
DEFAULT_TIMEOUT_S = 10.0
DOWNSTREAM_TAG = "mcp-downstream"
_FIELDS = frozenset(
    {"url", "mode", "resource", "audience", "grant", "scope", "token_format", "requested_token_type",
     "destination", "timeout"}
)


@dataclass(frozen=True, slots=True)
class Downstream:
    """One downstream API.

    Attributes:
        name: what tools ask for (``await downstreams.request("backend", ...)``).
        mode: ``as-server``, ``on-behalf-of`` or ``destination``.
        url: base URL; None for a destination (the Destination service supplies it).
        target: what to ask the token endpoint for (grant, ``resource``, ``audience``, ``scope``);
            None for a destination.
        destination: the BTP Destination's name (mode ``destination``).
        timeout_s: deadline for one call: token, exchange or lookup, and the HTTP exchange.

    Raises:
        ConfigError: naming ``MCP_DOWNSTREAMS[<name>]`` and the field at fault.
    """

    name: str
    mode: Mode
    url: str | None = None
    target: ExchangeTarget | None = None
    destination: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError("MCP_DOWNSTREAMS", f"a downstream name is 1-64 of A-Z a-z 0-9 . _ -, got {self.name!r}")
        where = f"MCP_DOWNSTREAMS[{self.name}]"
        if self.mode not in _MODES:
            raise ConfigError(f"{where}.mode", f"must be one of {', '.join(_MODES)}, got {self.mode!r}")
        if not (isinstance(self.timeout_s, int | float) and 0.1 <= self.timeout_s <= 120):
            raise ConfigError(f"{where}.timeout", f"must be between 0.1 and 120 seconds, got {self.timeout_s!r}")
        if self.mode == "destination":
            if self.destination is None or not _DESTINATION_NAME.fullmatch(self.destination):
                raise ConfigError(f"{where}.destination", f"must be a destination name, got {self.destination!r}")
            if self.url is not None or self.target is not None:
                raise ConfigError(f"{where}.destination", "takes its URL and authentication from the destination")
            return
        if self.destination is not None:
            raise ConfigError(f"{where}.destination", f"is only used with mode 'destination', not {self.mode!r}")
        if self.url is None:
            raise ConfigError(f"{where}.url", "is required")
        check_issuer_url(self.url, f"{where}.url", allow_query=False)
        if self.target is None or (self.target.resource is None and self.target.audience is None):
            # Never a token without a target: it would be addressed to us, i.e. passed through.
            raise ConfigError(f"{where}.resource", "is required: a token must be issued for the downstream")
        if self.mode == "as-server" and self.target.audience is not None:
            raise ConfigError(f"{where}.audience", "is for on-behalf-of with grant token-exchange; use resource")
        if self.mode == "as-server" and self.target.scope is not None:
            raise ConfigError(f"{where}.scope", "is for on-behalf-of; as-server asks for the resource only")

    @property
    def needs_caller(self) -> bool:
        """Whether a call needs the caller's token (on behalf of the caller)."""
        return self.mode == "on-behalf-of"


@dataclass(frozen=True, slots=True)
class DestinationBinding:
    """How to reach the BTP Destination service: its URL and our credentials for its token.

    Attributes:
        service_url: the binding's ``uri`` (``https://destination-configuration.cfapps.<region>...``).
        credentials: client credentials at the binding's token service (XSUAA ``url`` + ``/oauth/token``,
            or ``certurl`` with its X.509 certificate).
    """

    service_url: str
    credentials: ClientCredentials

    def __post_init__(self) -> None:
        check_issuer_url(self.service_url.rstrip("/"), "VCAP_SERVICES[destination].credentials.uri")

    @classmethod
    def from_binding(
        cls, credentials: Mapping[str, Any], *, name: str = "destination", where: str | None = None
    ) -> DestinationBinding:
        """From the ``credentials`` of a ``destination`` binding (``VCAP_SERVICES`` or a mounted one).

        Raises:
            ConfigError: naming the binding key at fault (under ``where``).
        """
        where = where or f"VCAP_SERVICES[{name}].credentials"
        uri = credentials.get("uri")
        if not isinstance(uri, str) or not uri:
            raise ConfigError(f"{where}.uri", "is missing from the destination binding")
        return cls(uri.rstrip("/"), credentials_from_binding(credentials, where=where, label="destination"))


@dataclass(frozen=True, slots=True)
class DownstreamSettings:
    """Every downstream, our credentials for tokens and exchanges, and the Destination service.

    Attributes:
        downstreams: by name.
        credentials: the server's own client at its issuer; needed by ``as-server`` and
            ``on-behalf-of`` downstreams.
        destination_service: needed by ``destination`` downstreams.
        ca_file: extra trusted CAs (PEM) for token endpoints, the Destination service and downstreams.

    Raises:
        ConfigError: a downstream needs credentials or a Destination binding that is missing.
    """

    downstreams: Mapping[str, Downstream] = field(default_factory=lambda: MappingProxyType({}))
    credentials: ClientCredentials | None = None
    destination_service: DestinationBinding | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "downstreams", MappingProxyType(dict(self.downstreams)))
        for name, downstream in self.downstreams.items():
            if name != downstream.name:
                raise ConfigError("MCP_DOWNSTREAMS", f"downstream {downstream.name!r} is listed as {name!r}")
            if downstream.mode == "destination" and self.destination_service is None:
                raise ConfigError(
                    f"MCP_DOWNSTREAMS[{name}].destination", "needs a bound destination service (VCAP_SERVICES)"
                )
            if downstream.mode != "destination" and self.credentials is None:
                raise ConfigError(
                    "MCP_DOWNSTREAM_CLIENT_ID",
                    f"downstream {name!r} needs the server's credentials: bind an identity service "
                    "or set MCP_DOWNSTREAM_CLIENT_ID",
                )

    def __bool__(self) -> bool:
        return bool(self.downstreams)


# --------------------------------------------------------------------------- credentials


def credentials_from_binding(
    credentials: Mapping[str, Any], *, where: str, label: str, resource: str | None = None
) -> ClientCredentials:
    """`ClientCredentials` from an ``identity``, ``xsuaa`` or ``destination`` binding's credentials.

    IAS (``identity``) discovers its token endpoint from ``url``; XSUAA-style bindings (``xsuaa``,
    ``destination``) have the token service at ``url`` + ``/oauth/token``, or at ``certurl`` for
    X.509 credentials.

    Raises:
        ConfigError: naming the binding key at fault.
    """
    if label == "identity":
        try:
            return ClientCredentials.from_identity_binding(credentials, resource=resource)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc.setting}", str(exc).partition(": ")[2]) from None
    client_id = credentials.get("clientid")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigError(f"{where}.clientid", "is missing")
    cert, key = credentials.get("certificate"), credentials.get("key")
    kind = str(credentials.get("credential-type") or "")
    use_cert = kind.startswith("x509") or kind.startswith("X509") or (
        isinstance(cert, str) and isinstance(key, str) and not credentials.get("clientsecret")
    )
    base = credentials.get("certurl") if use_cert else credentials.get("url")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{where}.{'certurl' if use_cert else 'url'}", "is missing")
    secret = credentials.get("clientsecret")
    if not use_cert and not isinstance(secret, str):
        raise ConfigError(f"{where}.clientsecret", "is missing (and no certificate and key)")
    try:
        return ClientCredentials(
            client_id=client_id,
            token_endpoint=base.rstrip("/") + "/oauth/token",
            client_secret=None if use_cert else secret,
            certificate=cert if use_cert else None,
            private_key=key if use_cert else None,
            resource=resource,
        )
    except ConfigError as exc:
        names = {"token_endpoint": "url", "client_secret": "clientsecret", "private_key": "key"}
        raise ConfigError(f"{where}.{names.get(exc.setting, exc.setting)}", str(exc).partition(": ")[2]) from None


_ENV_CREDENTIALS = {
    "MCP_CLIENT_ID": "MCP_DOWNSTREAM_CLIENT_ID",
    "MCP_CLIENT_SECRET": "MCP_DOWNSTREAM_CLIENT_SECRET",
    "MCP_CLIENT_CERT": "MCP_DOWNSTREAM_CLIENT_CERT",
    "MCP_CLIENT_KEY": "MCP_DOWNSTREAM_CLIENT_KEY",
    "MCP_TOKEN_URL": "MCP_DOWNSTREAM_TOKEN_URL",
    "MCP_ISSUER": "MCP_DOWNSTREAM_ISSUER",
}


def _server_credentials(env: Mapping[str, str], vcap: Mapping[str, Any]) -> ClientCredentials | None:
    """``MCP_DOWNSTREAM_CLIENT_*``, else the binding ``MCP_DOWNSTREAM_BINDING`` names, else the identity binding."""
    if env.get("MCP_DOWNSTREAM_CLIENT_ID", "").strip():
        mapped = {ours: env[theirs] for ours, theirs in _ENV_CREDENTIALS.items() if theirs in env}
        try:
            return credentials_from_env(mapped)
        except ConfigError as exc:
            raise ConfigError(_ENV_CREDENTIALS.get(exc.setting, exc.setting), str(exc).partition(": ")[2]) from None
    chosen = env.get("MCP_DOWNSTREAM_BINDING", "").strip() or env.get("MCP_AUTH_IDENTITY_SERVICE", "").strip()
    found = [
        (label, b)
        for label, bindings in vcap.items()
        if isinstance(bindings, list) and label in ("identity", "xsuaa")
        for b in bindings
        if isinstance(b, dict) and (not chosen or chosen in (b.get("name"), b.get("instance_name")))
    ]
    if chosen and not found:
        named = env.get("MCP_DOWNSTREAM_BINDING", "").strip()
        setting = "MCP_DOWNSTREAM_BINDING" if named else "MCP_AUTH_IDENTITY_SERVICE"
        raise ConfigError(setting, f"no bound identity or xsuaa service is named {chosen!r}")
    if not chosen:
        found = [f for f in found if f[0] == "identity"] or found
    if not found:
        return None
    if len(found) > 1:
        raise ConfigError("MCP_DOWNSTREAM_BINDING", f"{len(found)} identity/xsuaa services are bound; name one")
    label, binding = found[0]
    creds = binding.get("credentials")
    where = str(binding.get("source") or f"VCAP_SERVICES[{binding.get('name', label)}].credentials")
    if not isinstance(creds, dict):
        raise ConfigError(where, "is missing")
    return credentials_from_binding(creds, where=where, label=label)


def _destination_binding(env: Mapping[str, str], vcap: Mapping[str, Any]) -> DestinationBinding | None:
    chosen = env.get("MCP_DESTINATION_SERVICE", "").strip()
    bindings = [b for b in vcap.get("destination") or [] if isinstance(b, dict)]
    if chosen:
        bindings = [b for b in bindings if chosen in (b.get("name"), b.get("instance_name"))]
        if not bindings:
            raise ConfigError("MCP_DESTINATION_SERVICE", f"no bound destination service is named {chosen!r}")
    if not bindings:
        return None
    if len(bindings) > 1:
        raise ConfigError("MCP_DESTINATION_SERVICE", f"{len(bindings)} destination services are bound; name one")
    creds = bindings[0].get("credentials")
    name = str(bindings[0].get("name") or "destination")
    where = str(bindings[0].get("source") or f"VCAP_SERVICES[{name}].credentials")
    if not isinstance(creds, dict):
        raise ConfigError(where, "is missing")
    return DestinationBinding.from_binding(creds, name=name, where=where)


# --------------------------------------------------------------------------- downstreams


def _text(item: Mapping[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key}", "must be a non-empty string")
    return value.strip()


def parse_downstream(name: str, item: object, *, where: str, default_timeout: float) -> Downstream:
    """One downstream from its JSON object (pure).

    Raises:
        ConfigError: naming ``where`` and the field at fault.
    """
    if not isinstance(item, dict):
        raise ConfigError(where, "must be a JSON object with url, mode and resource (or destination)")
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        known = ", ".join(sorted(_FIELDS))
        raise ConfigError(f"{where}.{str(unknown[0])[:40]}", f"is not a known field (known: {known})")
    destination = _text(item, "destination", where)
    mode = _text(item, "mode", where) or ("destination" if destination else None)
    if mode is None:
        raise ConfigError(f"{where}.mode", "is required: as-server, on-behalf-of or destination")
    timeout = item.get("timeout", default_timeout)
    if isinstance(timeout, str):  # a mounted binding's file holds text
        try:
            timeout = float(timeout)
        except ValueError:
            pass
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout):
        raise ConfigError(f"{where}.timeout", f"must be a number of seconds, got {timeout!r}")
    target = None
    if mode != "destination":
        grant = _text(item, "grant", where)
        if mode == "as-server" and grant is not None:
            raise ConfigError(f"{where}.grant", "is for on-behalf-of; as-server uses client credentials")
        token_format = item.get("token_format", "jwt" if (grant or "jwt-bearer") == "jwt-bearer" else None)
        try:
            target = ExchangeTarget(
                grant=_grant(grant or "jwt-bearer"),
                resource=_text(item, "resource", where),
                audience=_text(item, "audience", where),
                scope=_text(item, "scope", where),
                token_format=token_format if mode == "on-behalf-of" else None,
                requested_token_type=_text(item, "requested_token_type", where),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc.setting}", str(exc).partition(": ")[2]) from None
    try:
        return Downstream(
            name=name,
            mode=mode,  # type: ignore[arg-type]  # checked in __post_init__
            url=_text(item, "url", where),
            target=target,
            destination=destination,
            timeout_s=float(timeout),
        )
    except ConfigError as exc:
        setting = exc.setting.replace(f"MCP_DOWNSTREAMS[{name}]", where, 1)
        raise ConfigError(setting, str(exc).partition(": ")[2]) from None


def _grant(value: str) -> ExchangeGrant:
    if value not in ("jwt-bearer", "token-exchange"):
        raise ConfigError("grant", f"must be 'jwt-bearer' or 'token-exchange', got {value!r}")
    return value  # type: ignore[return-value]


def load_downstreams(env: Mapping[str, str]) -> DownstreamSettings:
    """Build `DownstreamSettings` from the environment, ``VCAP_SERVICES`` and ``SERVICE_BINDING_ROOT``.

    ``MCP_DOWNSTREAMS`` (a JSON object of downstreams by name) and user-provided services tagged
    ``mcp-downstream``; ``MCP_DOWNSTREAM_TIMEOUT`` is the default deadline per call (10 s). The
    server's credentials: ``MCP_DOWNSTREAM_CLIENT_ID`` with ``..._CLIENT_SECRET`` (or
    ``..._CLIENT_CERT`` and ``..._CLIENT_KEY``) and ``..._TOKEN_URL`` (or ``..._ISSUER``), else the
    binding ``MCP_DOWNSTREAM_BINDING`` names, else the identity binding. The Destination service:
    the ``destination`` binding (``MCP_DESTINATION_SERVICE`` names one of several).

    Pure but for reading the mounted bindings.

    Raises:
        ConfigError: a setting is missing or invalid; the message names it.
    """
    vcap = service_bindings(env)
    raw_timeout = env.get("MCP_DOWNSTREAM_TIMEOUT", "").strip()
    try:
        default_timeout = float(raw_timeout) if raw_timeout else DEFAULT_TIMEOUT_S
    except ValueError:
        default_timeout = math.nan
    if not 0.1 <= default_timeout <= 120:
        raise ConfigError("MCP_DOWNSTREAM_TIMEOUT", f"must be between 0.1 and 120 seconds, got {raw_timeout!r}")

    downstreams: dict[str, Downstream] = {}
    if raw := env.get("MCP_DOWNSTREAMS", "").strip():
        try:
            items = json.loads(raw)
        except ValueError:
            raise ConfigError("MCP_DOWNSTREAMS", "is not valid JSON") from None
        if not isinstance(items, dict):
            raise ConfigError("MCP_DOWNSTREAMS", "must be a JSON object of downstreams by name")
        for name, item in items.items():
            where = f"MCP_DOWNSTREAMS[{str(name)[:64]}]"
            downstreams[name] = parse_downstream(name, item, where=where, default_timeout=default_timeout)
    for bindings in vcap.values():
        for binding in bindings if isinstance(bindings, list) else ():
            if not isinstance(binding, dict) or DOWNSTREAM_TAG not in (binding.get("tags") or ()):
                continue
            name = str(binding.get("name") or "")
            where = str(binding.get("source") or f"VCAP_SERVICES[{name[:64]}].credentials")
            if name in downstreams:
                raise ConfigError(where, f"downstream {name!r} is also in MCP_DOWNSTREAMS")
            downstreams[name] = parse_downstream(
                name, binding.get("credentials"), where=where, default_timeout=default_timeout
            )
    if not downstreams:
        return DownstreamSettings()
    needs_credentials = any(d.mode != "destination" for d in downstreams.values())
    needs_destinations = any(d.mode == "destination" for d in downstreams.values())
    ca_file = env.get("MCP_AUTH_CA_FILE", "").strip() or None
    return DownstreamSettings(
        downstreams=downstreams,
        credentials=_server_credentials(env, vcap) if needs_credentials else None,
        destination_service=_destination_binding(env, vcap) if needs_destinations else None,
        ca_file=ca_file,
    )
