"""The server's one frozen settings object: the auth layer's settings plus what serving needs."""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from auth import AuthSettings, ConfigError, load_settings
from auth._request import is_loopback_host
from auth._service_bindings import service_bindings  # the auth layer's binding reader, shared with the app
from auth.downstream import DownstreamSettings, load_downstreams
from tools import DEFAULT_TIMEOUT_S, PostgresConfig, system_ca_file

from ._limits import RateLimitSettings, rate_limit_settings, workers_setting
from ._otel_settings import TelemetrySettings, load_telemetry_settings

__all__ = ["ServerSettings", "load_server_settings", "MCP_PATH"]

MCP_PATH = "/mcp"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything `create_app` and ``python -m server`` need."""

    auth: AuthSettings
    host: str = "127.0.0.1"
    port: int = 8080
    notes_db: Path | PostgresConfig = Path("data/notes.db")  # MCP_NOTES_DB, or a postgresql-db binding
    notes_db_timeout_s: float = DEFAULT_TIMEOUT_S  # MCP_NOTES_DB_TIMEOUT: a store call fails as unavailable after it
    allowed_hosts: tuple[str, ...] = ()  # Host header values accepted (421 otherwise)
    allowed_origins: tuple[str, ...] = ()  # Origin header values accepted (403 otherwise)
    max_body_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    dev: bool = False
    tls_cert_file: Path | None = None  # serve HTTPS with this certificate (MCP_TLS_CERT)
    tls_key_file: Path | None = None  # and this key (MCP_TLS_KEY)
    tls_client_ca_file: Path | None = None  # accept client certificates from these CAs (MCP_TLS_CLIENT_CA)
    telemetry: TelemetrySettings = TelemetrySettings()  # OTEL_*: traces and metrics (off by default)
    downstreams: DownstreamSettings = field(default_factory=DownstreamSettings)  # MCP_DOWNSTREAMS, bindings
    rate_limits: RateLimitSettings = RateLimitSettings()  # MCP_RATE_LIMIT_* (off by default)
    workers: int | None = None  # MCP_WORKERS; None: the CPUs the container may use (resolved at start)


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _digits(text: str) -> bool:
    """ASCII decimal digits only: ``str.isdigit`` also admits "²" and other scripts' digits."""
    return text.isascii() and text.isdigit()


def _port(env: Mapping[str, str], default: int) -> int:
    raw = env.get("PORT", "").strip()
    if not raw:
        return default
    if not _digits(raw) or not 0 <= int(raw) <= 65535:
        raise ConfigError("PORT", f"must be a TCP port number, got {raw!r}")
    return int(raw)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (RFC 6454 §6.2 serialisation, default ports dropped)."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1]


def load_server_settings(
    env: Mapping[str, str],
    *,
    auth: AuthSettings | None = None,
    dev: bool = False,
    downstreams: DownstreamSettings | None = None,
) -> ServerSettings:
    """Parse the environment (and ``VCAP_*``) into `ServerSettings`.

    Args:
        env: ``os.environ`` or a dict.
        auth: pre-built auth settings (dev mode builds them for its embedded issuer).
        dev: dev mode defaults (loopback bind, port 8080).
        downstreams: pre-built downstream settings (dev mode's examples); by default `load_downstreams`.

    Raises:
        ConfigError: a setting is missing or invalid; the message names it.
    """
    on_cf = bool(env.get("VCAP_APPLICATION"))
    host = env.get("HOST", "").strip() or ("0.0.0.0" if on_cf and not dev else "127.0.0.1")  # noqa: S104
    port = _port(env, 8080)
    auth_settings = auth if auth is not None else load_settings(env, resource_path=MCP_PATH)
    public = auth_settings.resource_url
    hosts = [_host_header(public)]
    if on_cf:
        try:
            uris = json.loads(env["VCAP_APPLICATION"]).get("application_uris") or []
        except (ValueError, AttributeError) as exc:
            raise ConfigError("VCAP_APPLICATION", "is not a JSON object") from exc
        if not isinstance(uris, list):
            raise ConfigError("VCAP_APPLICATION", "application_uris must be a list of host names")
        hosts += [u for u in uris if isinstance(u, str)]
    if is_loopback_host(host):
        hosts += [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"]
    hosts += _csv(env.get("MCP_ALLOWED_HOSTS"))
    origins = [origin_of(public), *_csv(env.get("MCP_ALLOWED_ORIGINS"))]
    if is_loopback_host(host):
        origins += [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    raw_body = env.get("MCP_MAX_BODY_BYTES", "").strip()
    if raw_body and (not _digits(raw_body) or not 1024 <= int(raw_body) <= 64 * 1024 * 1024):
        raise ConfigError("MCP_MAX_BODY_BYTES", f"must be a byte count between 1024 and 67108864, got {raw_body!r}")
    level = env.get("MCP_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("MCP_LOG_LEVEL", f"must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    tls_cert, tls_key, tls_client_ca = _tls_files(env)
    notes_db = notes_db_setting(env)
    return ServerSettings(
        auth=auth_settings,
        host=host,
        port=port,
        notes_db=notes_db,
        notes_db_timeout_s=_db_timeout(env),
        allowed_hosts=tuple(dict.fromkeys(hosts)),
        allowed_origins=tuple(dict.fromkeys(origins)),
        max_body_bytes=int(raw_body) if raw_body else 1024 * 1024,
        log_level=level,
        dev=dev,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        tls_client_ca_file=tls_client_ca,
        telemetry=load_telemetry_settings(env, server_port=port),
        downstreams=downstreams if downstreams is not None else load_downstreams(env),
        rate_limits=rate_limit_settings(env, notes_db),
        workers=workers_setting(env, dev=dev),
    )


def _tls_files(env: Mapping[str, str]) -> tuple[Path | None, Path | None, Path | None]:
    """``MCP_TLS_CERT`` and ``MCP_TLS_KEY`` (both or neither), ``MCP_TLS_CLIENT_CA`` (needs both)."""
    paths: dict[str, Path | None] = {}
    for name in ("MCP_TLS_CERT", "MCP_TLS_KEY", "MCP_TLS_CLIENT_CA"):
        raw = env.get(name, "").strip()
        paths[name] = Path(raw) if raw else None
    cert, key, ca = paths["MCP_TLS_CERT"], paths["MCP_TLS_KEY"], paths["MCP_TLS_CLIENT_CA"]
    if cert is not None and key is None:
        raise ConfigError("MCP_TLS_KEY", "is required when MCP_TLS_CERT is set")
    if key is not None and cert is None:
        raise ConfigError("MCP_TLS_CERT", "is required when MCP_TLS_KEY is set")
    if ca is not None and cert is None:
        raise ConfigError("MCP_TLS_CLIENT_CA", "needs MCP_TLS_CERT and MCP_TLS_KEY (the server terminates TLS)")
    for name, path in paths.items():
        if path is not None and not path.is_file():
            raise ConfigError(name, f"no such file: {str(path)!r}")
    return cert, key, ca


# -- the notes database -------------------------------------------------------------------------

_URL_PARAMS = frozenset(
    {"sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "channel_binding", "target_session_attrs"}
)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PLAINTEXT_MODES = ("disable", "allow", "prefer")  # may talk to the database without TLS
_VERIFYING = ("verify-ca", "verify-full")
PG_BINDING_LABEL = "postgresql-db"
PLAINTEXT_SETTING = "MCP_NOTES_DB_ALLOW_PLAINTEXT"


def _db_timeout(env: Mapping[str, str]) -> float:
    raw = env.get("MCP_NOTES_DB_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.5 <= value <= 60:
        raise ConfigError("MCP_NOTES_DB_TIMEOUT", f"must be a number of seconds from 0.5 to 60, got {raw!r}")
    return value


def notes_db_setting(env: Mapping[str, str]) -> Path | PostgresConfig:
    """``MCP_NOTES_DB`` (a SQLite path or a PostgreSQL URL), else a PostgreSQL binding, else ``data/notes.db``.

    PostgreSQL is reached over verified TLS (`postgres_tls`): ``sslmode=verify-full`` unless the URL
    names another mode, against the binding's or the URL's CA, else the system's CA bundle.

    Raises:
        ConfigError: naming ``MCP_NOTES_DB``, ``VCAP_SERVICES``, ``SERVICE_BINDING_ROOT/<binding>`` or
            ``MCP_NOTES_DB_ALLOW_PLAINTEXT``; the message never contains a password.
    """
    raw = env.get("MCP_NOTES_DB", "").strip()
    if raw:
        if "://" in raw or raw.lower().startswith(("postgres:", "postgresql:")):
            return postgres_tls(parse_postgres_url(raw, "MCP_NOTES_DB"), env)
        return Path(raw)
    binding = _postgres_binding(service_bindings(env))
    return postgres_tls(binding, env) if binding is not None else Path("data/notes.db")


def postgres_tls(config: PostgresConfig, env: Mapping[str, str]) -> PostgresConfig:
    """Settle how ``config`` protects the connection: verified TLS unless plaintext is explicitly allowed.

    - no ``sslmode``: ``verify-full``;
    - ``verify-ca``/``verify-full`` without a CA (``sslrootcert``, or the binding's PEM): the system's
      CA bundle (`tools.system_ca_file`: ``$SSL_CERT_FILE``, else OpenSSL's default file);
    - ``require`` (TLS, certificate unchecked) is kept: the URL asked for it;
    - ``disable``/``allow``/``prefer`` may fall back to plaintext: refused unless
      ``MCP_NOTES_DB_ALLOW_PLAINTEXT=true``, which is accepted only for a database on loopback.

    Raises:
        ConfigError: naming the setting the database came from, or ``MCP_NOTES_DB_ALLOW_PLAINTEXT``.
    """
    setting = config.source
    allow_plaintext = _plaintext_allowed(env)
    if allow_plaintext and not is_loopback_host(config.host):
        raise ConfigError(PLAINTEXT_SETTING, "is accepted only for a database on loopback (127.0.0.1, ::1, "
                                             "localhost); this one is elsewhere: use TLS")
    params = dict(config.params)
    sslmode = params.setdefault("sslmode", "verify-full")
    if sslmode in _PLAINTEXT_MODES and not allow_plaintext:
        raise ConfigError(setting, f"sslmode={sslmode} may connect without TLS; use verify-full (the default), "
                                   f"verify-ca or require, or {PLAINTEXT_SETTING}=true for a database on loopback")
    if sslmode in _VERIFYING and "sslrootcert" not in params and config.ssl_root_cert_pem is None:
        ca_file = system_ca_file(env)
        if ca_file is None:
            raise ConfigError(setting, "has no sslrootcert and no system CA bundle was found to verify the "
                                       "database's certificate: set SSL_CERT_FILE or give sslrootcert=<file>")
        params["sslrootcert"] = ca_file
    return replace(config, params=tuple(sorted(params.items())))


def _plaintext_allowed(env: Mapping[str, str]) -> bool:
    raw = env.get(PLAINTEXT_SETTING, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(PLAINTEXT_SETTING, f"must be true or false, got {raw[:20]!r}")


def parse_postgres_url(url: str, setting: str) -> PostgresConfig:
    """Parse ``postgresql://user:password@host:port/dbname?sslmode=...`` (libpq's URI form, one host).

    Errors name ``setting`` and the part at fault, never the URL itself (it may hold a password).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(setting, "is not a valid URL") from None
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(setting, "must be a SQLite file path or a postgresql:// URL")
    if parts.fragment:
        raise ConfigError(setting, "must not have a #fragment")
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if "," in hostport:
        raise ConfigError(setting, "names several hosts; give one")
    try:
        host, port = parts.hostname or "", parts.port or 5432
    except ValueError:
        raise ConfigError(setting, "has an invalid port") from None
    if not host:
        raise ConfigError(setting, "has no host")
    if not 1 <= port <= 65535:
        raise ConfigError(setting, "has an invalid port")
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _URL_PARAMS:
            known = ", ".join(sorted(_URL_PARAMS))
            raise ConfigError(setting, f"has an unsupported parameter {key[:40]!r} (known: {known})")
        params[key] = value
    if "sslmode" in params and params["sslmode"] not in _SSLMODES:
        raise ConfigError(setting, f"sslmode must be one of {', '.join(_SSLMODES)}")
    user = unquote(user)
    return PostgresConfig(
        host=host,
        port=port,
        dbname=unquote(parts.path.lstrip("/")) or user or "postgres",
        user=user,
        password=unquote(password),
        params=tuple(sorted(params.items())),
        source=setting,
    )


def _postgres_binding(services: Mapping[str, object]) -> PostgresConfig | None:
    """The one PostgreSQL binding (label ``postgresql-db`` or tag ``postgresql``) in ``VCAP_SERVICES`` or
    under ``SERVICE_BINDING_ROOT`` (`service_bindings`), if any; errors name where it came from."""
    found = [
        b
        for label, bindings in services.items()
        if isinstance(bindings, list)
        for b in bindings
        if isinstance(b, dict) and (label == PG_BINDING_LABEL or "postgresql" in (b.get("tags") or []))
    ]
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(repr(str(b.get("name", "?"))) for b in found)
        origin = "SERVICE_BINDING_ROOT" if all("source" in b for b in found) else "VCAP_SERVICES"
        raise ConfigError(origin, f"has {len(found)} PostgreSQL bindings ({names}); bind one")
    name = str(found[0].get("name", PG_BINDING_LABEL))
    # A mounted binding (SERVICE_BINDING_ROOT/<name>) names its folder; VCAP_SERVICES its entry.
    source = str(found[0].get("source") or "VCAP_SERVICES")
    where = str(found[0].get("source") or f"VCAP_SERVICES[{name}].credentials")
    creds = found[0].get("credentials")
    if not isinstance(creds, dict):
        raise ConfigError(source, f"binding {name!r} has no credentials object")

    def text(key: str) -> str | None:
        value = creds.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str | int):
            raise ConfigError(where, f"{key} must be a string")
        return str(value)

    if text("hostname") and text("username") and text("password") is not None:
        # The separate fields first: a password with reserved characters may sit unescaped in `uri`.
        port_text = text("port") or "5432"
        if not _digits(port_text) or not 1 <= int(port_text) <= 65535:
            raise ConfigError(where, "port must be a TCP port number")
        config = PostgresConfig(
            host=text("hostname") or "",
            port=int(port_text),
            dbname=text("dbname") or text("username") or "postgres",
            user=text("username") or "",
            password=text("password") or "",
            source=source,
        )
    elif text("uri"):
        try:
            config = parse_postgres_url(text("uri") or "", where + ".uri")
        except ConfigError as exc:
            raise ConfigError(source, str(exc)) from None
        config = replace(config, source=source)
    else:
        raise ConfigError(where, "needs uri, or hostname, username and password")
    root, cert, key = text("sslrootcert"), text("sslcert"), text("sslkey")
    for field_name, pem in (("sslrootcert", root), ("sslcert", cert), ("sslkey", key)):
        if pem is not None and "-----BEGIN " not in pem:
            raise ConfigError(where, f"{field_name} must be PEM text")
    if (cert is None) != (key is None):
        raise ConfigError(where, "sslcert and sslkey go together")
    params = dict(config.params)
    if root is not None:
        # Verify the server against the binding's CA; by name unless the binding gives an IP address
        # (server certificates rarely carry IP addresses).
        params["sslmode"] = "verify-ca" if _is_ip(config.host) else "verify-full"
        params.pop("sslrootcert", None)
    return replace(
        config,
        params=tuple(sorted(params.items())),
        ssl_root_cert_pem=root,
        ssl_cert_pem=cert,
        ssl_key_pem=key,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
