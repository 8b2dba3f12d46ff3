"""Read the permissions routes declare for a security scheme, from FastAPI's own OpenAPI generator.

``fastapi`` is an optional extra: the ignore codes let ``mypy --strict -p auth`` pass without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

from fastapi.openapi.utils import get_openapi  # type: ignore[import-not-found, unused-ignore]
from fastapi.routing import APIRoute  # type: ignore[import-not-found, unused-ignore]
from starlette.routing import BaseRoute, Mount

__all__ = ["declared_scopes"]


def declared_scopes(routes: Sequence[BaseRoute], scheme_name: str) -> frozenset[str]:
    """The scopes every operation among ``routes`` (and inside mounted apps) requires of ``scheme_name``.

    Uses `get_openapi` (public, and uncached: the app's own document is left alone), so what the
    metadata lists is what the OpenAPI document shows, however the routes declared it.
    """
    found: set[str] = set()
    for group in _route_groups(routes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. duplicate operation ids: the app's own /docs reports them
            document = get_openapi(title="scopes", version="0", routes=group)
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for requirement in operation.get("security", ()) if isinstance(operation, dict) else ():
                    found.update(requirement.get(scheme_name, ()))
    return frozenset(found)


def _route_groups(routes: Sequence[BaseRoute]) -> Iterator[list[BaseRoute]]:
    """The API routes of one app, then those of each app mounted in it (each its own document)."""
    yield [r for r in routes if isinstance(r, APIRoute)]
    for route in routes:
        if isinstance(route, Mount):
            yield from _route_groups(route.routes)
