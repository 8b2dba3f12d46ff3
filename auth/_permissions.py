"""Permission names and sets (pure): RFC 6749 §3.3 scope tokens, what is missing, implication rules.

Shared by the claim checks (a token's granted set is closed under the implication rules) and by
the MCP integration (`auth.mcp`), which decides per tool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["parse_permission_name", "missing_permissions", "expand_permissions"]

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


