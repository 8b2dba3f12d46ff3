"""Per-client rate limits on the MCP endpoint: HTTP 429 with ``Retry-After`` before any tool runs.

`RateLimitGate` sits inside `ToolPermissionGate` (``protect(..., rate_limit=...)`` puts it there):
it sees only requests with a verified token that the gate let through (a 401 or 403 costs the
caller nothing from its budget), reads the JSON-RPC message the gate parsed, charges it to the
caller's read or write bucket (`auth.mcp.RateLimiter`) and answers 429 when the bucket is empty.

What counts as a write (`is_write`): a ``tools/call`` of a tool that is not registered with the
annotation ``readOnlyHint: true`` (an unknown tool too: nothing says it only reads). Everything
else is a read: ``initialize``, ``ping``, ``tools/list``, ``resources/*``, ``prompts/*``,
``completion/complete``, notifications, and calls of read-only tools.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .._middleware import SCOPE_KEY
from .._observe import NO_OBSERVER, Observer
from .._ratelimit import Kind, RateLimiter, Refusal, retry_after_seconds
from .._request import clip
from .._token import VerifiedToken

__all__ = ["RateLimitGate", "is_write", "rate_limited_body", "RATE_LIMITED"]

audit = logging.getLogger("audit")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

RATE_LIMITED = -32029
"""JSON-RPC error code of a request refused by a rate limit (server-defined range, JSON-RPC 2.0 §5.1)."""

_MESSAGE_KEY = "mcp.message"  # ToolPermissionGate's MESSAGE_KEY (the gate imports this module)


def is_write(message: object, read_only: Callable[[str], bool]) -> bool:
    """Whether a JSON-RPC message (or batch) calls a tool that is not read-only (pure given ``read_only``)."""
    if isinstance(message, list):  # a batch: its items, one level (a nested list is no message)
        return any(isinstance(item, dict) and is_write(item, read_only) for item in message)
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return False
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return not (isinstance(name, str) and read_only(name))


def rate_limited_body(message: object, kind: Kind, retry_after: int) -> bytes:
    """The JSON-RPC error answering a refused request (pure): its ``id`` when it has one, else null."""
    request_id = message.get("id") if isinstance(message, dict) else None
    if not isinstance(request_id, str | int) or isinstance(request_id, bool):
        request_id = None
    what = "write requests (tool calls that change data)" if kind == "write" else "read requests"
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {
                "code": RATE_LIMITED,
                "message": f"rate_limited (HTTP 429): too many {what} from this client; "
                f"retry after {retry_after} s",
                "data": {"error": "rate_limited", "limit": kind, "retry_after": retry_after, "status": 429},
            },
        },
        separators=(",", ":"),
    ).encode()


class RateLimitGate:
    """Answer 429 with ``Retry-After`` when the verified caller is over its read or write limit.

    Requests without a verified principal (``scope["auth.token"]``) pass untouched: they never
    reach a bucket, so the table holds verified callers only (and the endpoint's `RequireToken`
    answers them 401).

    Args:
        app: the app behind (the MCP endpoint).
        limiter: the buckets.
        read_only: whether a tool name is a read-only tool (``Registry(mcp).read_only``, looked up at
            each call: a tool registered after `protect` is classified like one registered before).
        observer: told of every refused request (`auth._observe`: the rate-limit rejections counter).
    """

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter, read_only: Callable[[str], bool],
                 observer: Observer | None = None) -> None:
        self.app = app
        self._limiter = limiter
        self._read_only = read_only
        self._observer = observer or NO_OBSERVER

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        token: VerifiedToken | None = scope.get(SCOPE_KEY)
        if token is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        message = scope.get(_MESSAGE_KEY)
        kind: Kind = "write" if is_write(message, self._read_only) else "read"
        refusal = await self._limiter.acquire(token, kind)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        self._observer.rate_limited(kind)
        await self._refuse(send, token, message, refusal)

    @staticmethod
    async def _refuse(send: Send, token: VerifiedToken, message: object, refusal: Refusal) -> None:
        retry_after = retry_after_seconds(refusal.retry_after)
        if refusal.first:  # one line per run of refusals, not one per refused request
            audit.info(
                "rate limit reached",
                extra={
                    "audit": {
                        "client_id": clip(token.client_id),
                        "decision": "rate_limited",
                        "limit": refusal.kind,
                        "status": 429,
                        "retry_after": retry_after,
                    }
                },
            )
        body = rate_limited_body(message, refusal.kind, retry_after)
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"retry-after", str(retry_after).encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
