"""JSON logs, one object per line, and the audit line of every MCP request.

The audit line carries client id, method (and tool), decision and duration; never a token,
secret or argument value (arguments may hold personal data). It is written on every request,
so it costs a few microseconds: the record is built from a template instead of through
``Logger.info`` (no caller lookup, no per-record process/thread discovery) and the formatter
reuses one encoder and the timestamp of the current second. Every line written while a request
is served carries its ``request_id`` (``server/_correlation.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TextIO

from mcp.shared.exceptions import MCPError

from auth import AuthError, optional_token
from auth._request import clip

from ._correlation import RequestIdFilter, current_request_id

__all__ = ["JsonFormatter", "AuditWriter", "configure_logging", "audit_middleware", "write_audit", "OperationRecord"]

audit = logging.getLogger("audit")

_STARTED = time.time()


class _Stamp:
    """The ``ts`` field's text: one ``strftime`` per second, not per line."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._text, self._second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)), second
        return f"{self._text}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object; ``extra={"audit": {...}}`` fields are merged in.

    A record's ``request_id`` (set by `RequestIdFilter`) follows ``msg`` when there is one.
    """

    def __init__(self) -> None:
        super().__init__()
        self._encode = json.JSONEncoder(default=str).encode
        self._stamp = _Stamp()

    def format(self, record: logging.LogRecord) -> str:
        ts = self._stamp(record.created)
        level = record.levelname.lower()
        fields = getattr(record, "audit", None)
        rid = getattr(record, "request_id", None)
        if type(fields) is dict and not record.exc_info and not record.args and isinstance(record.msg, str):
            line = _flat_json(ts, level, record.name, record.msg, fields, rid)  # no dict, no encoder set-up
            if line is not None:
                return line
        entry: dict[str, Any] = {"ts": ts, "level": level, "logger": record.name, "msg": record.getMessage()}
        if rid is not None:
            entry["request_id"] = rid
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._encode(entry)


class AuditWriter:
    """Write audit lines straight to ``stream`` as `JsonFormatter` renders them: one write per line.

    The audit line is written on every tool call; going through `logging` (a record, the handler
    chain, the formatter) costs several times the line itself. ``lock`` is the lock of the log
    handler that shares the stream, so a line never interleaves with a log record.

    Args:
        stream: a text stream (the server's stderr).
        lock: the sharing handler's lock (``handler.lock``); none when nothing else writes there.
        clock: wall-clock seconds for ``ts``.
    """

    def __init__(self, stream: TextIO, *, lock: Any = None, clock: Callable[[], float] = time.time) -> None:
        self._stream = stream
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._clock = clock
        self._stamp = _Stamp()
        self._encode = json.JSONEncoder(default=str).encode

    def __call__(self, msg: str, fields: Mapping[str, Any]) -> None:
        ts = self._stamp(self._clock())
        rid = current_request_id()
        line = _flat_json(ts, "info", "audit", msg, fields, rid)
        if line is None:
            head = {"ts": ts, "level": "info", "logger": "audit", "msg": msg}
            if rid is not None:
                head["request_id"] = rid
            line = self._encode({**head, **{k: v for k, v in fields.items() if k not in _RESERVED}})
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


_RESERVED = frozenset({"ts", "level", "logger", "msg", "request_id"})


def _flat_json(
    ts: str, level: str, logger: str, msg: str, fields: Mapping[str, Any], request_id: str | None = None
) -> str | None:
    """One log line as JSON when ``fields`` are flat strings, finite numbers, booleans and nulls
    under names that do not shadow the line's own; None for anything else (the general path)."""
    # The separators json.dumps writes by default, so every line looks the same whichever path made it.
    out = ['{"ts": "', ts, '", "level": "', level, '", "logger": ', _quote(logger), ', "msg": ', _quote(msg)]
    if request_id is not None:
        out += (', "request_id": ', _quote(request_id))
    for key, value in fields.items():
        if type(key) is not str or key in _RESERVED:
            return None
        kind = type(value)
        if kind is str:
            text = _quote(value)
        elif value is None:
            text = "null"
        elif kind is bool:
            text = "true" if value else "false"
        elif kind is int or (kind is float and value == value and value not in (_INF, -_INF)):
            text = repr(value)
        else:
            return None
        out += (", ", _quote(key), ": ", text)
    out.append("}")
    return "".join(out)


_INF = float("inf")
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # what json.dumps uses for str


_template: dict[str, Any] = {}


def write_audit(msg: str, fields: Mapping[str, Any], logger: logging.Logger = audit) -> None:
    """Log one INFO record on ``logger`` carrying ``fields`` as ``record.audit``.

    Equivalent to ``logger.info(msg, extra={"audit": fields})`` for every handler and
    formatter, at a fraction of the cost: the record's constant attributes are copied from a
    template made once.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    if not _template:
        _template.update(vars(logger.makeRecord(logger.name, logging.INFO, __file__, 0, msg, None, None,
                                                func="write_audit")))
    now = time.time_ns()
    created = now / 1e9
    attrs = dict(_template)
    attrs.update(
        name=logger.name, msg=msg, created=created, msecs=(now % 1_000_000_000) // 1_000_000 + 0.0,
        relativeCreated=(created - _STARTED) * 1000, thread=threading.get_ident(),
        threadName=threading.current_thread().name, process=os.getpid(), audit=dict(fields),
    )
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(attrs)
    logger.handle(record)


def configure_logging(level: str = "INFO") -> AuditWriter:
    """Send every log record to stderr as JSON; quiet the per-request chatter of the SDK and uvicorn.

    Returns the `AuditWriter` for the same stream, which the server's audit line uses.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())  # every record of a request carries its id
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("mcp", "httpx", "uvicorn.access", "psycopg.pool"):  # the pool: INFO lines per call
        logging.getLogger(noisy).setLevel(logging.WARNING)
    audit.setLevel(logging.INFO)
    return AuditWriter(sys.stderr, lock=handler.lock)


OperationRecord = Callable[[str, str | None, str | None, str | None, float], None]
"""Records one MCP operation: ``(method, tool, error type, protocol version, seconds)`` (the metric)."""


def audit_middleware(
    write: Callable[[str, Mapping[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    record: OperationRecord | None = None,
) -> Callable[..., Awaitable[Any]]:
    """An MCP ``ServerMiddleware`` writing one audit line per request that reaches the SDK.

    ``tools/call`` gets the line "tool call" with the tool's name; every other method
    (``initialize``, ``tools/list``, ``resources/read``, ``prompts/get``, ...) "mcp request".
    Both carry the client id, the method, the decision and the duration.

    Args:
        write: takes the message and the fields; `write_audit` (through ``logging``) by default,
            an `AuditWriter` where the server owns its stderr.
        clock: for the duration.
        record: also told of each operation (the ``mcp.server.operation.duration`` metric), if given.
    """
    emit = write if write is not None else write_audit

    async def middleware(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        method = ctx.method
        tool: str | None = None
        if method == "tools/call":
            params = ctx.params if isinstance(ctx.params, dict) else {}
            tool = params["name"] if isinstance(params.get("name"), str) else ""
        token = optional_token()
        started = clock()
        decision = "error"
        error_type: str | None = "error"
        try:
            result = await call_next(ctx)
            is_error = (result.get("isError") if isinstance(result, dict) else getattr(result, "is_error", False))
            decision, error_type = ("tool_error", "tool_error") if is_error else ("allowed", None)
            return result
        except AuthError as exc:
            decision, error_type = "denied", exc.error or "unauthorized"
            raise
        except MCPError as exc:
            decision, error_type = "rejected", str(exc.error.code)
            raise
        except Exception as exc:
            error_type = type(exc).__qualname__
            raise
        finally:
            seconds = clock() - started
            fields: dict[str, Any] = {"client_id": clip(token.client_id) if token else None}
            if tool is not None:
                fields["tool"] = clip(tool)  # the caller's: bounded
                fields["decision"] = decision
                fields["duration_ms"] = round(seconds * 1000, 2)
                emit("tool call", fields)
            else:
                fields["method"] = clip(method) if isinstance(method, str) else ""
                fields["decision"] = decision
                fields["duration_ms"] = round(seconds * 1000, 2)
                emit("mcp request", fields)
            if record is not None:
                record(method, tool, error_type, getattr(ctx, "protocol_version", None), seconds)

    return middleware
