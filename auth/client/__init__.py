"""The calling side: client-credentials tokens (secret or X.509), token exchange, bearer auth for httpx and httpx2.

    creds = ClientCredentials.from_vcap_services(os.environ["VCAP_SERVICES"], resource=ias_resource(name="notes"))
    async with TokenProvider(creds) as provider:
        http = httpx2.AsyncClient(auth=provider.httpx2_auth())
        # a token for another API in exchange for the caller's (RFC 7523 JWT bearer, IAS and XSUAA):
        target = ExchangeTarget("jwt-bearer", resource=ias_resource(name="orders"))
        issued = await provider.exchange(caller_token, target)

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
from ._exchange import ExchangeTarget
from ._httpx import Httpx2BearerAuth, HttpxBearerAuth, TokenSource
from ._provider import TokenProvider

__all__ = [
    "ClientCredentials",
    "TokenProvider",
    "IssuedToken",
    "RetryPolicy",
    "credentials_from_env",
    "ias_resource",
    "ExchangeTarget",
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
