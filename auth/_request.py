"""Pure readings of a request: the path a router routes on, a CORS preflight, a log-safe string, a loopback host."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

__all__ = ["route_path", "is_preflight", "clip", "CLIP", "is_loopback_host"]

CLIP = 200
"""Characters of a request-supplied string a log line shows (`clip`)."""


def route_path(scope: Mapping[str, Any]) -> str:
    """The path a Starlette router routes on: ``scope["path"]`` without ``scope["root_path"]``.

    ASGI servers and Starlette's ``Mount`` put the mount prefix in ``root_path`` and keep it in
    ``path`` too (uvicorn ``root_path="/notes"``: ``/notes/mcp``); the router, and so the endpoint
    a request lands on, sees ``/mcp``. Every decision about which endpoint a request is for must
    read this value, or it protects a path no request is routed by. Same result as Starlette's
    (private) ``get_route_path``: a ``path`` outside ``root_path`` is returned whole.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    rest = path[len(root) :]
    return rest if not rest or rest[0] == "/" else path


def is_preflight(scope: Mapping[str, Any]) -> bool:
    """A CORS preflight (Fetch standard §3.2.2): ``OPTIONS`` with ``Origin`` and
    ``Access-Control-Request-Method``, and no body (no ``Content-Length`` other than 0, no
    ``Transfer-Encoding``). Browsers send preflights without credentials; anything else is an
    ordinary request and needs a token like one.
    """
    if scope.get("type") != "http" or scope.get("method") != "OPTIONS":
        return False
    origin = requested = False
    for key, value in scope.get("headers", ()):
        if key == b"origin":
            origin = True
        elif key == b"access-control-request-method":
            requested = True
        elif key == b"transfer-encoding" or (key == b"content-length" and value.strip() != b"0"):
            return False
    return origin and requested


def clip(text: str, limit: int = CLIP) -> str:
    """``text`` for a log line: at most ``limit`` characters, a longer one cut and marked as cut.

    ``clip("x" * 5000)`` is 200 x's followed by ``…[+4800 chars]``. Only a long string costs more
    than a length check.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[+{len(text) - limit} chars]"


def is_loopback_host(host: str) -> bool:
    """Whether binding to (or connecting to) ``host`` stays on this machine: ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
