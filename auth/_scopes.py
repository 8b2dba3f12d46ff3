"""Per-operation permission requirements: a decorator, a registry, and pure set arithmetic.

The decorator records what a tool needs where the tool is written; the registry is read
by the HTTP gate (403 before dispatch) and by ``tools/list`` filtering; the check inside
the decorator stays as defence in depth for calls that bypass the gate.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import ParamSpec, TypeVar

from ._context import current_token
from ._errors import InsufficientScope

__all__ = [
    "requires",
    "PermissionRegistry",
    "REGISTRY",
    "missing_permissions",
    "expand_permissions",
    "parse_permission_name",
    "set_permission_aliases",
]

P = ParamSpec("P")
R = TypeVar("R")

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")


def parse_permission_name(name: str) -> str:
    """Return ``name`` if it is a valid RFC 6749 §3.3 scope token.

    Raises:
        ValueError: when it is empty or has spaces, quotes, backslashes or non-ASCII.
    """
    if not isinstance(name, str) or not _SCOPE_TOKEN.fullmatch(name):
        raise ValueError(f"not an RFC 6749 scope token: {name!r}")
    return name


def missing_permissions(granted: frozenset[str], required: frozenset[str]) -> frozenset[str]:
    """What ``required`` asks for that ``granted`` lacks (pure)."""
    return required - granted


def expand_permissions(granted: Iterable[str], implies: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """Close ``granted`` under the implication rules (e.g. write implies read), transitively."""
    result = set(granted)
    pending = list(result)
    while pending:
        for implied in implies.get(pending.pop(), ()):
            if implied not in result:
                result.add(implied)
                pending.append(implied)
    return frozenset(result)


class PermissionRegistry:
    """Maps an operation name (a tool name) to the permissions it needs.

    Names declared in the decorator are logical; ``aliases`` (from configuration) map
    them to the permission groups a deployment actually grants, so an application whose
    IAS instance provides ``notes.read`` can keep tools declaring ``api_read_access``.
    """

    def __init__(self) -> None:
        self._needs: dict[str, frozenset[str]] = {}

    def declare(self, name: str, permissions: Iterable[str]) -> None:
        """Record that operation ``name`` needs ``permissions`` (replaces an earlier declaration)."""
        self._needs[name] = frozenset(parse_permission_name(p) for p in permissions)

    def required(self, name: str, aliases: Mapping[str, str] | None = None) -> frozenset[str]:
        """Permissions operation ``name`` needs, after aliasing; empty when it declared none."""
        declared = self._needs.get(name, frozenset())
        if not aliases:
            return declared
        return frozenset(aliases.get(p, p) for p in declared)

    def declared(self) -> Mapping[str, frozenset[str]]:
        """A read-only snapshot of every declaration (logical names)."""
        return dict(self._needs)

    def all_permissions(self, aliases: Mapping[str, str] | None = None) -> frozenset[str]:
        """Every permission any operation needs, after aliasing (feeds ``scopes_supported``)."""
        return frozenset().union(*(self.required(n, aliases) for n in self._needs)) if self._needs else frozenset()


REGISTRY = PermissionRegistry()
"""The process-wide registry the decorator writes to by default."""

_ALIASES: dict[str, str] = {}


def set_permission_aliases(aliases: Mapping[str, str]) -> None:
    """Install the deployment's permission aliases (settings) for the check inside `requires`."""
    _ALIASES.clear()
    _ALIASES.update(aliases)


def requires(
    *permissions: str, name: str | None = None, registry: PermissionRegistry | None = None
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Declare the permissions an async handler (an MCP tool) needs.

    The wrapped function keeps its signature (the MCP SDK builds the input schema from it)
    and refuses to run, raising `InsufficientScope`, when the current token lacks a permission.

    Args:
        permissions: permission group names (RFC 6749 scope tokens); at least one.
        name: the operation name to register under; defaults to the function's name,
            which is what ``@mcp.tool()`` uses as the tool name.
        registry: where to record the requirement; defaults to `REGISTRY`.

    Raises:
        ValueError: no permission given, a name that is not a scope token, or a sync function.
    """
    if not permissions:
        raise ValueError("requires() needs at least one permission")
    needed = frozenset(parse_permission_name(p) for p in permissions)
    target = registry if registry is not None else REGISTRY

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(fn):
            raise ValueError(f"requires() applies to async functions; {fn.__qualname__} is not")
        target.declare(name or fn.__name__, needed)

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            token = current_token()
            resolved = frozenset(_ALIASES.get(p, p) for p in needed)
            missing = missing_permissions(token.permissions, resolved)
            if missing:
                raise InsufficientScope(resolved, missing)
            return await fn(*args, **kwargs)

        return guarded

    return decorate
