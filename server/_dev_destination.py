"""A local look-alike of the SAP BTP Destination service, for ``--dev`` and tests.

It answers SAP's "Find a destination" API as the service documents it (the same shapes
`auth.downstream.DestinationService` reads), and like the real service it fetches the
destination's token itself, from the destination's ``tokenServiceURL`` with its ``clientId`` and
``clientSecret``::

    GET /destination-configuration/v1/destinations/{name}[?$skipTokenRetrieval=true]
    Authorization: Bearer <token of the binding's client, addressed to the service>
    X-user-token: <JWT>                      OAuth2JWTBearer, OAuth2UserTokenExchange (JWT bearer grant)
    X-subject-token, X-subject-token-type    OAuth2TokenExchange (RFC 8693)

    200 {"owner": {"SubaccountId": ..., "InstanceId": null}, "destinationConfiguration": {...},
         "authTokens": [{"type": "Bearer", "value": ..., "http_header": {"key": "Authorization",
         "value": "Bearer ..."}, "expires_in": "3600"}], "certificates": [...]}
    404 {"ErrorMessage": "Configuration with the specified name was not found"}

Supported types: ``NoAuthentication``, ``BasicAuthentication``, ``OAuth2ClientCredentials``,
``OAuth2JWTBearer``, ``OAuth2UserTokenExchange``, ``OAuth2TokenExchange`` and
``ClientCertificateAuthentication`` (the keystore named by ``KeyStoreLocation``). Extra token
request parameters come from ``tokenService.body.<name>`` properties (``resource``, ``audience``),
as on BTP. A token the service cannot fetch is reported in ``authTokens[].error`` with HTTP 200,
as the real service does. Only the auth layer's public APIs are used, so this module can move
into ``auth.testing`` beside the local issuer.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auth import AuthSettings, BearerAuthMiddleware, IssuerConfig, JWTVerifier, TokenVerifier
from auth.client import ClientCredentials, ExchangeTarget, TokenProvider, TokenRequestError

__all__ = ["DevDestinationService", "DESTINATION_SERVICE_CLIENT_ID", "DESTINATION_PATH"]

log = logging.getLogger("server.dev_destination")

DESTINATION_SERVICE_CLIENT_ID = "dev-destination-service"
"""The service's application at the issuer: tokens for the service name it in ``aud``."""
DESTINATION_PATH = "/dev-destinations"
_API = "/destination-configuration/v1/destinations/{name}"
_USER = frozenset({"OAuth2JWTBearer", "OAuth2UserTokenExchange"})


class DevDestinationService:
    """The find-destination API over a fixed set of destinations.

    Args:
        issuer_url: the issuer whose tokens (addressed to `DESTINATION_SERVICE_CLIENT_ID`) the
            service accepts.
        resource_url: the service's URL, for its RFC 9728 metadata.
        destinations: by name, each the destination's properties as on BTP (``Name``, ``Type``,
            ``URL``, ``Authentication``, ``tokenServiceURL``, ``clientId``, ``clientSecret``,
            ``tokenService.body.resource``, ``KeyStoreLocation``, ``KeyStorePassword``, ...).
        certificates: keystores by name (bytes), for ``ClientCertificateAuthentication``.
        verifier: checks the service's callers; a `JWTVerifier` by default.
        ca_bundle: trust store for the token service calls.
        subaccount_id: reported as the owner.
    """

    def __init__(
        self,
        issuer_url: str,
        resource_url: str,
        destinations: Mapping[str, Mapping[str, str]],
        *,
        certificates: Mapping[str, bytes] | None = None,
        verifier: TokenVerifier | None = None,
        ca_bundle: str | None = None,
        subaccount_id: str = "00000000-0000-4000-8000-00000000dev0",
    ) -> None:
        self.settings = AuthSettings(
            issuers=(IssuerConfig(issuer=issuer_url, audiences=(DESTINATION_SERVICE_CLIENT_ID,)),),
            resource_url=resource_url,
            resource_name="Destination service (dev)",
        )
        self._destinations = {name: dict(props) for name, props in destinations.items()}
        self._certificates = dict(certificates or {})
        self._verifier = verifier
        self._ca_bundle = ca_bundle
        self._subaccount = subaccount_id
        self._providers: dict[str, TokenProvider] = {}
        self.lookups: list[tuple[str, frozenset[str]]] = []  # (name, caller-token headers seen), for tests

    def app(self) -> Any:
        """The service as an ASGI app (mount it at `DESTINATION_PATH`); every route needs a token."""

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            try:
                yield
            finally:
                await self.aclose()

        routes = [Route(_API, self._find, methods=["GET"])]
        app = Starlette(routes=routes, lifespan=lifespan)
        verifier = self._verifier or JWTVerifier(self.settings)
        protected = ["/destination-configuration"]
        return BearerAuthMiddleware(app, verifier=verifier, settings=self.settings, protect=protected)

    async def aclose(self) -> None:
        """Close the token providers."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()

    def _provider(self, name: str, props: Mapping[str, str]) -> TokenProvider:
        provider = self._providers.get(name)
        if provider is None:
            credentials = ClientCredentials(
                client_id=props["clientId"],
                token_endpoint=props["tokenServiceURL"],
                client_secret=props["clientSecret"],
            )
            provider = TokenProvider(credentials, ca_bundle=self._ca_bundle, timeout=5.0)
            self._providers[name] = provider
        return provider

    async def _find(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        props = self._destinations.get(name)
        self.lookups.append((name, frozenset(h for h in ("x-user-token", "x-subject-token") if h in request.headers)))
        if props is None:
            return JSONResponse({"ErrorMessage": "Configuration with the specified name was not found"}, 404)
        answer: dict[str, Any] = {
            "owner": {"SubaccountId": self._subaccount, "InstanceId": None},
            "destinationConfiguration": props,
        }
        kind = props.get("Authentication", "NoAuthentication")
        if kind == "ClientCertificateAuthentication":
            store = props.get("KeyStoreLocation", "")
            if store in self._certificates:
                content = base64.b64encode(self._certificates[store]).decode("ascii")
                answer["certificates"] = [{"Name": store, "Type": "CERTIFICATE", "Content": content}]
        if request.query_params.get("$skipTokenRetrieval") == "true" or kind in (
            "NoAuthentication", "ClientCertificateAuthentication"
        ):
            return JSONResponse(answer)
        answer["authTokens"] = [await self._auth_token(name, props, kind, request)]
        return JSONResponse(answer)

    async def _auth_token(self, name: str, props: Mapping[str, str], kind: str, request: Request) -> dict[str, Any]:
        if kind == "BasicAuthentication":
            pair = base64.b64encode(f"{props.get('User', '')}:{props.get('Password', '')}".encode()).decode()
            return {"type": "Basic", "value": pair, "http_header": {"key": "Authorization", "value": f"Basic {pair}"}}
        resource = props.get("tokenService.body.resource")
        try:
            if kind == "OAuth2ClientCredentials":
                issued = await self._provider(name, props).issued_token(resource=resource)
            elif kind in _USER:
                user_token = request.headers.get("x-user-token")
                if not user_token:
                    return _failed("the destination needs a user token: X-user-token is missing")
                target = ExchangeTarget("jwt-bearer", resource=resource)
                issued = await self._provider(name, props).exchange(user_token, target)
            elif kind == "OAuth2TokenExchange":
                subject = request.headers.get("x-subject-token")
                if not subject:
                    return _failed("the destination needs X-subject-token and X-subject-token-type")
                target = ExchangeTarget(
                    "token-exchange",
                    resource=resource,
                    audience=props.get("tokenService.body.audience"),
                    token_format=None,
                    subject_token_type=request.headers.get("x-subject-token-type") or "access_token",
                )
                issued = await self._provider(name, props).exchange(subject, target)
            else:
                return _failed(f"authentication type {kind[:60]} is not supported by the dev destination service")
        except TokenRequestError as exc:
            log.info("dev destination service: token retrieval for %s failed: %s", name, type(exc).__name__)
            where = props.get("tokenServiceURL")
            return _failed(f"Retrieval of OAuth token from {where} failed ({type(exc).__name__})")
        token = issued.access_token
        return {
            "type": "Bearer",
            "value": token,
            "http_header": {"key": "Authorization", "value": f"Bearer {token}"},
            "expires_in": str(int(issued.expires_in)),
        }


def _failed(message: str) -> dict[str, Any]:
    return {"type": "", "value": "", "error": message}
