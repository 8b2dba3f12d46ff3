"""FastMCP fit: our verifier as a FastMCP auth provider, our permission names as FastMCP ``auth=`` checks.

    settings = load_settings(os.environ)
    mcp = FastMCP("notes", auth=fastmcp_auth(settings), middleware=[fastmcp_refusals()])

    @mcp.tool(auth=permission_check("api_write_access", settings=settings))
    def archive(note_id: int) -> int: ...

FastMCP hides a tool the caller may not use from ``tools/list`` and answers a call to it inside
HTTP 200 (an error result), where `protect` answers with the specification's HTTP 403
``insufficient_scope`` challenge. On its own FastMCP words that error result "Unknown tool";
with `fastmcp_refusals` it names the permission instead. The access token FastMCP holds carries
our `VerifiedToken`, so ``current_token()`` and ``@requires`` work in FastMCP tools too.

``fastmcp`` is imported only when these functions run, so ``auth`` does not depend on it (and
type-checks without it: the imports below are ``Any`` there, hence the ``unused-ignore`` codes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._errors import InsufficientScope
from .._permissions import parse_permission_name
from .._sdk import VerifiedAccessToken, access_fields, carry, verified_or_none
from .._settings import AuthSettings
from .._verifier import JWTVerifier, TokenVerifier
from ._tools import refusal_message

if TYPE_CHECKING:
    from fastmcp.server.auth import RemoteAuthProvider  # type: ignore[import-not-found, unused-ignore]
    from fastmcp.server.middleware import Middleware  # type: ignore[import-not-found, unused-ignore]

__all__ = ["fastmcp_auth", "permission_check", "fastmcp_refusals"]

# Per tools/call (set by `fastmcp_refusals`): tool name -> (required, missing) of a refused check.
_REFUSALS: ContextVar[dict[str, tuple[frozenset[str], frozenset[str]]] | None] = ContextVar(
    "auth_fastmcp_refusals", default=None
)


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
    included) and certificate-bound tokens are refused (the connection is out of reach). The
    access token it hands FastMCP carries the `VerifiedToken` (``current_token()``, ``@requires``).

    Args:
        settings: the auth settings (issuers, resource URL, aliases, implication rules).
        verifier: defaults to a `JWTVerifier` over ``settings``.
        scopes_supported: permission names to advertise in the metadata.

    Raises:
        ImportError: ``fastmcp`` is not installed.
    """
    from fastmcp.server.auth import AccessToken, RemoteAuthProvider  # type: ignore[import-not-found, unused-ignore]
    from fastmcp.server.auth import (  # type: ignore[import-not-found, unused-ignore]
        TokenVerifier as FastMCPTokenVerifier,
    )
    from pydantic import AnyHttpUrl

    ours: TokenVerifier = verifier if verifier is not None else JWTVerifier(settings)
    parts = urlsplit(settings.resource_url)
    base_url = f"{parts.scheme}://{parts.netloc}"
    resource, binding, aliases = settings.resource_url, settings.cert_binding, settings.permission_aliases

    class _VerifiedFastMCPToken(AccessToken, VerifiedAccessToken):  # type: ignore[misc, unused-ignore]
        """FastMCP's access token (what its ``get_access_token()`` expects), carrying our principal."""

    class _OurVerifier(FastMCPTokenVerifier):  # type: ignore[misc, unused-ignore]
        async def verify_token(self, token: str) -> AccessToken | None:
            verified = await verified_or_none(ours, token, cert_binding=binding)
            if verified is None:
                return None
            fields = access_fields(verified, token, resource=resource)
            return carry(_VerifiedFastMCPToken.model_validate(fields), verified, aliases)

    provider: RemoteAuthProvider = RemoteAuthProvider(
        token_verifier=_OurVerifier(base_url=base_url),
        authorization_servers=[AnyHttpUrl(url) for url in dict.fromkeys(settings.issuer_urls)],
        base_url=base_url,
        scopes_supported=sorted(set(scopes_supported)),
        resource_name=settings.resource_name,
    )
    return provider


class _PermissionCheck:
    """A FastMCP auth check: the token's scopes (our permissions) must cover ``required``.

    A refusal is noted for `fastmcp_refusals` (during a ``tools/call`` only), which FastMCP's own
    lookup would otherwise turn into "Unknown tool".
    """

    __slots__ = ("required",)

    def __init__(self, required: frozenset[str]) -> None:
        self.required = required

    def __call__(self, ctx: Any) -> bool:
        token = ctx.token
        granted = frozenset(token.scopes) if token is not None else frozenset()
        missing = self.required - granted
        if not missing:
            return True
        refusals = _REFUSALS.get()
        name = getattr(ctx.component, "name", None)
        if refusals is not None and token is not None and isinstance(name, str):
            refusals[name] = (self.required, missing)
        return False

    def __repr__(self) -> str:
        return f"permission_check({' '.join(sorted(self.required))})"


def permission_check(*permissions: str, settings: AuthSettings | None = None) -> Any:
    """A FastMCP ``auth=`` check requiring our permission names, after the deployment's aliases.

    FastMCP hides the tool from a token without them; with `fastmcp_refusals` installed a call
    to it is refused naming the permission. Implication rules need nothing here: our verifier
    already closed the token's scopes under them.

    Raises:
        ValueError: no permission given, or a name that is not a scope token.
    """
    if not permissions:
        raise ValueError("permission_check() needs at least one permission")
    aliases = settings.permission_aliases if settings is not None else {}
    return _PermissionCheck(frozenset(aliases.get(p, p) for p in (parse_permission_name(p) for p in permissions)))


@contextmanager
def _noting_refusals() -> Iterator[dict[str, tuple[frozenset[str], frozenset[str]]]]:
    refusals: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    handle = _REFUSALS.set(refusals)
    try:
        yield refusals
    finally:
        _REFUSALS.reset(handle)


def fastmcp_refusals() -> Middleware:
    """A FastMCP middleware: a refused tool call reads as a refusal naming the permission.

    Without it FastMCP answers a call to a tool hidden by `permission_check` with "Unknown tool:
    'archive'" (its lookup cannot tell "refused" from "absent"), and a refusal by ``@requires``
    inside the tool with "Error calling tool 'archive'" (or less, with ``mask_error_details``).
    With it both read "insufficient_scope: tool archive needs permission api_write_access, which
    the access token does not grant", still as an error result inside HTTP 200. Pass it in
    ``FastMCP(..., middleware=[fastmcp_refusals()])``.

    Raises:
        ImportError: ``fastmcp`` is not installed.
    """
    from fastmcp.exceptions import (  # type: ignore[import-not-found, unused-ignore]
        InsufficientScopeError,
        NotFoundError,
    )
    from fastmcp.exceptions import ToolError as FastMCPToolError  # type: ignore[import-not-found, unused-ignore]
    from fastmcp.server.middleware import Middleware  # type: ignore[import-not-found, unused-ignore]

    class _Refusals(Middleware):  # type: ignore[misc, unused-ignore]
        async def on_call_tool(self, context: Any, call_next: Any) -> Any:
            name = context.message.name
            with _noting_refusals() as refusals:
                try:
                    return await call_next(context)
                except NotFoundError:
                    refused = refusals.get(name) if isinstance(name, str) else None
                    if refused is None:
                        raise
                    missing = refused[1]
                except FastMCPToolError as exc:
                    if not isinstance(exc.__cause__, InsufficientScope):
                        raise
                    missing = exc.__cause__.missing
            raise InsufficientScopeError(sorted(missing), message=refusal_message(missing, name)) from None

    middleware: Middleware = _Refusals()
    return middleware
