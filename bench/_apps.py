"""The four apps bench_server.py compares, each built in its own server process (``--factory``).

- ``ours``: this project exactly as ``python -m server --dev`` builds it: Host/Origin guard,
  bearer-token verification (a reused token, as real clients reuse theirs), the tool gate,
  the filtered lists and the JSON audit line (written to /dev/null, formatted for real).
- ``otel``: ``ours`` with tracing and metrics on, exported over OTLP/HTTP (``BENCH_OTLP``: a sink
  process that answers every export), as ``OTEL_EXPORTER_OTLP_ENDPOINT`` turns them on.
- ``noauth``: the same stack with a constant principal: every bearer token "verifies" to one
  fixed `VerifiedToken`, so the difference to ``ours`` is what token verification costs.
- ``sdk``: the bare ``mcp`` SDK `MCPServer`, stateless JSON responses, no auth, one tool: a
  ``whoami`` with this project's result type and a constant principal (the tools' own work is
  the same on both sides, so the ratio is the serving path's).
- ``floor``: a bare ASGI app that reads and parses the JSON-RPC request and answers the same
  kind of result: the least any Python MCP server on this HTTP server can do per call.

Settings come from the environment: ``BENCH_BASE_URL`` (where the app is served, for the
issuer and resource URLs) and ``BENCH_DIR`` (a scratch directory for the notes database).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

RESULT_TEXT = '{"client_id":"anonymous"}'


def _configure_audit() -> Any:
    """Logging and the audit line as ``python -m server`` sets them up, written to /dev/null
    (their cost counts, the disk does not)."""
    from server._logging import AuditWriter, JsonFormatter

    stream = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("audit").setLevel(logging.INFO)
    return AuditWriter(stream, lock=handler.lock)


def dev_app(verifier: Any = None, verifier_for: Any = None, telemetry: Any = None) -> Any:
    """The app ``python -m server --dev`` builds, served at ``BENCH_BASE_URL``.

    ``verifier`` replaces the token verifier; ``verifier_for(settings)`` builds one from the settings;
    ``telemetry`` (a `server._otel.Telemetry`) turns traces and metrics on.
    """
    from server._app import create_app
    from server._dev_issuer import DevIssuer
    from server._main import dev_settings

    base = os.environ["BENCH_BASE_URL"]
    issuer = DevIssuer(base)
    env = {"MCP_NOTES_DB": str(Path(os.environ["BENCH_DIR"]) / f"notes-{os.getpid()}-{id(issuer)}.db")}
    settings = dev_settings(env, base, issuer)
    if verifier_for is not None:
        verifier = verifier_for(settings)
    audit = _configure_audit()
    return create_app(settings, verifier=verifier, extra_routes=[*issuer.well_known_routes(), issuer.mount()],
                      audit=audit, telemetry=telemetry)


def ours() -> Any:
    """This project with auth on."""
    return dev_app()


def otel() -> Any:
    """This project with auth on and every span and metric exported over OTLP/HTTP to ``BENCH_OTLP``."""
    from server._otel import Telemetry
    from server._otel_settings import load_telemetry_settings

    settings = load_telemetry_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": os.environ["BENCH_OTLP"],
                                        "OTEL_METRIC_EXPORT_INTERVAL": "5000"})
    telemetry = Telemetry(settings)
    telemetry.install()  # as python -m server does: the SDK's MCP span comes from the global provider
    return dev_app(telemetry=telemetry)


def otlp_sink() -> Any:
    """An OTLP/HTTP endpoint that reads each export and answers it (an empty protobuf response)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        status = 200 if scope.get("path") in ("/v1/traces", "/v1/metrics") else 404
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/x-protobuf"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    return app


class ConstantVerifier:
    """A `TokenVerifier` that accepts any bearer token as one fixed principal (auth off)."""

    def __init__(self) -> None:
        import time

        from auth import VerifiedToken

        self._token = VerifiedToken(
            subject="bench",
            client_id="bench",
            issuer="bench",
            audience=("bench",),
            permissions=frozenset({"api_read_access", "api_write_access"}),
            expires_at=int(time.time()) + 365 * 86400,
        )

    async def verify(self, token: str) -> Any:
        return self._token


def noauth() -> Any:
    """This project's stack with a constant principal."""
    return dev_app(ConstantVerifier())


def sdk() -> Any:
    """The MCP SDK alone: stateless JSON, no auth, a whoami like ours (the peer)."""
    from datetime import UTC, datetime

    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings

    from tools.notes import Identity

    mcp = MCPServer("bare", log_level="WARNING")
    expires = int(datetime.now(UTC).timestamp()) + 3600

    async def whoami() -> Any:
        """Describe the caller (a constant principal: there is no auth here)."""
        return Identity(client_id="anonymous", subject="anonymous", tenant=None,
                        permissions=["api_read_access", "api_write_access"],
                        expires_at=datetime.fromtimestamp(expires, UTC).isoformat())

    whoami.__annotations__["return"] = Identity  # the result type, resolved here (not at module import)
    mcp.tool()(whoami)

    return mcp.streamable_http_app(
        json_response=True,
        stateless_http=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


def floor() -> Any:
    """A bare ASGI app: read the body, parse the JSON-RPC request, answer a ``tools/call`` result."""
    server_info = {"name": "floor", "version": "0"}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            request = json.loads(body) if body else None
        except ValueError:
            request = None
        if not isinstance(request, dict) or request.get("method") != "tools/call":
            out = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}'
            status = 400
        else:
            result: dict[str, Any] = {
                "content": [{"type": "text", "text": RESULT_TEXT}],
                "structuredContent": {"client_id": "anonymous"},
                "isError": False,
            }
            meta = (request.get("params") or {}).get("_meta")
            if isinstance(meta, dict) and "io.modelcontextprotocol/protocolVersion" in meta:
                result["resultType"] = "complete"
                result["_meta"] = {"io.modelcontextprotocol/serverInfo": server_info}
            out = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": result},
                             separators=(",", ":")).encode()
            status = 200
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    return app
