"""Host and Origin validation in front of everything (MCP transport security, DNS rebinding).

A present ``Origin`` not on the list gets 403 (MCP streamable HTTP: servers MUST validate
it); a ``Host`` not on the list gets 421 (RFC 9110 §15.5.20). Lists come from the public
URL in the settings, never from the SDK's localhost-only default.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from auth._request import route_path

__all__ = ["HostOriginGuard"]


class HostOriginGuard:
    """Reject requests whose ``Host`` or ``Origin`` is not ours.

    Args:
        app: the app to guard.
        allowed_hosts: exact ``Host`` values (``host[:port]``); ``*`` accepts any.
        allowed_origins: exact origins (``scheme://host[:port]``).
        exempt: paths served whatever the Host (the platform's health check), as the router
            sees them (without a ``root_path`` prefix).
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        *,
        allowed_hosts: Iterable[str],
        allowed_origins: Iterable[str],
        exempt: Iterable[str] = ("/health",),
    ) -> None:
        self.app = app
        self._hosts = frozenset(h.lower().encode() for h in allowed_hosts)
        self._any_host = b"*" in self._hosts
        self._origins = frozenset(o.lower().encode() for o in allowed_origins)
        self._exempt = frozenset(exempt)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] not in ("http", "websocket") or route_path(scope) in self._exempt:
            await self.app(scope, receive, send)
            return
        host = origin = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.lower()
            elif key == b"origin":
                origin = value.lower()
        if not self._any_host and host not in self._hosts:
            await _reply(send, 421, b'{"error":"misdirected_request","error_description":"Host not served here"}')
            return
        if origin is not None and origin not in self._origins:
            await _reply(send, 403, b'{"error":"forbidden_origin","error_description":"Origin not allowed"}')
            return
        await self.app(scope, receive, send)


async def _reply(send: Callable[..., Any], status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
