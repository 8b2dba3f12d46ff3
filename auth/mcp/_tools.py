"""Permission requirements: a marking decorator, the server-owned table, and pure set arithmetic.

``@requires(...)`` marks the function object itself (``__mcp_permissions__``), so the
requirement travels with whatever the MCP SDK registers (a tool, a resource, a resource
template, a prompt), under whatever name. `ToolPermissions.from_server` reads those marks from
the server's registry at each lookup (what is registered later is found too); the server owns
the table (with its aliases, implication rules and the policy for unmarked resources and
prompts) and hands it to the HTTP gate (403 before dispatch), the list filter, the metadata's
``scopes_supported`` and, through a context variable the gate sets per request, the
defence-in-depth check at call time.

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
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from .._context import optional_token
from .._errors import InsufficientScope, MissingToken
from .._permissions import expand_permissions, missing_permissions, parse_permission_name
from .._sdk import sdk_principal

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from ._registry import Registry

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


Kind = Literal["tool", "prompt", "resource", "template", "reference"]
"""What a name names: a tool or prompt (by name), a resource to read (by URI: a static resource or a
template instance, as the SDK dispatches), a template (by URI template, as listed), or a completion
reference to a template or resource (``ref/resource``)."""

Unmarked = Literal["open", "deny"]
"""The server-wide policy for resources, templates and prompts without `requires`: any valid token
may use them (``"open"``), or none may (``"deny"``). Tools without `requires` are always open."""

UNMARKED_POLICIES: tuple[Unmarked, ...] = ("open", "deny")

Listed = Literal["tool", "prompt", "resource", "template"]
"""What a listing holds: ``tools/list``, ``prompts/list``, ``resources/list``, ``resources/templates/list``."""


class ToolPermissions:
    """The permissions each tool, resource, resource template and prompt needs, owned by one server.

    They declare logical names (``api_write_access``); ``aliases`` map them to the permission
    groups a deployment actually grants (``notes.write``), and ``implies`` closes a granted set
    (MCP 2026-07-28: a broader scope implies narrower ones). The policy is immutable once built.

    Built with `from_server` (what `protect` does), the table reads the server's registry at each
    lookup: a tool, resource or prompt registered after `protect` is gated like one registered
    before, and a lookup finds exactly what the SDK would dispatch to. Built from a mapping, it
    knows those tools only, until `bound_to` a server (`protect` binds it).

    Args:
        declared: tool name -> logical permission names (added to the marks of a bound server).
        aliases: logical name -> granted name.
        implies: granted name -> the names it implies.
        unmarked: the policy for resources, templates and prompts without `requires`.
    """

    __slots__ = ("_declared", "_required", "_aliases", "_implies", "_all", "_unmarked", "_registry", "_resolved")

    def __init__(
        self,
        declared: Mapping[str, Iterable[str]] | None = None,
        *,
        aliases: Mapping[str, str] | None = None,
        implies: Mapping[str, frozenset[str]] | None = None,
        unmarked: Unmarked = "open",
    ) -> None:
        if unmarked not in UNMARKED_POLICIES:
            raise ValueError(f"unmarked must be one of {', '.join(UNMARKED_POLICIES)}, not {unmarked!r}")
        self._unmarked: Unmarked = unmarked
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
        self._registry: Registry | None = None
        # Marks -> resolved names; its keys are the marks of registered functions (a bounded set).
        self._resolved: dict[frozenset[str], frozenset[str]] = {_EMPTY: _EMPTY}

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
        unmarked: Unmarked = "open",
    ) -> ToolPermissions:
        """The table of ``mcp``: the marks of everything it registers, now or later, read at each lookup.

        Reads the function the SDK registered under each name, so ``@mcp.tool(name="archive")``
        over ``@requires(...)`` is found under ``archive``.
        """
        return cls(aliases=aliases, implies=implies, unmarked=unmarked).bound_to(mcp)

    def bound_to(self, mcp: MCPServer) -> ToolPermissions:
        """This table reading ``mcp``'s registry too (itself when it already does).

        Raises:
            ValueError: the table already reads another server's registry.
        """
        if self._registry is not None:
            if self._registry.server is not mcp:
                raise ValueError("this ToolPermissions table belongs to another server")
            return self
        from ._registry import Registry

        bound = ToolPermissions(self._declared, aliases=self._aliases, implies=self._implies, unmarked=self._unmarked)
        bound._registry = Registry(mcp)
        return bound

    @property
    def aliases(self) -> Mapping[str, str]:
        """Logical name -> the permission group the deployment grants."""
        return self._aliases

    @property
    def implies(self) -> Mapping[str, frozenset[str]]:
        """Granted name -> the names it implies."""
        return self._implies

    @property
    def unmarked(self) -> Unmarked:
        """The policy for resources, templates and prompts without `requires`."""
        return self._unmarked

    def declared(self) -> Mapping[str, frozenset[str]]:
        """Every tool's logical permissions (a read-only view, now; tools without any included)."""
        if self._registry is None:
            return self._declared
        tools = self._registry.tools()
        for name, perms in self._declared.items():
            tools[name] = tools.get(name, _EMPTY) | perms
        return MappingProxyType(tools)

    def resolve(self, permissions: Iterable[str]) -> frozenset[str]:
        """Logical names after aliasing (pure)."""
        return frozenset(self._aliases.get(p, p) for p in permissions)

    def _resolve_marks(self, marks: frozenset[str]) -> frozenset[str]:
        resolved = self._resolved.get(marks)
        if resolved is None:
            resolved = self._resolved[marks] = self.resolve(marks)
        return resolved

    def required(self, tool: str) -> frozenset[str]:
        """What calling ``tool`` needs, after aliasing; empty for an unknown or open tool."""
        if self._registry is None:
            return self._required.get(tool, _EMPTY)
        marks = self._registry.tool(tool)
        extra = self._required.get(tool)
        required = self._resolve_marks(marks) if marks else _EMPTY
        return required | extra if extra else required

    def needs(self, kind: Kind, name: str) -> frozenset[str] | None:
        """What using ``name`` needs, after aliasing: empty when any valid token may (an open tool,
        an unmarked resource or prompt under ``unmarked="open"``, anything not registered, which
        the SDK refuses itself), None when no token may (unmarked, under ``unmarked="deny"``)."""
        if kind == "tool":
            return self.required(name)
        registry = self._registry
        if registry is None:
            return _EMPTY
        if kind == "prompt":
            marks = registry.prompt(name)
        elif kind == "resource":
            marks = registry.resource(name)
        elif kind == "template":
            marks = registry.template(name)
        else:
            marks = registry.reference(name)
        return self._policy(marks)

    def _policy(self, marks: frozenset[str] | None) -> frozenset[str] | None:
        if marks is None:
            return _EMPTY  # not registered: nothing to dispatch to
        if marks:
            return self._resolve_marks(marks)
        return _EMPTY if self._unmarked == "open" else None

    def granted(self, permissions: frozenset[str]) -> frozenset[str]:
        """``permissions`` closed under the implication rules."""
        return expand_permissions(permissions, self._implies) if self._implies else permissions

    def missing(self, tools: Iterable[str], granted: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
        """``(required, missing)`` for calling every tool in ``tools`` with ``granted``."""
        required = frozenset().union(*(self.required(t) for t in tools))
        if not required:
            return _EMPTY, _EMPTY
        return required, missing_permissions(self.granted(granted), required)

    def refused(
        self, targets: Iterable[tuple[Kind, str]], granted: frozenset[str]
    ) -> tuple[list[tuple[Kind, str]], frozenset[str], frozenset[str]]:
        """What ``granted`` may not use among ``targets``: ``(refused, required, missing)``.

        ``refused`` lists the targets refused (empty when everything is allowed); ``required`` is
        what they need together and ``missing`` what ``granted`` lacks of it. A target no token
        may use (``unmarked="deny"``) is refused with nothing required for it.
        """
        refused: list[tuple[Kind, str]] = []
        required: frozenset[str] = _EMPTY
        closed: frozenset[str] | None = None
        last = None
        for target in targets:
            if target == last:  # Mcp-Name repeats the body's name
                continue
            last = target
            kind, name = target
            needed = self.required(name) if kind == "tool" else self.needs(kind, name)
            if needed is None:
                refused.append((kind, name))
                continue
            if not needed:
                continue
            if closed is None:
                closed = self.granted(granted)
            if needed - closed:
                refused.append((kind, name))
                required |= needed
        if not refused:
            return refused, _EMPTY, _EMPTY
        return refused, required, missing_permissions(closed if closed is not None else granted, required)

    def allows(self, tool: str, granted: frozenset[str]) -> bool:
        """True when ``granted`` covers what ``tool`` needs."""
        required = self.required(tool)
        return not required or not missing_permissions(self.granted(granted), required)

    def visible(self, kind: Listed, granted: frozenset[str]) -> Callable[[str], bool]:
        """A test for one listing: may ``granted`` use the ``kind`` of that name (resources by URI,
        templates by URI template)? Reads the registry once for the whole list."""
        closed = self.granted(granted)
        if kind == "tool":
            return lambda name: not (self.required(name) - closed)
        if self._registry is None:
            return lambda _: True
        registry = self._registry
        read = {"prompt": registry.prompts, "resource": registry.resources, "template": registry.templates}[kind]
        marks = read()

        def allowed(name: str) -> bool:
            needed = self._policy(marks.get(name))
            return needed is not None and not (needed - closed)

        return allowed

    def all_permissions(self) -> frozenset[str]:
        """Every permission any tool, resource, template or prompt needs, after aliasing (feeds
        ``scopes_supported``); read from the registry at each call when the table reads one."""
        if self._registry is None:
            return self._all
        registry = self._registry
        marks = [
            *registry.tools().values(), *registry.resources().values(),
            *registry.templates().values(), *registry.prompts().values(),
        ]
        return self._all.union(*(self._resolve_marks(m) for m in marks if m))

    def __repr__(self) -> str:
        if self._registry is None:
            return f"ToolPermissions({dict(self._required)!r})"
        return f"ToolPermissions.from_server({self._registry.server.name!r}, unmarked={self._unmarked!r})"


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


class ToolRefused(InsufficientScope, ToolError, ResourceError):
    """`InsufficientScope` at call time, raised as the SDK's `ToolError` (and `ResourceError`).

    The SDK answers a ``ToolError`` with an ``isError`` result carrying its text (logged at INFO),
    where any other exception becomes a bare "Error executing tool <name>" (logged as a crash); a
    ``ResourceError`` from a resource is likewise an anticipated failure with its text.
    """

    def __init__(self, required: frozenset[str], missing: frozenset[str]) -> None:
        super().__init__(required, missing, reason=refusal_message(missing))


class NoVerifiedToken(MissingToken, ToolError, ResourceError):
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
