"""``btp-mcp-issuer`` / ``python -m auth.testing``: the local issuer as a command, on 127.0.0.1.

    btp-mcp-issuer [--port 8090] [--key-file .mcp-issuer/signing-key.pem]
                   [--audience my-api] [--resource http://127.0.0.1:9000/mcp]
                   [--client my-agent:my-secret:api_read_access+api_write_access]

Every flag has an environment variable (flags win). Exit status: 0 after SIGTERM/SIGINT, 2 for a
configuration error or an address that cannot be bound.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import ConfigError
from ._issuer import Issuer
from ._registry import (
    DEFAULT_AUDIENCE,
    DEFAULT_CLIENTS,
    Audience,
    RegisteredClient,
    parse_clients,
    parse_resources,
)
from ._server import LocalIssuer, is_loopback_host

__all__ = ["main", "parse_options", "banner", "CommandOptions", "DEFAULT_PORT", "DEFAULT_KEY_FILE"]

DEFAULT_PORT = 8090
DEFAULT_KEY_FILE = ".mcp-issuer/signing-key.pem"

ENVIRONMENT = f"""\
environment (flags win):
  MCP_ISSUER_HOST            --host (default 127.0.0.1)
  MCP_ISSUER_PORT            --port (default {DEFAULT_PORT}; 0: any free port)
  MCP_ISSUER_KEY_FILE        --key-file (default {DEFAULT_KEY_FILE}; created on first start)
  MCP_ISSUER_CLIENTS         --client, comma-separated: id:secret:group+group,...
  MCP_ISSUER_AUDIENCES       --audience, comma-separated (default {DEFAULT_AUDIENCE})
  MCP_ISSUER_RESOURCES       --resource, comma-separated: [audience=]URL,...
  MCP_ISSUER_TOKEN_LIFETIME  --lifetime in seconds (default 3600)
  MCP_ISSUER_APP_TID         --app-tid (default: derived from the key)
"""


@dataclass(frozen=True, slots=True)
class CommandOptions:
    """The command's settings, parsed at the edge."""

    host: str
    port: int
    key_file: Path
    clients: tuple[RegisteredClient, ...]
    audiences: tuple[Audience, ...]
    token_lifetime: int
    app_tid: str | None
    url_file: Path | None
    allow_non_loopback: bool


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="btp-mcp-issuer",
        description="A local IAS look-alike for any MCP server or API: discovery, keys and client-credentials "
        "tokens for the audiences, RFC 8707 resources and clients you give it, and exchange of its own tokens "
        "(JWT bearer, RFC 8693). For development and tests only.",
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="address to bind; loopback only unless --allow-non-loopback")
    parser.add_argument("--port", help=f"port to bind (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--key-file", help="the RSA signing key (PEM); created there on first start")
    parser.add_argument(
        "--client", action="append", default=[], metavar="ID:SECRET:GROUP+GROUP",
        help="a client and its API permission groups (ias_apis); repeatable",
    )
    parser.add_argument(
        "--no-default-clients", action="store_true",
        help="leave out the public dev clients dev-full and dev-read",
    )
    parser.add_argument(
        "--audience", action="append", default=[], metavar="CLIENT_ID",
        help=f"an application tokens are for (aud); the first is the default (default {DEFAULT_AUDIENCE}); repeatable",
    )
    parser.add_argument(
        "--resource", action="append", default=[], metavar="[AUDIENCE=]URL",
        help="an RFC 8707 resource (a server's MCP endpoint URL) naming the first audience, or the one given; "
        "repeatable",
    )
    parser.add_argument("--lifetime", metavar="SECONDS", help="token lifetime (default 3600)")
    parser.add_argument("--app-tid", help="tenant id in every token (default: derived from the key)")
    parser.add_argument("--url-file", help="write the issuer URL to this file once serving (for scripts, --port 0)")
    parser.add_argument(
        "--allow-non-loopback", action="store_true",
        help="bind a non-loopback address anyway (plain HTTP, public test credentials: never on a shared network)",
    )
    return parser


def _pick(flag: str | None, env: Mapping[str, str], name: str, flag_name: str) -> tuple[str | None, str]:
    """The flag's value, else the environment's; with the name to blame."""
    if flag is not None:
        return flag, flag_name
    value = env.get(name, "").strip()
    return (value or None), name


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _integer(value: str | None, setting: str, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(setting, f"must be a whole number, got {value[:40]!r}") from None
    if not lo <= number <= hi:
        raise ConfigError(setting, f"must be between {lo} and {hi}, got {number}")
    return number


def parse_options(args: argparse.Namespace, env: Mapping[str, str]) -> CommandOptions:
    """Settings from parsed flags and the environment (pure).

    Raises:
        ConfigError: naming the flag or variable at fault.
    """
    host, host_setting = _pick(args.host, env, "MCP_ISSUER_HOST", "--host")
    host = host or "127.0.0.1"
    if not args.allow_non_loopback and not is_loopback_host(host):
        raise ConfigError(
            host_setting, f"the local issuer binds only to a loopback address, got {host!r} (--allow-non-loopback)"
        )
    port_text, port_setting = _pick(args.port, env, "MCP_ISSUER_PORT", "--port")
    port = _integer(port_text, port_setting, DEFAULT_PORT, 0, 65535)
    key_text, _ = _pick(args.key_file, env, "MCP_ISSUER_KEY_FILE", "--key-file")
    lifetime_text, lifetime_setting = _pick(args.lifetime, env, "MCP_ISSUER_TOKEN_LIFETIME", "--lifetime")
    lifetime = _integer(lifetime_text, lifetime_setting, 3600, 1, 86_400)
    app_tid, _ = _pick(args.app_tid, env, "MCP_ISSUER_APP_TID", "--app-tid")

    client_setting = "--client" if args.client else "MCP_ISSUER_CLIENTS"
    client_text = ",".join(args.client) if args.client else env.get("MCP_ISSUER_CLIENTS", "")
    defaults = () if args.no_default_clients else DEFAULT_CLIENTS
    extra = parse_clients(client_text, setting=client_setting, reserved=[c.client_id for c in defaults])
    clients = (*defaults, *extra.values())
    if not clients:
        raise ConfigError(client_setting, "no clients: give at least one (or keep the default dev clients)")

    audience_setting = "--audience" if args.audience else "MCP_ISSUER_AUDIENCES"
    audience_ids = list(args.audience) or _csv(env.get("MCP_ISSUER_AUDIENCES")) or [DEFAULT_AUDIENCE]
    resource_setting = "--resource" if args.resource else "MCP_ISSUER_RESOURCES"
    resource_specs = list(args.resource) or _csv(env.get("MCP_ISSUER_RESOURCES"))
    if len(set(audience_ids)) != len(audience_ids):
        raise ConfigError(audience_setting, "an audience is listed twice")
    try:
        resources = parse_resources(resource_specs, audience_ids, setting=resource_setting)
        audiences = tuple(Audience(a, resources[a]) for a in audience_ids)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(audience_setting, str(exc)) from None
    return CommandOptions(
        host=host,
        port=port,
        key_file=Path(key_text or DEFAULT_KEY_FILE),
        clients=tuple(clients),
        audiences=audiences,
        token_lifetime=lifetime,
        app_tid=app_tid,
        url_file=Path(args.url_file) if args.url_file else None,
        allow_non_loopback=bool(args.allow_non_loopback),
    )


def banner(issuer: Issuer, key_file: Path | None = None) -> str:
    """What the issuer serves and how to use it: trust it, get a token (no secret but the public dev ones)."""
    default = issuer.audiences[0]
    lines = [
        f"Local issuer (IAS look-alike): {issuer.url}",
        f"  discovery:   {issuer.discovery_url}",
    ]
    if key_file is not None:
        lines.append(f"  signing key: {key_file.resolve()} (kid {issuer.kid}); kept across restarts")
    lines.append("Audiences (a token's aud; without resource, the first):")
    for audience in issuer.audiences:
        resources = [*audience.resources, *sorted(audience.names())]
        lines.append(f"  {audience.client_id}  resource = {' | '.join(resources)}")
    shown = [f"{c.client_id} ({'+'.join(c.permissions) or 'no groups'})" for c in issuer.clients.values()]
    lines += [
        "Clients: " + ", ".join(shown),
        "Trust it in a server:",
        f"  MCP_AUTH_ISSUER={issuer.url} MCP_AUTH_AUDIENCE={default.client_id}",
        f"  python -m server --dev: MCP_DEV_ISSUER={issuer.url}",
        "Get a token:",
    ]
    public = {c.client_id: c.secret for c in DEFAULT_CLIENTS}
    candidates = sorted(issuer.clients.values(), key=lambda c: c.client_id != "dev-read")  # read-only first
    client = next((c for c in candidates if public.get(c.client_id) == c.secret), None)
    credentials = f"{client.client_id}:{client.secret}" if client else f"{next(iter(issuer.clients))}:\"$SECRET\""
    resource = f" -d resource={shlex.quote(default.resources[0])}" if default.resources else ""
    lines.append(
        f"  curl -s -u {credentials} -d grant_type=client_credentials{resource} {issuer.token_endpoint}"
    )
    return "\n".join(lines)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".url-", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the command; returns the exit status."""
    env = os.environ if env is None else env
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = parse_options(args, env)
        runner = LocalIssuer(
            host=options.host,
            port=options.port,
            clients=options.clients,
            audiences=options.audiences,
            key_file=options.key_file,
            token_lifetime=options.token_lifetime,
            app_tid=options.app_tid,
            allow_non_loopback=options.allow_non_loopback,
        )
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        issuer = runner.start()
    except ValueError as exc:  # the key file
        print(f"configuration error: --key-file: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(banner(issuer, options.key_file), file=sys.stderr, flush=True)
        if options.url_file is not None:
            _write_atomically(options.url_file, issuer.url + "\n")
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        runner.stop()
        if options.url_file is not None:
            with contextlib.suppress(OSError):
                options.url_file.unlink()
    return 0
