"""The calling side: client-credentials tokens (secret or X.509) and bearer auth for httpx and httpx2.

    creds = ClientCredentials.from_vcap_services(os.environ["VCAP_SERVICES"], resource=ias_resource(name="notes"))
    async with TokenProvider(creds) as provider:
        http = httpx2.AsyncClient(auth=provider.httpx2_auth())

``python -m auth`` (or ``btp-mcp-auth``) is the command line on top of it.
"""

from ._credentials import (
    ClientCredentials,
    DiscoveryError,
    InvalidClient,
    IssuedToken,
    RetryPolicy,
    TokenEndpointUnreachable,
    TokenRequestError,
    TokenRequestRejected,
    TokenResponseError,
    credentials_from_env,
    ias_resource,
)
from ._httpx import Httpx2BearerAuth, HttpxBearerAuth, TokenSource
from ._provider import TokenProvider

__all__ = [
    "ClientCredentials",
    "TokenProvider",
    "IssuedToken",
    "RetryPolicy",
    "credentials_from_env",
    "ias_resource",
    # bearer auth for HTTP clients
    "TokenSource",
    "HttpxBearerAuth",
    "Httpx2BearerAuth",
    # errors
    "TokenRequestError",
    "TokenRequestRejected",
    "InvalidClient",
    "TokenEndpointUnreachable",
    "TokenResponseError",
    "DiscoveryError",
]
