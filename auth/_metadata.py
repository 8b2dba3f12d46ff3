"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for the resource this layer guards."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ._settings import AuthSettings

__all__ = ["resource_metadata_url", "protected_resource_metadata", "metadata_routes", "METADATA_PREFIX"]

METADATA_PREFIX = "/.well-known/oauth-protected-resource"


def resource_metadata_url(resource: str) -> str:
    """The metadata URL of ``resource``: https://rs.example/mcp -> https://rs.example/.well-known/oauth-protected-resource/mcp."""
    # RFC 9728 §3.1: the well-known segment goes between the host and the resource's path.
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{METADATA_PREFIX}{parts.path.rstrip('/')}"


def protected_resource_metadata(settings: AuthSettings, scopes_supported: Iterable[str] = ()) -> dict[str, Any]:
    """The RFC 9728 §2 document: every trusted issuer, the permission groups, header-only bearer use."""
    doc: dict[str, Any] = {
        "resource": settings.resource_url,
        "authorization_servers": list(dict.fromkeys(settings.issuer_urls)),
        "bearer_methods_supported": ["header"],
        "resource_name": settings.resource_name,
    }
    scopes = sorted(set(scopes_supported))
    if scopes:
        doc["scopes_supported"] = scopes
    if settings.resource_documentation:
        doc["resource_documentation"] = settings.resource_documentation
    if settings.cert_binding != "off":
        doc["tls_client_certificate_bound_access_tokens"] = True  # RFC 8705 §3.4
    return doc


def metadata_routes(
    settings: AuthSettings,
    scopes_supported: Iterable[str] | Callable[[], Iterable[str]] = (),
    *,
    endpoint_path: str | None = None,
) -> list[Route]:
    """Routes serving the metadata at the path form and the root form (clients try both).

    The paths come from ``settings.resource_url``, the public URL: for ``https://host/notes/mcp``
    they are ``/.well-known/oauth-protected-resource/notes/mcp`` and the root form, at the host
    root, where RFC 9728 §3.1 puts them. An app mounted under ``/notes`` gives these routes to the
    outer app; with ``endpoint_path="/mcp"`` it also serves the path form of its own endpoint
    (``/notes/.well-known/oauth-protected-resource/mcp`` once mounted). A callable
    ``scopes_supported`` is read at each request (the document follows a registry that grows).
    """
    headers = {"cache-control": "public, max-age=3600", "access-control-allow-origin": "*"}
    if callable(scopes_supported):
        read = scopes_supported
        built: dict[tuple[str, ...], dict[str, Any]] = {}  # one entry: the document of the current scopes

        async def endpoint(_: Request) -> JSONResponse:
            scopes = tuple(sorted(set(read())))
            document = built.get(scopes)
            if document is None:
                built.clear()
                document = built[scopes] = protected_resource_metadata(settings, scopes)
            return JSONResponse(document, headers=headers)
    else:
        fixed = protected_resource_metadata(settings, scopes_supported)

        async def endpoint(_: Request) -> JSONResponse:
            return JSONResponse(fixed, headers=headers)

    path = urlsplit(settings.resource_url).path.rstrip("/")
    own = () if endpoint_path is None else (METADATA_PREFIX + endpoint_path.rstrip("/"),)
    paths = dict.fromkeys((METADATA_PREFIX + path, *own, METADATA_PREFIX))
    return [Route(p, endpoint, methods=["GET"]) for p in paths]
