"""``python -m auth``: a client-credentials token, and MCP tools, from the command line.

    python -m auth token [--resource R] [--json]
    python -m auth tools list URL
    python -m auth tools call URL NAME [--arg KEY=VALUE ...] [--json-args '{...}']

Credentials come from the environment (`credentials_from_env`): ``MCP_CLIENT_ID`` with
``MCP_CLIENT_SECRET`` or ``MCP_CLIENT_CERT``/``MCP_CLIENT_KEY``, and ``MCP_TOKEN_URL`` or
``MCP_ISSUER``; or the ``identity`` binding in ``VCAP_SERVICES``. The ``tools`` commands talk
to the server with the ``mcp`` SDK's client through `Httpx2BearerAuth`; with X.509 credentials
the same certificate is presented to the MCP server, so certificate-bound tokens work.

Exit status: 0 success; 1 the request failed (token endpoint, network, HTTP error, or the tool
reported an error); 2 configuration or usage error; 3 the server refused the tool (HTTP 403,
the required scope is shown). Only ``token`` prints a token; secrets are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx2

from .._errors import ConfigError
from ._credentials import (
    ClientCredentials,
    TokenRequestError,
    TokenRequestRejected,
    check_resource,
    client_ssl_context,
    credentials_from_env,
)
from ._provider import TokenProvider

__all__ = ["main", "build_parser", "parse_arguments", "challenge_params", "EXIT_OK", "EXIT_REQUEST",
           "EXIT_CONFIG", "EXIT_REFUSED"]

EXIT_OK, EXIT_REQUEST, EXIT_CONFIG, EXIT_REFUSED = 0, 1, 2, 3

ENVIRONMENT = """\
environment:
  MCP_CLIENT_ID        client id
  MCP_CLIENT_SECRET    client secret (HTTP Basic), or instead:
  MCP_CLIENT_CERT      client certificate, PEM text or file (mutual TLS, tls_client_auth)
  MCP_CLIENT_KEY       its private key, PEM text or file
  MCP_TOKEN_URL        token endpoint, or instead:
  MCP_ISSUER           issuer URL (the token endpoint is discovered)
  MCP_TOKEN_RESOURCE   default resource (RFC 8707), e.g. urn:sap:identity:application:provider:name:notes
  VCAP_SERVICES        used when MCP_CLIENT_ID is unset: the identity binding
                       (MCP_IDENTITY_SERVICE names it when there are several)
  MCP_CA_BUNDLE        default for --ca-bundle

exit status: 0 ok, 1 request failed, 2 configuration or usage error,
             3 tool refused by the server (HTTP 403; the required scope is shown)
"""


class _Failure(Exception):
    """A one-line error for stderr and the exit status that goes with it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- parsing


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--resource", metavar="R", help="resource (RFC 8707) to ask the token for "
                        "(default: $MCP_TOKEN_RESOURCE)")
    common.add_argument("--ca-bundle", metavar="FILE",
                        help="trust this CA bundle (PEM) instead of the system "
                        "store, for the token endpoint and the MCP server (default: $MCP_CA_BUNDLE)")
    common.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="give up after this long (default: 30)")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log token requests to stderr (never secrets or tokens)")
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m auth",
        description="Fetch a client-credentials access token, or list and call the tools of an MCP server "
        "with one.",
        epilog=ENVIRONMENT,
        formatter_class=formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{token,tools}")
    token = commands.add_parser("token", parents=[common], help="print an access token",
                                description="Print an access token for the configured client.",
                                epilog=ENVIRONMENT, formatter_class=formatter)
    token.add_argument("--json", action="store_true",
                       help="print the token response as JSON (access_token, token_type, expires_in, scope)")
    tools = commands.add_parser("tools", help="list or call the tools of an MCP server",
                                description="List or call the tools of an MCP server (streamable HTTP).",
                                epilog=ENVIRONMENT, formatter_class=formatter)
    actions = tools.add_subparsers(dest="action", required=True, metavar="{list,call}")
    listing = actions.add_parser("list", parents=[common], help="print the tools the token may use, as JSON",
                                 epilog=ENVIRONMENT, formatter_class=formatter)
    listing.add_argument("url", help="the MCP endpoint, e.g. https://notes.example.com/mcp")
    call = actions.add_parser("call", parents=[common], help="call a tool and print its result as JSON",
                              epilog=ENVIRONMENT, formatter_class=formatter)
    call.add_argument("url", help="the MCP endpoint, e.g. https://notes.example.com/mcp")
    call.add_argument("name", help="the tool's name")
    call.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                      help="one argument (repeatable); VALUE is read as JSON unless the tool's schema "
                      "declares a string, and stays text if it is not JSON")
    call.add_argument("--json-args", metavar="JSON",
                      help="the arguments as one JSON object (--arg overrides)")
    return parser


_JSON_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}


def _declared_types(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else {t for t in declared or () if isinstance(t, str)}
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key) or ():
            types |= _declared_types(option)
    return types & _JSON_TYPES


def parse_arguments(
    pairs: Sequence[str], json_args: str | None, input_schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The tool arguments from ``--json-args`` and ``--arg KEY=VALUE`` (pure).

    A value stays text when the schema declares the property a string (alone or with null);
    otherwise it is read as JSON (``5``, ``true``, ``[1]``, ``{"a": 1}``) and stays text when it is
    not JSON.

    Raises:
        ConfigError: ``--json-args`` is not a JSON object, or an ``--arg`` has no ``=``.
    """
    arguments: dict[str, Any] = {}
    if json_args is not None:
        try:
            parsed = json.loads(json_args)
        except ValueError:
            raise ConfigError("--json-args", "is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ConfigError("--json-args", "must be a JSON object")
        arguments.update(parsed)
    properties = (input_schema or {}).get("properties") or {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key:
            raise ConfigError("--arg", f"needs KEY=VALUE, got {pair[:40]!r}")
        types = _declared_types(properties.get(key)) if isinstance(properties, dict) else set()
        if types and types <= {"string", "null"}:
            arguments[key] = raw
            continue
        try:
            arguments[key] = json.loads(raw)
        except ValueError:
            arguments[key] = raw
    return arguments


_PARAM = re.compile(r'([A-Za-z0-9_!#$%&\'*+.^`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)')


def challenge_params(header: str) -> dict[str, str]:
    """The auth-params of a ``WWW-Authenticate: Bearer ...`` value (RFC 9110 §11.2), leniently."""
    _, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for key, value in _PARAM.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(key.lower(), value)
    return params


# --------------------------------------------------------------------------- running


class _Recorder(httpx2.AsyncBaseTransport):
    """Remembers the last HTTP answer and transport error, which the SDK client does not surface."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner
        self.last_status: int | None = None
        self.last_challenge = ""
        self.error: Exception | None = None

    def reset(self) -> None:
        self.last_status, self.last_challenge, self.error = None, "", None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except Exception as exc:
            self.error = exc
            raise
        self.last_status = response.status_code
        self.last_challenge = response.headers.get("www-authenticate", "")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("URL", f"must be an absolute http(s) URL, got {url[:80]!r}")
    return url


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _explain(exc: BaseException, recorder: _Recorder, url: str, what: str) -> _Failure:
    """Turn whatever the SDK client raised into one line and an exit status."""
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, _Failure):
            return leaf
        if isinstance(leaf, ConfigError):
            return _Failure(f"configuration error: {leaf}", EXIT_CONFIG)
        if isinstance(leaf, TokenRequestError):
            return _Failure(f"no token: {leaf}", EXIT_REQUEST)
    if recorder.last_status in (401, 403):
        params = challenge_params(recorder.last_challenge)
        error = params.get("error", "")
        if recorder.last_status == 403:
            scope = params.get("scope")
            need = f"; requires scope {scope}" if scope else ""
            return _Failure(f"{what} refused: HTTP 403 {error or 'forbidden'}{need}", EXIT_REFUSED)
        detail = params.get("error_description") or ("no token accepted" if not error else "")
        return _Failure(f"{what}: HTTP 401 {error} {detail}".rstrip(), EXIT_REQUEST)
    if recorder.error is not None:
        reason = f"{type(recorder.error).__name__}: {recorder.error}"
        return _Failure(f"cannot reach {url}: {reason}", EXIT_REQUEST)
    if recorder.last_status is not None and recorder.last_status >= 400:
        return _Failure(f"{what}: HTTP {recorder.last_status} from {url}", EXIT_REQUEST)
    leaf = leaves[0]
    message = getattr(leaf, "message", None) or str(leaf) or type(leaf).__name__
    return _Failure(f"{what} failed: {message}", EXIT_REQUEST)


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def _all_tools(client: Any) -> list[Any]:
    tools, cursor = [], None
    for _ in range(100):  # a server that pages forever is not our problem
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


async def _token(args: argparse.Namespace, creds: ClientCredentials, ca: str | None) -> tuple[Any, int]:
    async with TokenProvider(creds, ca_bundle=ca, timeout=args.timeout) as provider:
        issued = await provider.issued_token(resource=args.resource)
    if not args.json:
        return issued.access_token, EXIT_OK
    doc: dict[str, Any] = {
        "access_token": issued.access_token,
        "token_type": issued.token_type,
        "expires_in": int(issued.expires_in),
    }
    if issued.scope is not None:
        doc["scope"] = issued.scope
    return doc, EXIT_OK


async def _tools(args: argparse.Namespace, creds: ClientCredentials, ca: str | None) -> tuple[Any, int]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    url = _check_url(args.url)
    arguments: dict[str, Any] | None = None
    if args.action == "call":
        arguments = parse_arguments(args.arg, args.json_args)  # config errors before any request
    tls = client_ssl_context(creds, ca_bundle=ca)  # presents our certificate: bound tokens work
    recorder = _Recorder(httpx2.AsyncHTTPTransport(verify=tls))
    async with TokenProvider(creds, ca_bundle=ca, timeout=args.timeout) as provider:
        await provider.token(resource=args.resource)  # token problems surface here, plainly
        async with httpx2.AsyncClient(
            auth=provider.httpx2_auth(resource=args.resource),
            transport=recorder,
            verify=tls,
            timeout=httpx2.Timeout(args.timeout),
            follow_redirects=False,
        ) as http:
            what = "tools/list" if args.action == "list" else f"tool {args.name!r}"
            try:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    if args.action == "list":
                        return [_dump(tool) for tool in await _all_tools(client)], EXIT_OK
                    if args.arg:
                        listed = {tool.name: tool for tool in await _all_tools(client)}
                        tool = listed.get(args.name)
                        schema = tool.input_schema if tool is not None else None
                        arguments = parse_arguments(args.arg, args.json_args, schema)
                    recorder.reset()
                    result = await client.call_tool(args.name, arguments or {})
            except (Exception, BaseExceptionGroup) as exc:
                raise _explain(exc, recorder, url, what) from None
    return _dump(result), (EXIT_REQUEST if result.is_error else EXIT_OK)


async def _run(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Any, int]:
    creds = credentials_from_env(env)
    args.resource = check_resource(args.resource, "--resource")
    ca = args.ca_bundle or env.get("MCP_CA_BUNDLE", "").strip() or None
    if ca is not None and not Path(ca).is_file():
        raise ConfigError("--ca-bundle", f"no such file: {ca!r}")
    runner = _token if args.command == "token" else _tools
    try:
        async with asyncio.timeout(args.timeout + 5):  # the HTTP timeouts should fire first
            return await runner(args, creds, ca)
    except TimeoutError:
        raise _Failure(f"timed out after {args.timeout:g} s", EXIT_REQUEST) from None


def _configure_logging(verbose: bool, stderr: TextIO) -> None:
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())  # no "last resort" warnings from libraries on stderr
    if verbose:
        handler = logging.StreamHandler(stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log = logging.getLogger("auth")
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command line; returns the exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    env = os.environ if env is None else env
    _configure_logging(args.verbose, stderr)
    try:
        output, status = asyncio.run(_run(args, env))
    except ConfigError as exc:
        print(f"python -m auth: configuration error: {exc}", file=stderr)
        return EXIT_CONFIG
    except _Failure as exc:
        print(f"python -m auth: error: {exc}", file=stderr)
        return exc.status
    except TokenRequestRejected as exc:
        detail = f" ({exc.description})" if exc.description else ""
        print(f"python -m auth: error: no token: {exc}{detail}", file=stderr)
        return EXIT_REQUEST
    except TokenRequestError as exc:
        print(f"python -m auth: error: no token: {exc}", file=stderr)
        return EXIT_REQUEST
    except KeyboardInterrupt:
        return 130
    text = output if isinstance(output, str) else json.dumps(output, indent=2, ensure_ascii=False)
    try:
        print(text, file=stdout, flush=True)
    except BrokenPipeError:  # `| head`: the reader is gone; nothing more to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        return status
    if status == EXIT_REQUEST:
        print("python -m auth: error: the tool reported an error (isError)", file=stderr)
    return status
