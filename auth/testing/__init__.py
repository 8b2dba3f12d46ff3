"""A local issuer any server can trust, and tokens for a user's own tests.

An IAS look-alike (OpenID discovery, JWKS, a token endpoint with client secrets or X.509
``tls_client_auth``: client credentials, and exchange of its own tokens by the JWT bearer grant
and RFC 8693) for the audiences, RFC 8707 resources and clients you give it, signing with a key
kept in a file so several server instances and restarts agree::

    btp-mcp-issuer --audience my-api --resource http://127.0.0.1:9000/mcp     # or python -m auth.testing

    with LocalIssuer(audiences=["my-api"]) as issuer:      # served on 127.0.0.1, a free port
        settings = issuer.settings(resource_url="http://127.0.0.1:9000/mcp")
        token = issuer.mint("dev-read", permissions=["api_read_access"])
        expired = issuer.mint("dev-read", expired=True)

pytest fixtures: ``pytest_plugins = ["auth.testing.pytest_plugin"]`` (pytest is not a dependency
of ``auth``). Imports only the ``auth`` core. For development and tests only: plain HTTP, public
default credentials (``dev-full``/``dev-full-secret``, ``dev-read``/``dev-read-secret``).
"""

from ._issuer import CLIENT_PERMISSIONS, Issuer
from ._keys import load_or_create_key
from ._registry import DEFAULT_AUDIENCE, DEFAULT_CLIENTS, Audience, RegisteredClient, parse_clients
from ._server import LocalIssuer

__all__ = [
    "Issuer",
    "LocalIssuer",
    "RegisteredClient",
    "Audience",
    "DEFAULT_CLIENTS",
    "DEFAULT_AUDIENCE",
    "CLIENT_PERMISSIONS",
    "load_or_create_key",
    "parse_clients",
]
