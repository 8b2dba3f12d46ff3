"""Per-tool permission requirements: a marking decorator, the server-owned table, and pure set arithmetic.

``@requires(...)`` marks the function object itself (``__mcp_permissions__``), so the
requirement travels with whatever the MCP SDK registers, under whatever name.
`ToolPermissions.from_server` reads those marks once at start-up; the server owns the
result (with its aliases and implication rules) and hands it to the HTTP gate (403 before
dispatch), the ``tools/list`` filter, the metadata's ``scopes_supported`` and, through a
context variable the gate sets per request, the defence-in-depth check at call time.

Where no gate runs (the SDK's own ``token_verifier=`` route, FastMCP), the call-time check is
the only one: it reads the principal our verifier attached to the SDK's access token and
refuses with `ToolRefused`, a tool error (``isError``) whose fixed text names the permission.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mcp.server.mcpserver.exceptions import ToolError

from .._context import optional_token
from .._errors import InsufficientScope, MissingToken
from .._permissions import expand_permissions, missing_permissions, parse_permission_name
from .._sdk import sdk_principal

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = [
    "requires",
    "ToolPermissions",
    "PERMISSIONS_ATTR",
    "declared_permissions",
    "active_permissions",
    "using_permissions",
    "ToolRefused",
    "NoVerifiedToken",
    "refusal_message",
]

F = TypeVar("F", bound=Callable[..., Any])

_EMPTY: frozenset[str] = frozenset()

PERMISSIONS_ATTR = "__mcp_permissions__"
"""The attribute `requires` sets on a tool function: a frozenset of logical permission names."""

def declared_permissions(fn: object) -> frozenset[str]:
    """The logical permissions `requires` marked ``fn`` with; empty for an unmarked function."""
    marked = getattr(fn, PERMISSIONS_ATTR, _EMPTY)
    return marked if isinstance(marked, frozenset) else _EMPTY


class ToolPermissions:
    """The permissions each registered tool needs, owned by one server.

    Tools declare logical names (``api_write_access``); ``aliases`` map them to the permission
    groups a deployment actually grants (``notes.write``), and ``implies`` closes a granted set
    (MCP 2026-07-28: a broader scope implies narrower ones). Immutable once built.

    Args:
        declared: tool name -> logical permission names.
        aliases: logical name -> granted name.
        implies: granted name -> the names it implies.
    """

    __slots__ = ("_declared", "_required", "_aliases", "_implies", "_all")

    def __init__(
        self,
        declared: Mapping[str, Iterable[str]] | None = None,
        *,
        aliases: Mapping[str, str] | None = None,
        implies: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self._aliases: Mapping[str, str] = MappingProxyType(dict(aliases or {}))
        self._implies: Mapping[str, frozenset[str]] = MappingProxyType(dict(implies or {}))
        self._declared: Mapping[str, frozenset[str]] = MappingProxyType(
            {name: frozenset(parse_permission_name(p) for p in perms) for name, perms in (declared or {}).items()}
        )
        # Resolved once: the gate and the list filter look tools up on every request.
        self._required: Mapping[str, frozenset[str]] = MappingProxyType(
            {name: self.resolve(perms) for name, perms in self._declared.items() if perms}
        )
        self._all: frozenset[str] = frozenset().union(*self._required.values())

    @classmethod
    def from_tools(
        cls,
        tools: Iterable[tuple[str, Callable[..., Any]]],
        *,
        aliases: Mapping[str, str] | None = None,
        implies: Mapping[str, frozenset[str]] | None = None,
    ) -> ToolPermissions:
        """Build the table from ``(registered name, function)`` pairs, reading each function's mark."""
        return cls({name: declared_permissions(fn) for name, fn in tools}, aliases=aliases, implies=implies)

    @classmethod
    def from_server(
        cls,
        mcp: MCPServer,
        *,
        aliases: Mapping[str, str] | None = None,
        implies: Mapping[str, frozenset[str]] | None = None,
    ) -> ToolPermissions:
        """Build the table from the tools ``mcp`` has registered so far (call it after registering them).

        Reads the function the SDK registered under each tool's name, so ``@mcp.tool(name="archive")``
        over ``@requires(...)`` is found under ``archive``.
        """
        # The SDK exposes registered Tool objects (with their functions) only on its tool manager.
        registered = mcp._tool_manager.list_tools()
        return cls.from_tools(((t.name, t.fn) for t in registered), aliases=aliases, implies=implies)

    @property
    def aliases(self) -> Mapping[str, str]:
        """Logical name -> the permission group the deployment grants."""
        return self._aliases

    @property
    def implies(self) -> Mapping[str, frozenset[str]]:
        """Granted name -> the names it implies."""
        return self._implies

    def declared(self) -> Mapping[str, frozenset[str]]:
        """Every tool's logical permissions (a read-only view; tools without any included)."""
        return self._declared

    def resolve(self, permissions: Iterable[str]) -> frozenset[str]:
        """Logical names after aliasing (pure)."""
        return frozenset(self._aliases.get(p, p) for p in permissions)

    def required(self, tool: str) -> frozenset[str]:
        """What calling ``tool`` needs, after aliasing; empty for an unknown or open tool."""
        return self._required.get(tool, _EMPTY)

    def granted(self, permissions: frozenset[str]) -> frozenset[str]:
        """``permissions`` closed under the implication rules."""
        return expand_permissions(permissions, self._implies) if self._implies else permissions

    def missing(self, tools: Iterable[str], granted: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
        """``(required, missing)`` for calling every tool in ``tools`` with ``granted``."""
        required = frozenset().union(*(self.required(t) for t in tools))
        if not required:
            return _EMPTY, _EMPTY
        return required, missing_permissions(self.granted(granted), required)

    def allows(self, tool: str, granted: frozenset[str]) -> bool:
        """True when ``granted`` covers what ``tool`` needs."""
        required = self.required(tool)
        return not required or not missing_permissions(self.granted(granted), required)

    def all_permissions(self) -> frozenset[str]:
        """Every permission any tool needs, after aliasing (feeds ``scopes_supported``)."""
        return self._all

    def __repr__(self) -> str:
        return f"ToolPermissions({dict(self._required)!r})"


_ACTIVE: ContextVar[ToolPermissions | None] = ContextVar("auth_tool_permissions", default=None)


def active_permissions() -> ToolPermissions | None:
    """The table of the server handling the current request (set by the gate), or None."""
    return _ACTIVE.get()


@contextmanager
def using_permissions(permissions: ToolPermissions) -> Iterator[None]:
    """Make ``permissions`` the table the call-time check reads, for the duration of the block."""
    handle = _ACTIVE.set(permissions)
    try:
        yield
    finally:
        _ACTIVE.reset(handle)


def refusal_message(missing: frozenset[str], tool: str | None = None) -> str:
    """The fixed text of a tool call refused at call time: permission names, nothing from the token (pure).

    The SDK shows it after "Error executing tool <name>: ", so without ``tool`` it says "this tool".
    """
    what = f"tool {tool}" if tool else "this tool"
    return f"insufficient_scope: {what} needs permission {' and '.join(sorted(missing))}, " \
        "which the access token does not grant"


class ToolRefused(InsufficientScope, ToolError):
    """`InsufficientScope` at call time, raised as the SDK's `ToolError`.

    The SDK answers a ``ToolError`` with an ``isError`` result carrying its text (logged at INFO),
    where any other exception becomes a bare "Error executing tool <name>" (logged as a crash).
    """

    def __init__(self, required: frozenset[str], missing: frozenset[str]) -> None:
        super().__init__(required, missing, reason=refusal_message(missing))


class NoVerifiedToken(MissingToken, ToolError):
    """A guarded tool ran without a principal our verifier produced (e.g. another ``token_verifier``)."""

    def __init__(self) -> None:
        super().__init__("unauthorized: this tool needs an access token verified by the auth layer")


def _check(needed: frozenset[str]) -> None:
    """The call-time check: the current token must cover ``needed`` as the serving server resolves it.

    Behind `protect`, the gate's table resolves names (aliases, implication rules). Elsewhere the
    deployment's aliases come with the principal (the verifier's settings); the verifier already
    closed the token's permissions under the implication rules.
    """
    token = optional_token()
    if token is None:
        raise NoVerifiedToken
    table = _ACTIVE.get()
    if table is None:
        carried = sdk_principal()
        aliases = carried[1] if carried is not None and carried[0] is token else None
        required = frozenset(aliases.get(p, p) for p in needed) if aliases else needed
        missing = missing_permissions(token.permissions, required)
    else:
        required = table.resolve(needed)
        missing = missing_permissions(table.granted(token.permissions), required)
    if missing:
        raise ToolRefused(required, missing)


def requires(*permissions: str) -> Callable[[F], F]:
    """Declare the permissions a tool needs, on the tool function itself (sync or async).

    Put it under ``@mcp.tool(...)``: the SDK registers the returned function, which carries the
    mark whatever name the tool is registered under. The wrapper keeps the signature (the SDK
    builds the input schema from it) and refuses to run with `ToolRefused` (an `InsufficientScope`
    and the SDK's ``ToolError``) when the current token lacks a permission: defence in depth
    behind `protect`'s HTTP gate, and the check itself on the SDK's ``token_verifier=`` route and
    in FastMCP, where the client gets an ``isError`` result naming the permission.

    Args:
        permissions: logical permission names (RFC 6749 scope tokens); at least one.

    Raises:
        ValueError: no permission given, or a name that is not a scope token.
    """
    if not permissions:
        raise ValueError("requires() needs at least one permission")
    needed = frozenset(parse_permission_name(p) for p in permissions)

    def mark(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                _check(needed)
                return await fn(*args, **kwargs)

            guarded: Callable[..., Any] = guarded_async
        else:

            @functools.wraps(fn)
            def guarded_sync(*args: Any, **kwargs: Any) -> Any:
                _check(needed)  # the SDK runs sync tools on a worker thread with the request's context
                return fn(*args, **kwargs)

            guarded = guarded_sync
        # Stacked decorators add up; functools.wraps copied an inner mark, so union with it.
        setattr(guarded, PERMISSIONS_ATTR, declared_permissions(fn) | needed)
        return cast(F, guarded)

    return mark
