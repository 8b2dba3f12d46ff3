"""One frozen settings object for the auth layer, parsed at the edge.

`load_settings` is pure: it takes a mapping (``os.environ`` in production, a dict in tests)
and either returns `AuthSettings` or raises `ConfigError` naming the offending setting.
On Cloud Foundry an ``identity`` binding (and optionally an ``xsuaa`` binding) in
``VCAP_SERVICES`` supplies what the environment leaves unset; on Kubernetes (Kyma) the same
bindings mounted under ``SERVICE_BINDING_ROOT`` do, read by the same rules (`service_bindings`).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from ._errors import ConfigError
from ._jws import SUPPORTED_ALGORITHMS
from ._permissions import parse_permission_name
from ._service_bindings import service_bindings

__all__ = ["AuthSettings", "IssuerConfig", "Profile", "CertBinding", "load_settings", "is_loopback_url"]

Profile = Literal["ias", "xsuaa", "entra", "generic"]
CertBinding = Literal["off", "if-bound", "required"]
_PROFILES: tuple[Profile, ...] = ("ias", "xsuaa", "entra", "generic")
_CERT_BINDINGS: tuple[CertBinding, ...] = ("off", "if-bound", "required")


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted issuer: its keys, the audiences it must name, and how to read permissions.

    For ``ias``, ``domains`` turns on multi-tenant mode: any ``https://<one label>.<domain>``
    is trusted as an issuer too (``ias.md``: SAP's libraries do the same).
    """

    issuer: str
    audiences: tuple[str, ...]
    profile: Profile = "ias"
    jwks_uri: str | None = None
    domains: tuple[str, ...] = ()
    xsappname: str | None = None
    client_id: str | None = None  # ours at this issuer; sent as x-client_id to IAS
    app_tid: str | None = None


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Everything the auth layer needs; build it with `load_settings` or directly in code."""

    issuers: tuple[IssuerConfig, ...]
    resource_url: str
    resource_name: str = "MCP server"
    resource_documentation: str | None = None
    algorithms: frozenset[str] = frozenset({"RS256"})
    leeway_s: int = 60
    max_token_bytes: int = 8192
    permission_aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    implies: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    challenge_scopes: tuple[str, ...] | None = None  # scope= of the 401 challenge; None: all known
    jwks_ttl_s: float = 600.0
    jwks_refresh_cooldown_s: float = 30.0
    http_timeout_s: float = 5.0
    jwks_max_bytes: int = 256 * 1024
    token_cache_size: int = 10_000
    cert_binding: CertBinding = "off"
    trust_forwarded_client_cert: bool = False
    retry_after_s: int = 30
    jwks_min_refresh_s: float = 5.0  # an unknown kid refreshes an issuer's keys at most this often
    jwks_max_stale_s: float = 3600.0  # keys keep serving this long past their TTL while refreshes fail
    ca_file: str | None = None  # extra trusted CAs (PEM) for discovery and key fetches
    # With trust_forwarded_client_cert behind an Istio sidecar: the SPIFFE ID of the ingress gateway, whose
    # element (the one before the sidecar's) carries the client certificate. None: the last element.
    forwarded_client_cert_gateway: str | None = None

    def __post_init__(self) -> None:
        if not self.issuers:
            raise ConfigError("MCP_AUTH_ISSUER", "at least one trusted issuer is required")
        for iss in self.issuers:
            check_issuer_url(iss.issuer, "MCP_AUTH_ISSUER")
            if iss.jwks_uri is not None:
                check_issuer_url(iss.jwks_uri, "MCP_AUTH_JWKS_URI", allow_query=True)
            if not iss.audiences:
                raise ConfigError("MCP_AUTH_AUDIENCE", f"no accepted audience for issuer {iss.issuer}")
        check_issuer_url(self.resource_url, "MCP_RESOURCE_URL")
        if not self.algorithms or not self.algorithms <= SUPPORTED_ALGORITHMS:
            raise ConfigError(
                "MCP_AUTH_ALGORITHMS",
                f"must be a subset of {sorted(SUPPORTED_ALGORITHMS)} (no HS*, no none), got {sorted(self.algorithms)}",
            )
        if not 0 <= self.leeway_s <= 300:
            raise ConfigError("MCP_AUTH_LEEWAY", "must be between 0 and 300 seconds")
        if self.forwarded_client_cert_gateway is not None:
            _check_spiffe_id(self.forwarded_client_cert_gateway, self.trust_forwarded_client_cert)

    @property
    def issuer_urls(self) -> tuple[str, ...]:
        """The trusted issuers, as listed in ``authorization_servers`` (RFC 9728 §2)."""
        return tuple(i.issuer for i in self.issuers)


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names a loopback host (the only place plain http is allowed)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_issuer_url(url: str, setting: str, *, allow_query: bool = False) -> str:
    """Require an absolute https URL without query, fragment or userinfo (http only on loopback).

    ``allow_query`` admits a query for key-set URLs (XSUAA's ``token_keys?zid=…``), never for issuers.

    Raises:
        ConfigError: naming ``setting``.
    """
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise ConfigError(setting, f"not a URL: {url!r}") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(setting, f"must be an absolute https URL, got {url!r}")
    if parts.scheme == "http" and not is_loopback_url(url):
        raise ConfigError(setting, f"must use https (http is allowed only on loopback), got {url!r}")
    if (parts.query and not allow_query) or parts.fragment or parts.username or parts.password:
        raise ConfigError(setting, f"must not have a query, fragment or userinfo: {url!r}")
    if any(c.isspace() for c in url):
        raise ConfigError(setting, f"must not contain whitespace: {url!r}")
    return url


def _check_spiffe_id(value: str, trusted: bool) -> None:
    """``MCP_AUTH_XFCC_GATEWAY``: a ``spiffe://`` ID, meaningful only with ``MCP_AUTH_TRUST_XFCC``."""
    if not trusted:
        raise ConfigError("MCP_AUTH_XFCC_GATEWAY", "needs MCP_AUTH_TRUST_XFCC=true")
    if not value.startswith("spiffe://") or len(value) > 2048 or any(c.isspace() or c in ',;"=' for c in value):
        problem = f"must be a spiffe:// ID (no spaces, commas, semicolons, quotes or =), got {value[:80]!r}"
        raise ConfigError("MCP_AUTH_XFCC_GATEWAY", problem)


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(name, f"must be a number, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo:g} and {hi:g}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")


def _pairs(env: Mapping[str, str], name: str, sep: str) -> list[tuple[str, str]]:
    pairs = []
    for item in _csv(env.get(name)):
        left, found, right = item.partition(sep)
        if not found or not left.strip() or not right.strip():
            raise ConfigError(name, f"expected entries like 'a{sep}b', got {item!r}")
        try:
            pairs.append((parse_permission_name(left.strip()), parse_permission_name(right.strip())))
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from exc
    return pairs


_NO_ISSUER = (
    "no trusted issuer: set MCP_AUTH_ISSUER or bind an identity service (VCAP_SERVICES, or SERVICE_BINDING_ROOT)"
)
BINDING_SETTINGS = {"identity": "MCP_AUTH_IDENTITY_SERVICE", "xsuaa": "MCP_AUTH_XSUAA_SERVICE"}


def _vcap_binding(vcap: Mapping[str, Any], label: str, env: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The credentials of the ``label`` binding; with several, the one the setting names.

    Raises:
        ConfigError: naming ``MCP_AUTH_IDENTITY_SERVICE``/``MCP_AUTH_XSUAA_SERVICE`` when several
            bindings exist and none is chosen, or the chosen one is not bound.
    """
    setting = BINDING_SETTINGS[label]
    entries = vcap.get(label)
    chosen = env.get(setting, "").strip()
    if not isinstance(entries, list) or not entries:
        if chosen:
            raise ConfigError(setting, f"names {chosen!r}, but no {label} service is bound")
        return None
    entries = [e for e in entries if isinstance(e, dict)]
    names = [str(e.get("name") or e.get("instance_name") or "") for e in entries]
    if chosen:
        matches = [e for e, n in zip(entries, names, strict=True) if chosen in (n, e.get("instance_name"))]
        if not matches:
            raise ConfigError(setting, f"no bound {label} service is named {chosen!r} (bound: {', '.join(names)})")
        entry = matches[0]
    elif len(entries) > 1:
        bound = ", ".join(names)
        raise ConfigError(setting, f"{len(entries)} {label} services are bound ({bound}); name the one to trust")
    elif entries:
        entry = entries[0]
    else:
        return None
    creds = entry.get("credentials")
    return creds if isinstance(creds, dict) else None


def _ca_file(env: Mapping[str, str]) -> str | None:
    """``MCP_AUTH_CA_FILE``, else ``SSL_CERT_FILE``: extra CAs for discovery and key fetches."""
    for name in ("MCP_AUTH_CA_FILE", "SSL_CERT_FILE"):
        if path := env.get(name, "").strip():
            if not os.path.isfile(path):
                raise ConfigError(name, f"no such file: {path!r}")
            return path
    return None


def _issuer_from_json(item: object, index: int) -> IssuerConfig:
    setting = f"MCP_AUTH_ISSUERS[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("issuer"), str):
        raise ConfigError(setting, "each entry must be an object with an 'issuer' string")
    profile = item.get("profile", "ias")
    if profile not in _PROFILES:
        raise ConfigError(setting, f"profile must be one of {_PROFILES}, got {profile!r}")
    audiences = item.get("audiences", item.get("audience", []))
    audiences = [audiences] if isinstance(audiences, str) else audiences
    domains = item.get("domains", [])
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise ConfigError(setting, "'audiences' must be a list of strings")
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise ConfigError(setting, "'domains' must be a list of strings")
    for name in ("jwks_uri", "xsappname", "client_id", "app_tid"):
        if item.get(name) is not None and not isinstance(item[name], str):
            raise ConfigError(setting, f"'{name}' must be a string")
    return IssuerConfig(
        issuer=item["issuer"],  # exact: Entra v1 issuers end in '/', others must not gain one
        audiences=tuple(audiences),
        profile=profile,
        jwks_uri=item.get("jwks_uri"),
        domains=tuple(domains),
        xsappname=item.get("xsappname"),
        client_id=item.get("client_id"),
        app_tid=item.get("app_tid"),
    )


def _resource_url(env: Mapping[str, str], resource_path: str) -> str:
    if url := env.get("MCP_RESOURCE_URL", "").strip():
        return url.rstrip("/")
    raw_app = env.get("VCAP_APPLICATION")
    if raw_app:
        try:
            uris = json.loads(raw_app).get("application_uris") or []
        except (ValueError, AttributeError) as exc:
            raise ConfigError("VCAP_APPLICATION", "is not a JSON object") from exc
        if not isinstance(uris, list) or not all(isinstance(u, str) and u for u in uris):
            raise ConfigError("VCAP_APPLICATION", "application_uris must be a list of host names")
        if uris:
            return f"https://{uris[0]}{resource_path}"
    raise ConfigError("MCP_RESOURCE_URL", "public URL of the MCP endpoint is required (e.g. https://host/mcp)")


def load_settings(env: Mapping[str, str], *, resource_path: str = "/mcp") -> AuthSettings:
    """Build `AuthSettings` from environment variables, ``VCAP_SERVICES`` and ``SERVICE_BINDING_ROOT``.

    Raises:
        ConfigError: a setting is missing or invalid; the message names it.
    """
    vcap = service_bindings(env)  # VCAP_SERVICES and the folders under SERVICE_BINDING_ROOT: one set of rules
    identity = _vcap_binding(vcap, "identity", env)
    xsuaa = _vcap_binding(vcap, "xsuaa", env)
    if not (env.get("MCP_AUTH_ISSUER", "").strip() or env.get("MCP_AUTH_ISSUERS", "").strip() or identity or xsuaa):
        raise ConfigError(
            "MCP_AUTH_ISSUER", _NO_ISSUER
        )
    resource_url = _resource_url(env, resource_path)

    profile = env.get("MCP_AUTH_PROFILE", "ias").strip() or "ias"
    if profile not in _PROFILES:
        raise ConfigError("MCP_AUTH_PROFILE", f"must be one of {', '.join(_PROFILES)}, got {profile!r}")
    issuers: list[IssuerConfig] = []
    if raw := env.get("MCP_AUTH_ISSUERS", "").strip():
        try:
            items = json.loads(raw)
        except ValueError as exc:
            raise ConfigError("MCP_AUTH_ISSUERS", "is not valid JSON") from exc
        if not isinstance(items, list):
            raise ConfigError("MCP_AUTH_ISSUERS", "must be a JSON array of issuer objects")
        issuers.extend(_issuer_from_json(item, n) for n, item in enumerate(items))

    env_issuers = _csv(env.get("MCP_AUTH_ISSUER"))
    audiences = _csv(env.get("MCP_AUTH_AUDIENCE"))
    jwks_uri = env.get("MCP_AUTH_JWKS_URI", "").strip() or None
    domains = _csv(env.get("MCP_AUTH_IAS_DOMAINS"))
    client_id = identity.get("clientid") if identity else None
    if not env_issuers and identity and isinstance(identity.get("url"), str):
        env_issuers = (identity["url"].rstrip("/"),)
    if _bool(env, "MCP_AUTH_MULTI_TENANT", False) and not domains and identity:
        bound_domains = identity.get("domains") or []
        if not isinstance(bound_domains, list):  # a string would be read letter by letter
            raise ConfigError("MCP_AUTH_IAS_DOMAINS", "the identity binding's domains is not a list: set this instead")
        domains = tuple(d for d in bound_domains if isinstance(d, str))
    if env_issuers:
        if jwks_uri and len(env_issuers) > 1:
            raise ConfigError("MCP_AUTH_JWKS_URI", "one JWKS URI cannot serve several issuers; use MCP_AUTH_ISSUERS")
        accepted = audiences or ((client_id,) if isinstance(client_id, str) else ())
        # RFC 8707: a token whose audience is our own resource URL is meant for us too.
        accepted = tuple(dict.fromkeys((*accepted, resource_url)))
        for iss in env_issuers:
            issuers.append(
                IssuerConfig(
                    issuer=iss,
                    audiences=accepted,
                    profile=profile,
                    jwks_uri=jwks_uri,
                    domains=domains if profile == "ias" else (),
                    xsappname=env.get("MCP_AUTH_XSAPPNAME") or None,
                    client_id=client_id if isinstance(client_id, str) else None,
                    app_tid=identity.get("app_tid") if identity else None,
                )
            )
    if xsuaa and isinstance(xsuaa.get("url"), str) and isinstance(xsuaa.get("uaadomain"), str):
        xs_aud = tuple(a for a in (xsuaa.get("clientid"), xsuaa.get("xsappname")) if isinstance(a, str))
        zid = xsuaa.get("zoneid")
        keys_query = f"?zid={quote(zid, safe='')}" if isinstance(zid, str) and zid else ""  # ias.md: per zone
        issuers.append(
            IssuerConfig(
                issuer=f"{xsuaa['url'].rstrip('/')}/oauth/token",
                audiences=xs_aud,
                profile="xsuaa",
                jwks_uri=f"https://{xsuaa['uaadomain']}/token_keys{keys_query}",
                xsappname=xsuaa.get("xsappname"),
                client_id=xsuaa.get("clientid"),
            )
        )
    if not issuers:
        raise ConfigError(
            "MCP_AUTH_ISSUER", _NO_ISSUER
        )
    for issuer_config in issuers:
        if not issuer_config.audiences:
            raise ConfigError("MCP_AUTH_AUDIENCE", f"no accepted audience for issuer {issuer_config.issuer}")

    algorithms = frozenset(_csv(env.get("MCP_AUTH_ALGORITHMS")) or ("RS256",))
    implies: dict[str, set[str]] = {}
    for broader, narrower in _pairs(env, "MCP_AUTH_IMPLIES", ">"):
        implies.setdefault(broader, set()).add(narrower)
    challenge = _csv(env.get("MCP_AUTH_CHALLENGE_SCOPES"))
    cert_binding = env.get("MCP_AUTH_CERT_BINDING", "off").strip() or "off"
    if cert_binding not in _CERT_BINDINGS:
        raise ConfigError("MCP_AUTH_CERT_BINDING", f"must be one of {', '.join(_CERT_BINDINGS)}, got {cert_binding!r}")
    return AuthSettings(
        issuers=tuple(issuers),
        resource_url=resource_url,
        resource_name=env.get("MCP_RESOURCE_NAME", "").strip() or "MCP server",
        resource_documentation=env.get("MCP_RESOURCE_DOCUMENTATION", "").strip() or None,
        algorithms=algorithms,
        leeway_s=int(_number(env, "MCP_AUTH_LEEWAY", 60, 0, 300)),
        permission_aliases=MappingProxyType(dict(_pairs(env, "MCP_AUTH_PERMISSION_ALIASES", "="))),
        implies=MappingProxyType({k: frozenset(v) for k, v in implies.items()}),
        challenge_scopes=challenge or None,
        jwks_ttl_s=_number(env, "MCP_AUTH_JWKS_TTL", 600, 10, 86_400),
        jwks_refresh_cooldown_s=_number(env, "MCP_AUTH_JWKS_COOLDOWN", 30, 1, 3_600),
        http_timeout_s=_number(env, "MCP_AUTH_HTTP_TIMEOUT", 5, 0.1, 60),
        token_cache_size=int(_number(env, "MCP_AUTH_TOKEN_CACHE_SIZE", 10_000, 0, 1_000_000)),
        cert_binding=cert_binding,
        trust_forwarded_client_cert=_bool(env, "MCP_AUTH_TRUST_XFCC", False),
        forwarded_client_cert_gateway=env.get("MCP_AUTH_XFCC_GATEWAY", "").strip() or None,
        jwks_min_refresh_s=_number(env, "MCP_AUTH_JWKS_MIN_REFRESH", 5, 0.1, 600),
        jwks_max_stale_s=_number(env, "MCP_AUTH_JWKS_MAX_STALE", 3600, 0, 7 * 86_400),
        ca_file=_ca_file(env),
    )
