"""What an `MCPServer` has registered, read where the SDK dispatches from (private SDK internals, here only).

The permission marks `requires` sets live on the functions the SDK registers. MCPServer 2.3's
public listings (``list_tools()``, ``list_resources()``, ``list_resource_templates()``,
``list_prompts()``) return the wire types, without those functions, so this module reads the
server's three managers (``_tool_manager``, ``_resource_manager``, ``_prompt_manager``) through
their public methods (``get_tool``, ``list_resources``, ``list_templates``, ``get_prompt``, ...).
It is the one place in ``auth/`` that touches them. Every lookup is live: whatever is
registered when a request arrives, before or after `protect`, is what the lookup finds, so the
gate decides on what the SDK would dispatch to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp.server.mcpserver.resources import ResourceSecurityError

from ._tools import declared_permissions

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["Registry"]


class Registry:
    """The permission marks of one server's tools, resources, resource templates and prompts.

    Each lookup answers the function's logical permissions (empty for an unmarked one) or None
    when nothing is registered under that name (the SDK then answers "unknown" itself).

    Raises:
        TypeError: ``mcp`` does not keep its registry where MCPServer 2.x does.
    """

    __slots__ = ("server", "_tools", "_resources", "_prompts")

    def __init__(self, mcp: MCPServer) -> None:
        try:
            self._tools = mcp._tool_manager
            self._resources = mcp._resource_manager
            self._prompts = mcp._prompt_manager
        except AttributeError as exc:
            raise TypeError(
                f"{type(mcp).__name__} does not keep its tools, resources and prompts where MCPServer 2.x does; "
                "give protect() an explicit ToolPermissions table"
            ) from exc
        self.server = mcp

    def tool(self, name: str) -> frozenset[str] | None:
        tool = self._tools.get_tool(name)
        return None if tool is None else declared_permissions(tool.fn)

    def read_only(self, name: str) -> bool:
        """Whether the tool registered under ``name`` carries ``readOnlyHint: true`` (a read, for rate limits)."""
        tool = self._tools.get_tool(name)
        annotations = tool.annotations if tool is not None else None
        return annotations is not None and annotations.read_only_hint is True

    def prompt(self, name: str) -> frozenset[str] | None:
        prompt = self._prompts.get_prompt(name)
        return None if prompt is None else declared_permissions(prompt.fn)

    def template(self, uri_template: str) -> frozenset[str] | None:
        for template in self._resources.list_templates():
            if template.uri_template == uri_template:
                return declared_permissions(template.fn)
        return None

    def resource(self, uri: str) -> frozenset[str] | None:
        """What reading ``uri`` dispatches to, found as the SDK finds it: a static resource with
        that URI first, then the first template that matches (a template refusing the URI's
        parameters ends the search, as in the SDK: not found)."""
        for resource in self._resources.list_resources():
            if str(resource.uri) == uri:
                return declared_permissions(getattr(resource, "fn", None))
        for template in self._resources.list_templates():
            try:
                matched = template.matches(uri)
            except ResourceSecurityError:
                return None
            if matched is not None:
                return declared_permissions(template.fn)
        return None

    def reference(self, uri: str) -> frozenset[str] | None:
        """A completion reference (``ref/resource``): a template by its URI template, else a URI to read."""
        marks = self.template(uri)
        return marks if marks is not None else self.resource(uri)

    def tools(self) -> dict[str, frozenset[str]]:
        return {t.name: declared_permissions(t.fn) for t in self._tools.list_tools()}

    def resources(self) -> dict[str, frozenset[str]]:
        return {str(r.uri): declared_permissions(getattr(r, "fn", None)) for r in self._resources.list_resources()}

    def templates(self) -> dict[str, frozenset[str]]:
        return {t.uri_template: declared_permissions(t.fn) for t in self._resources.list_templates()}

    def prompts(self) -> dict[str, frozenset[str]]:
        return {p.name: declared_permissions(p.fn) for p in self._prompts.list_prompts()}
