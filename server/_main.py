"""``python -m server [--dev]``: the only place that reads ``os.environ``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence

import uvicorn

from auth import AuthSettings, ConfigError, IssuerConfig

from ._app import create_app
from ._dev_issuer import DevIssuer, startup_banner
from ._logging import configure_logging
from ._settings import MCP_PATH, ServerSettings, is_loopback_host, load_server_settings

__all__ = ["main", "dev_settings"]

log = logging.getLogger("server")


def dev_settings(env: Mapping[str, str], base_url: str, issuer: DevIssuer) -> ServerSettings:
    """Settings for dev mode: trust only the embedded issuer, serve at ``base_url``."""
    resource_url = base_url + MCP_PATH
    auth = AuthSettings(
        issuers=(IssuerConfig(issuer=issuer.issuer, audiences=(issuer.server_client_id, resource_url)),),
        resource_url=resource_url,
        resource_name="Notes MCP server (dev)",
    )
    return load_server_settings(env, auth=auth, dev=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Start the server; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m server", description="Notes MCP server protected by OAuth")
    parser.add_argument("--dev", action="store_true", help="start with the embedded local issuer (no IAS tenant needed)")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    try:
        if args.dev:
            if env.get("VCAP_APPLICATION"):
                raise ConfigError("--dev", "refuses to run on Cloud Foundry (VCAP_APPLICATION is set)")
            host = env.get("HOST", "").strip() or "127.0.0.1"
            if not is_loopback_host(host):
                raise ConfigError("HOST", f"--dev binds only to a loopback address, got {host!r}")
            preliminary = load_server_settings({**env, "HOST": host}, auth=_placeholder_auth(), dev=True)
            sock = _bind(host, preliminary.port)
            url_host = f"[{host.strip('[]')}]" if ":" in host else host
            base_url = f"http://{url_host}:{sock.getsockname()[1]}"
            issuer = DevIssuer(base_url)
            settings = dev_settings({**env, "HOST": host, "PORT": str(sock.getsockname()[1])}, base_url, issuer)
            configure_logging(settings.log_level)
            app = create_app(settings, extra_routes=[*issuer.well_known_routes(), issuer.mount()])
        else:
            settings = load_server_settings(env)
            configure_logging(settings.log_level)
            sock = _bind(settings.host, settings.port)
            app = create_app(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 2
    if settings.dev:
        print(startup_banner(base_url, settings.auth.resource_url), file=sys.stderr, flush=True)
    log.info("listening on %s:%d", settings.host, sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,  # the audit line per tool call is the access log that matters
        timeout_graceful_shutdown=8,  # Cloud Foundry allows ~10 s after SIGTERM
        lifespan="on",
    )
    _GracefulServer(config).run(sockets=[sock])
    return 0


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
