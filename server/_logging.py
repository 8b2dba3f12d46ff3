"""JSON logs, one object per line, and the per-tool-call audit line.

The audit line carries client id, tool, decision and duration; never a token, secret or
argument value (arguments may hold personal data).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.shared.exceptions import MCPError

from auth import AuthError, optional_token

__all__ = ["JsonFormatter", "configure_logging", "audit_middleware"]

audit = logging.getLogger("audit")


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object; ``extra={"audit": {...}}`` fields are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "audit", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON; quiet the per-request chatter of the SDK and uvicorn."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("mcp", "httpx", "uvicorn.access", "psycopg.pool"):  # the pool: INFO lines per call
        logging.getLogger(noisy).setLevel(logging.WARNING)
    audit.setLevel(logging.INFO)


def audit_middleware(clock: Callable[[], float] = time.perf_counter) -> Callable[..., Awaitable[Any]]:
    """An MCP ``ServerMiddleware`` writing one audit line per ``tools/call`` that reaches the SDK."""

    async def middleware(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        params = ctx.params if isinstance(ctx.params, dict) else {}
        tool = params.get("name") if isinstance(params.get("name"), str) else ""
        token = optional_token()
        started = clock()
        decision = "error"
        try:
            result = await call_next(ctx)
            is_error = (result.get("isError") if isinstance(result, dict) else getattr(result, "is_error", False))
            decision = "tool_error" if is_error else "allowed"
            return result
        except AuthError:
            decision = "denied"
            raise
        except MCPError:
            decision = "rejected"
            raise
        finally:
            audit.info(
                "tool call",
                extra={"audit": {
                    "client_id": token.client_id if token else None,
                    "tool": tool,
                    "decision": decision,
                    "duration_ms": round((clock() - started) * 1000, 2),
                }},
            )

    return middleware
