"""FastMCP fit: our verifier as a FastMCP auth provider, our permission names as FastMCP ``auth=`` checks.

    settings = load_settings(os.environ)
    mcp = FastMCP("notes", auth=fastmcp_auth(settings))

    @mcp.tool(auth=permission_check("api_write_access", settings=settings))
    def archive(note_id: int) -> int: ...

FastMCP hides a tool the caller may not use from ``tools/list`` and answers a call to it inside
HTTP 200 (an error result), where `protect` answers with the specification's HTTP 403
``insufficient_scope`` challenge. ``fastmcp`` is imported only when these functions run, so
``auth`` does not depend on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._permissions import parse_permission_name
from .._sdk import verify_token
from .._settings import AuthSettings
from .._verifier import JWTVerifier, TokenVerifier

if TYPE_CHECKING:
    from fastmcp.server.auth import RemoteAuthProvider

__all__ = ["fastmcp_auth", "permission_check"]


def fastmcp_auth(
    settings: AuthSettings,
    *,
    verifier: TokenVerifier | None = None,
    scopes_supported: Iterable[str] = (),
) -> RemoteAuthProvider:
    """A FastMCP ``RemoteAuthProvider`` that verifies tokens with our verifier.

    It publishes RFC 9728 metadata naming every trusted issuer; serve the FastMCP app at the path
    of ``settings.resource_url`` (e.g. ``mcp.http_app(path="/mcp")`` for ``https://host/mcp``).
    Through FastMCP's ``verify_token`` protocol every refusal is a 401 (a 503 for unavailable keys
    included) and certificate-bound tokens are refused (the connection is out of reach).

    Args:
        settings: the auth settings (issuers, resource URL, aliases, implication rules).
        verifier: defaults to a `JWTVerifier` over ``settings``.
        scopes_supported: permission names to advertise in the metadata.

    Raises:
        ImportError: ``fastmcp`` is not installed.
    """
    from fastmcp.server.auth import AccessToken, RemoteAuthProvider
    from fastmcp.server.auth import TokenVerifier as FastMCPTokenVerifier
    from pydantic import AnyHttpUrl

    ours: TokenVerifier = verifier if verifier is not None else JWTVerifier(settings)
    parts = urlsplit(settings.resource_url)
    base_url = f"{parts.scheme}://{parts.netloc}"

    class _OurVerifier(FastMCPTokenVerifier):
        async def verify_token(self, token: str) -> AccessToken | None:
            sdk = await verify_token(
                ours, token, resource=settings.resource_url, cert_binding=settings.cert_binding
            )
            if sdk is None:
                return None
            return AccessToken(**sdk.model_dump(exclude={"claims"}), claims=sdk.claims or {})

    provider: RemoteAuthProvider = RemoteAuthProvider(
        token_verifier=_OurVerifier(base_url=base_url),
        authorization_servers=[AnyHttpUrl(url) for url in dict.fromkeys(settings.issuer_urls)],
        base_url=base_url,
        scopes_supported=sorted(set(scopes_supported)),
        resource_name=settings.resource_name,
    )
    return provider


def permission_check(*permissions: str, settings: AuthSettings | None = None) -> Any:
    """A FastMCP ``auth=`` check requiring our permission names, after the deployment's aliases.

    Scope-aware (FastMCP's ``require_scopes``), so FastMCP can name what is missing. Implication
    rules need nothing here: our verifier already closed the token's scopes under them.

    Raises:
        ValueError: no permission given, or a name that is not a scope token.
        ImportError: ``fastmcp`` is not installed.
    """
    from fastmcp.server.auth import require_scopes

    if not permissions:
        raise ValueError("permission_check() needs at least one permission")
    aliases = settings.permission_aliases if settings is not None else {}
    resolved = [aliases.get(p, p) for p in (parse_permission_name(p) for p in permissions)]
    return require_scopes(*dict.fromkeys(resolved))
