"""The server's one frozen settings object: the auth layer's settings plus what serving needs."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from auth import AuthSettings, ConfigError, load_settings

__all__ = ["ServerSettings", "load_server_settings", "MCP_PATH"]

MCP_PATH = "/mcp"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything `create_app` and ``python -m server`` need."""

    auth: AuthSettings
    host: str = "127.0.0.1"
    port: int = 8080
    notes_db: Path = Path("data/notes.db")
    allowed_hosts: tuple[str, ...] = ()  # Host header values accepted (421 otherwise)
    allowed_origins: tuple[str, ...] = ()  # Origin header values accepted (403 otherwise)
    max_body_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    dev: bool = False
    tls_cert_file: Path | None = None  # serve HTTPS with this certificate (MCP_TLS_CERT)
    tls_key_file: Path | None = None  # and this key (MCP_TLS_KEY)
    tls_client_ca_file: Path | None = None  # accept client certificates from these CAs (MCP_TLS_CLIENT_CA)


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _port(env: Mapping[str, str], default: int) -> int:
    raw = env.get("PORT", "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ConfigError("PORT", f"must be a TCP port number, got {raw!r}")
    return int(raw)


def is_loopback_host(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    env: Mapping[str, str], *, auth: AuthSettings | None = None, dev: bool = False
) -> ServerSettings:
    """Parse the environment (and ``VCAP_*``) into `ServerSettings`.

    Args:
        env: ``os.environ`` or a dict.
        auth: pre-built auth settings (dev mode builds them for its embedded issuer).
        dev: dev mode defaults (loopback bind, port 8080).

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
        hosts += [u for u in uris if isinstance(u, str)]
    if is_loopback_host(host):
        hosts += [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"]
    hosts += _csv(env.get("MCP_ALLOWED_HOSTS"))
    origins = [origin_of(public), *_csv(env.get("MCP_ALLOWED_ORIGINS"))]
    if is_loopback_host(host):
        origins += [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    raw_body = env.get("MCP_MAX_BODY_BYTES", "").strip()
    if raw_body and (not raw_body.isdigit() or not 1024 <= int(raw_body) <= 64 * 1024 * 1024):
        raise ConfigError("MCP_MAX_BODY_BYTES", f"must be a byte count between 1024 and 67108864, got {raw_body!r}")
    level = env.get("MCP_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("MCP_LOG_LEVEL", f"must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    tls_cert, tls_key, tls_client_ca = _tls_files(env)
    return ServerSettings(
        auth=auth_settings,
        host=host,
        port=port,
        notes_db=Path(env.get("MCP_NOTES_DB", "").strip() or "data/notes.db"),
        allowed_hosts=tuple(dict.fromkeys(hosts)),
        allowed_origins=tuple(dict.fromkeys(origins)),
        max_body_bytes=int(raw_body) if raw_body else 1024 * 1024,
        log_level=level,
        dev=dev,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        tls_client_ca_file=tls_client_ca,
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
