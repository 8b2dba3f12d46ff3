"""``python -m server [--dev [--mtls]]``: the only place that reads ``os.environ``.

``--dev --mtls`` serves everything over HTTPS on the one port, with optional client
certificates: a CA, a server certificate and the ``dev-x509`` client certificate are generated
at start into ``MCP_DEV_CERTS_DIR`` (default ``data/dev-certs``), the dev issuer authenticates
``dev-x509`` by its certificate (``tls_client_auth``) and binds tokens to the presented
certificate, and the server checks certificate-bound tokens (``cert_binding="if-bound"``).

``MCP_DEV_ISSUER=http://127.0.0.1:<port>`` makes ``--dev`` trust a standalone local issuer
(``btp-mcp-issuer``, `auth.testing`) instead of mounting its own, so several instances accept
one token: audience ``mcp-dev-server`` or the instance's URL (if the issuer lists it as a resource).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import ssl
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import uvicorn
from uvicorn.config import STARTUP_FAILURE

from auth import AuthSettings, ConfigError, IssuerConfig, JWTVerifier
from auth.downstream import DownstreamSettings
from tools import PostgresConfig, SQLiteStore

from ._app import create_app
from ._dev_issuer import (
    DEFAULT_CLIENTS,
    DEV_CLIENTS_SETTING,
    DEV_ISSUER_SETTING,
    DevClient,
    DevIssuer,
    parse_dev_clients,
    startup_banner,
)
from ._dev_onward import DevOnward, dev_onward, onward_applications, onward_clients
from ._devcerts import DEV_CERTS_DIR, DevCerts, generate_dev_certs
from ._logging import configure_logging
from ._otel_settings import TelemetrySettings
from ._settings import MCP_PATH, ServerSettings, is_loopback_host, load_server_settings
from ._shm_buckets import WorkerBuckets
from ._tls import check_tls_files, uvicorn_tls_options
from ._workers import detected_workers, run_workers

__all__ = ["main", "dev_settings", "auth_summary", "server_options"]

log = logging.getLogger("server")


DEV_X509_APIS = ("api_read_access", "api_write_access")
DEV_AUDIENCE = "mcp-dev-server"


def shared_dev_issuer(env: Mapping[str, str], *, mtls: bool) -> str | None:
    """The standalone issuer ``--dev`` trusts instead of its own (``MCP_DEV_ISSUER``), or None (pure).

    Raises:
        ConfigError: naming ``MCP_DEV_ISSUER`` (not a loopback http(s) URL, or with ``--mtls``), or
            ``MCP_DEV_CLIENTS`` (the shared issuer has its own clients).
    """
    url = env.get(DEV_ISSUER_SETTING, "").strip().rstrip("/")
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        parts, host = None, ""
    if parts is None or parts.scheme not in ("http", "https") or not is_loopback_host(host) or (
            parts.query or parts.fragment or parts.username):
        raise ConfigError(DEV_ISSUER_SETTING, f"must be a local issuer's http URL on a loopback address, got {url!r}")
    if mtls:
        raise ConfigError(DEV_ISSUER_SETTING, "is not used with --mtls (the embedded issuer does X.509)")
    if env.get(DEV_CLIENTS_SETTING, "").strip():
        raise ConfigError(
            DEV_CLIENTS_SETTING, f"is not used with {DEV_ISSUER_SETTING}: give the clients to that issuer (--client)"
        )
    return url


def dev_settings(
    env: Mapping[str, str],
    base_url: str,
    issuer: DevIssuer | str,
    *,
    cert_binding: Literal["off", "if-bound", "required"] = "off",
    downstreams: DownstreamSettings | None = None,
) -> ServerSettings:
    """Settings for dev mode: trust only the dev issuer, serve at ``base_url``.

    ``issuer`` is the embedded `DevIssuer`, or the URL of a shared standalone issuer
    (``MCP_DEV_ISSUER``), whose tokens must then name ``mcp-dev-server`` or this server's URL.
    """
    resource_url = base_url + MCP_PATH
    if isinstance(issuer, str):
        issuer_url, audience = issuer, DEV_AUDIENCE
    else:
        issuer_url, audience = issuer.issuer, issuer.server_client_id
    auth = AuthSettings(
        issuers=(IssuerConfig(issuer=issuer_url, audiences=(audience, resource_url)),),
        resource_url=resource_url,
        resource_name="Notes MCP server (dev)",
        cert_binding=cert_binding,
    )
    return load_server_settings(env, auth=auth, dev=True, downstreams=downstreams)


def auth_summary(auth: AuthSettings) -> dict[str, Any]:
    """What the server trusts, for the one start-up log line (no secrets: ids and URLs only)."""
    return {
        "issuers": [
            {
                "issuer": i.issuer,
                "profile": i.profile,
                "audiences": list(i.audiences),
                "jwks_uri": i.jwks_uri or "discovered",
                **({"domains": list(i.domains)} if i.domains else {}),
            }
            for i in auth.issuers
        ],
        "resource_url": auth.resource_url,
        "profiles": sorted({i.profile for i in auth.issuers}),
        "cert_binding": auth.cert_binding,
        "trust_xfcc": auth.trust_forwarded_client_cert,
        **({"xfcc_gateway": auth.forwarded_client_cert_gateway} if auth.forwarded_client_cert_gateway else {}),
        "ca_file": auth.ca_file,
    }


def dev_ssl_context(ca_file: str | Path) -> ssl.SSLContext:
    """A verifying client context that trusts only the dev CA (for the server's own JWKS fetches)."""
    return ssl.create_default_context(cafile=str(ca_file))


def dev_jwks_client(ca_file: str | Path, timeout: float) -> httpx.AsyncClient:
    """The verifier's HTTP client under ``--dev --mtls``: it fetches the keys from this very server.

    No keep-alive: an idle TLS connection from the server to itself would hold up shutdown
    (uvicorn waits for the peer's close_notify, which nobody reads), and key fetches are rare.
    """
    return httpx.AsyncClient(
        verify=dev_ssl_context(ca_file),
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_keepalive_connections=0),
        follow_redirects=False,
        trust_env=False,
    )


def _tls_options(settings: ServerSettings) -> dict[str, Any]:
    """uvicorn TLS options for ``MCP_TLS_*``, after loading the files once as uvicorn will."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return {}
    fault = check_tls_files(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    if fault is not None:
        name = {"cert": "MCP_TLS_CERT", "key": "MCP_TLS_KEY", "ca": "MCP_TLS_CLIENT_CA"}[fault]
        raise ConfigError(name, "OpenSSL cannot load it (or the key does not match the certificate)")
    return uvicorn_tls_options(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Start the server; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m server", description="Notes MCP server protected by OAuth")
    parser.add_argument(
        "--dev", action="store_true", help="start with the embedded local issuer (no IAS tenant needed)"
    )
    parser.add_argument(
        "--mtls",
        action="store_true",
        help="with --dev: serve HTTPS with optional client certificates (generated into MCP_DEV_CERTS_DIR, "
        f"default {DEV_CERTS_DIR}) and certificate-bound tokens",
    )
    args = parser.parse_args(argv)
    if args.mtls and not args.dev:
        parser.error("--mtls needs --dev (in production set MCP_TLS_CERT, MCP_TLS_KEY and MCP_TLS_CLIENT_CA)")
    env = os.environ if env is None else env
    certs: DevCerts | None = None
    extra_clients: dict[str, DevClient] = {}
    shared: str | None = None
    verifier: JWTVerifier | None = None
    onward: DevOnward | None = None
    tls: dict[str, Any] = {}
    telemetry: Any = None
    metrics_port: int | None = None
    workers = 1  # --dev: one process (the dev issuer keeps its keys, codes and clients in memory)
    app: Any = None
    try:
        if args.dev:
            if env.get("VCAP_APPLICATION"):
                raise ConfigError("--dev", "refuses to run on Cloud Foundry (VCAP_APPLICATION is set)")
            for name in ("MCP_TLS_CERT", "MCP_TLS_KEY", "MCP_TLS_CLIENT_CA"):
                if env.get(name, "").strip():
                    raise ConfigError(name, "is not used with --dev (--dev --mtls generates its own certificates)")
            host = env.get("HOST", "").strip() or "127.0.0.1"
            if not is_loopback_host(host):
                raise ConfigError("HOST", f"--dev binds only to a loopback address, got {host!r}")
            shared = shared_dev_issuer(env, mtls=args.mtls)
            preliminary = load_server_settings({**env, "HOST": host}, auth=_placeholder_auth(), dev=True,
                                               downstreams=DownstreamSettings())
            if args.mtls:
                certs_dir = Path(env.get("MCP_DEV_CERTS_DIR", "").strip() or DEV_CERTS_DIR)
                try:
                    certs = generate_dev_certs(certs_dir)
                except OSError as exc:
                    problem = f"cannot write {str(certs_dir)!r}: {exc.strerror}"
                    raise ConfigError("MCP_DEV_CERTS_DIR", problem) from None
            sock = _bind(host, preliminary.port)
            url_host = f"[{host.strip('[]')}]" if ":" in host else host
            base_url = f"{'https' if certs else 'http'}://{url_host}:{sock.getsockname()[1]}"
            dev_env = {**env, "HOST": host, "PORT": str(sock.getsockname()[1])}
            extra_clients = parse_dev_clients(
                env.get(DEV_CLIENTS_SETTING, ""), reserved=[*DEFAULT_CLIENTS, *onward_clients()]
            )
            telemetry = _telemetry(preliminary.telemetry)
            routes: list[Any] = []
            if shared is not None:
                settings = dev_settings(dev_env, base_url, shared)
            elif certs is None:
                # Onward calls: the server's own client, the example backend and a Destination service look-alike.
                issuer = DevIssuer(base_url, extra_clients={**onward_clients(), **extra_clients},
                                   applications=onward_applications(base_url))
                onward = dev_onward(base_url, issuer.issuer, issuer.token_endpoint, env)
                settings = dev_settings(dev_env, base_url, issuer, downstreams=onward.downstreams)
                routes = [*issuer.well_known_routes(), issuer.mount(), *onward.routes]
            else:
                x509_client = DevClient(None, DEV_X509_APIS, certificate_thumbprint=certs.client_thumbprint)
                issuer = DevIssuer(base_url, extra_clients={**extra_clients, certs.client_id: x509_client})
                settings = dev_settings(dev_env, base_url, issuer, cert_binding="if-bound")
                jwks_client = dev_jwks_client(certs.ca, settings.auth.http_timeout_s)
                verifier = JWTVerifier(settings.auth, client=jwks_client,
                                       observer=telemetry.observer if telemetry else None)
                tls = uvicorn_tls_options(certs.server_cert, certs.server_key, certs.ca)
                routes = [*issuer.well_known_routes(), issuer.mount()]
            audit = configure_logging(settings.log_level)
            app = create_app(settings, verifier=verifier, extra_routes=routes, audit=audit, telemetry=telemetry)
        else:
            for name in (DEV_CLIENTS_SETTING, DEV_ISSUER_SETTING):
                if env.get(name, "").strip():
                    raise ConfigError(name, "is only used with --dev")
            settings = load_server_settings(env)
            tls = _tls_options(settings)
            workers = worker_count(settings)
            if workers == 1:  # else each worker opens its own telemetry and builds its own app after the fork
                telemetry = _telemetry(settings.telemetry)
            elif settings.telemetry.enabled:
                _open_telemetry()  # the otel extra is there: said now, not by every worker as it starts
            audit = configure_logging(settings.log_level)
            _check_notes_db(settings)  # once, before any worker: a path that cannot be written stops here
            sock = _bind(settings.host, settings.port)
            if workers == 1:
                app = create_app(settings, audit=audit, telemetry=telemetry)
        metrics_port = telemetry.serve_metrics() if telemetry is not None else None
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 2
    log.info("auth configuration", extra={"audit": auth_summary(settings.auth)})
    if settings.telemetry.enabled:
        log.info("telemetry", extra={"audit": telemetry_summary(settings.telemetry, metrics_port)})
    if settings.dev:
        banner: dict[str, Any] = {"extra_clients": extra_clients, "shared_issuer": shared}
        if certs is not None:
            banner |= {
                "ca_file": str(certs.ca.resolve()),
                "client_cert_file": str(certs.client_cert.resolve()),
                "client_key_file": str(certs.client_key.resolve()),
                "x509_client_id": certs.client_id,
            }
        print(startup_banner(base_url, settings.auth.resource_url, **banner), file=sys.stderr, flush=True)
        if onward is not None:
            print(onward.banner, file=sys.stderr, flush=True)
    log.info("listening on %s:%d%s with %d worker(s)", settings.host, sock.getsockname()[1], " (TLS)" if tls else "",
             workers)
    if workers > 1:
        return run_workers(workers, _worker(settings, audit, tls, sock), on_stop=sock.close)
    # The dev verifier's HTTP client is not closed: its connections end with the process.
    try:
        return _serve(app, tls, sock)
    finally:
        if telemetry is not None:
            telemetry.shutdown()  # the last spans and metrics go out before the process ends


def _check_notes_db(settings: ServerSettings) -> None:
    """Create (or migrate) the SQLite notes file now, so a path that cannot be written stops the start
    with a message naming the setting (PostgreSQL connects later: an outage there is not a start error).

    Raises:
        ConfigError: ``MCP_NOTES_DB``, with the operating system's reason (a read-only file system, say).
    """
    if isinstance(settings.notes_db, PostgresConfig):
        return
    try:
        SQLiteStore(Path(settings.notes_db))
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = str(settings.notes_db)
        raise ConfigError("MCP_NOTES_DB", f"cannot open the notes database {where!r}: {reason}") from None


def _serve(app: Any, tls: Mapping[str, Any], sock: socket.socket) -> int:
    server = _GracefulServer(uvicorn.Config(app, **server_options(tls)))
    server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE


def worker_count(settings: ServerSettings, detected: Callable[[], int] = detected_workers) -> int:
    """``MCP_WORKERS``, else the CPUs the container may use; 1 with a Prometheus endpoint, which serves
    one process's metrics (an explicit count above 1 then stops the start).

    Raises:
        ConfigError: ``MCP_WORKERS`` above 1 with ``OTEL_METRICS_EXPORTER=prometheus``.
    """
    if settings.telemetry.prometheus is not None:
        if settings.workers is not None and settings.workers > 1:
            raise ConfigError("MCP_WORKERS", "the Prometheus endpoint (OTEL_METRICS_EXPORTER=prometheus) serves one "
                                             "process's metrics: use one worker, or export metrics over OTLP")
        return 1
    return settings.workers or detected()


def _worker(settings: ServerSettings, audit: Any, tls: Mapping[str, Any], sock: socket.socket) -> Callable[[int], int]:
    """What each worker runs after the fork: its own telemetry (threads do not survive a fork), its own app."""
    limits = settings.rate_limits
    leases = WorkerBuckets(2 * limits.max_clients) if limits.enabled and limits.shared == "workers" else None

    def serve(index: int) -> int:
        telemetry = _telemetry(worker_telemetry(settings.telemetry, index))
        try:
            return _serve(create_app(settings, audit=audit, telemetry=telemetry, rate_leases=leases), tls, sock)
        finally:
            if telemetry is not None:
                telemetry.shutdown()

    return serve


def worker_telemetry(settings: TelemetrySettings, index: int) -> TelemetrySettings:
    """A worker's telemetry settings: a ``service.instance.id`` of its own, so that the workers' metric
    streams stay apart (``<configured id or host name>/worker-<index>``)."""
    attributes = dict(settings.resource_attributes)
    base = attributes.get("service.instance.id") or socket.gethostname()
    attributes["service.instance.id"] = f"{base}/worker-{index}"
    return replace(settings, resource_attributes=tuple(attributes.items()))


def _telemetry(settings: TelemetrySettings) -> Any:
    """The process's `server._otel.Telemetry` (its tracer provider made the global one), or None when off.

    The OpenTelemetry SDK is imported only here, and only when a setting turns telemetry on.
    """
    if not settings.enabled:
        return None
    telemetry = _open_telemetry()(settings)
    if telemetry is not None:
        telemetry.install()
    return telemetry


def _open_telemetry() -> Callable[[TelemetrySettings], Any]:
    """``server._otel.open_telemetry`` (importing the OpenTelemetry SDK).

    Raises:
        ConfigError: the otel extra is not installed.
    """
    try:
        from ._otel import open_telemetry
    except ImportError as exc:
        raise ConfigError("OTEL_*", f"telemetry needs the otel extra (pip install '.[otel]'): {exc.name}") from None
    return open_telemetry


def telemetry_summary(settings: TelemetrySettings, metrics_port: int | None) -> dict[str, Any]:
    """Where telemetry goes, for the start-up log line (endpoints only: headers may hold keys)."""
    return {
        "service_name": settings.service_name,
        "traces": settings.traces_endpoint or "off",
        "metrics": settings.metrics_endpoint or "off",
        "prometheus": f"{settings.prometheus[0]}:{metrics_port}/metrics" if settings.prometheus else "off",
    }


def server_options(tls: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments for serving (``tls``: from `uvicorn_tls_options`).

    httptools parses HTTP/1.1 in C and uvloop runs the event loop on libuv: together they
    serve about twice the requests per CPU second of h11 on asyncio (``bench/bench_server.py``).
    Both are wheels the Cloud Foundry buildpack installs from ``requirements.txt``. TLS keeps
    the protocol class ``tls`` names (it adds the client certificate to the ASGI scope).
    """
    return {
        "http": "httptools",
        "loop": "uvloop",
        "log_config": None,
        "access_log": False,  # the audit line per tool call is the access log that matters
        "timeout_graceful_shutdown": 8,  # Cloud Foundry allows ~10 s after SIGTERM
        "lifespan": "on",
        **(tls or {}),
    }


class _GracefulServer(uvicorn.Server):
    """Drain in-flight requests on SIGTERM/SIGINT, then exit 0.

    uvicorn's own handler re-raises the signal after draining, so a clean stop on
    ``cf stop`` or a rolling update would be reported as a kill.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _placeholder_auth() -> AuthSettings:
    # Only to parse HOST/PORT before the real issuer URL (which needs the port) exists.
    url = "http://127.0.0.1/mcp"
    return AuthSettings(issuers=(IssuerConfig(issuer="http://127.0.0.1", audiences=("x",)),), resource_url=url)
