"""Onward calls in ``python -m server --dev``: the example downstream API, a Destination service
look-alike, and the downstreams that reach them in each mode, all on the one port.

What ``--dev`` adds (every credential here is fixed and public, for a dev loop only):

* at the dev issuer: the server's own client ``mcp-dev-server`` (secret ``mcp-dev-server-secret``,
  granted ``backend_read`` on the backend, as an IAS application is granted a dependency's API),
  the Destination service binding's client ``dev-destination``, and the applications
  ``notes-backend`` (client id ``dev-backend``) and ``destination-service``;
* ``/dev-backend``: the example downstream API (`server._dev_backend`);
* ``/dev-destinations``: the Destination service look-alike (`server._dev_destination`) with
  destinations ``notes-backend-user`` (OAuth2JWTBearer), ``notes-backend-exchange``
  (OAuth2TokenExchange) and ``notes-backend-app`` (OAuth2ClientCredentials);
* the downstreams below, and the tool ``downstream_whoami`` that calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.routing import BaseRoute, Mount

from auth import ConfigError
from auth.client import ClientCredentials, ExchangeTarget, ias_resource
from auth.downstream import DestinationBinding, Downstream, DownstreamSettings, load_downstreams
from auth.testing import Audience

from ._dev_backend import BACKEND_CLIENT_ID, BACKEND_NAME, BACKEND_PATH, BACKEND_READ, backend_app, backend_settings
from ._dev_destination import DESTINATION_PATH, DESTINATION_SERVICE_CLIENT_ID, DevDestinationService
from ._dev_issuer import DevClient

__all__ = ["DEV_DOWNSTREAMS", "DevOnward", "dev_onward", "onward_clients", "onward_applications"]

SERVER_CLIENT = ("mcp-dev-server", "mcp-dev-server-secret")
DESTINATION_CLIENT = ("dev-destination", "dev-destination-secret")
DESTINATION_SERVICE_NAME = "destination-service"

DEV_DOWNSTREAMS: Mapping[str, str] = {
    "backend": "on behalf of the caller: JWT bearer grant (RFC 7523), as IAS does it",
    "backend-rfc8693": "on behalf of the caller: RFC 8693 token exchange",
    "backend-as-server": "as this server: client credentials for the backend's resource",
    "backend-destination": "BTP destination notes-backend-user (OAuth2JWTBearer)",
    "backend-destination-app": "BTP destination notes-backend-app (OAuth2ClientCredentials)",
}


def onward_clients() -> dict[str, DevClient]:
    """The dev issuer's clients for onward calls: the server itself and the Destination service binding."""
    return {
        SERVER_CLIENT[0]: DevClient(SERVER_CLIENT[1], (BACKEND_READ,)),
        DESTINATION_CLIENT[0]: DevClient(DESTINATION_CLIENT[1], ()),
    }


def onward_applications(base_url: str) -> list[Audience]:
    """The applications besides the MCP server: the backend, and the Destination service."""
    return [
        Audience(BACKEND_CLIENT_ID, (base_url + BACKEND_PATH,), BACKEND_NAME),
        Audience(DESTINATION_SERVICE_CLIENT_ID, (), DESTINATION_SERVICE_NAME),
    ]


@dataclass(frozen=True)
class DevOnward:
    """The routes to mount beside ``/mcp``, the downstream settings, and the banner's lines."""

    routes: list[BaseRoute]
    downstreams: DownstreamSettings
    banner: str


def dev_onward(base_url: str, issuer_url: str, token_endpoint: str, env: Mapping[str, str]) -> DevOnward:
    """Everything ``--dev`` needs for onward calls to its own example backend.

    ``MCP_DOWNSTREAMS`` in ``env`` adds downstreams of the user's, called with the server's dev
    credentials (``mcp-dev-server``).

    Raises:
        ConfigError: a bad ``MCP_DOWNSTREAMS``.
    """
    backend_url = base_url + BACKEND_PATH
    target = ias_resource(name=BACKEND_NAME)
    common = {"Type": "HTTP", "URL": backend_url, "ProxyType": "Internet", "tokenServiceURL": token_endpoint,
              "clientId": SERVER_CLIENT[0], "clientSecret": SERVER_CLIENT[1], "tokenService.body.resource": target}
    destinations = {
        "notes-backend-user": {"Name": "notes-backend-user", "Authentication": "OAuth2JWTBearer", **common},
        "notes-backend-exchange": {"Name": "notes-backend-exchange", "Authentication": "OAuth2TokenExchange", **common},
        "notes-backend-app": {"Name": "notes-backend-app", "Authentication": "OAuth2ClientCredentials", **common},
    }
    service = DevDestinationService(issuer_url, base_url + DESTINATION_PATH, destinations)
    routes: list[BaseRoute] = [
        Mount(BACKEND_PATH, app=backend_app(backend_settings(issuer_url, base_url))),
        Mount(DESTINATION_PATH, app=service.app()),
    ]
    credentials = ClientCredentials(SERVER_CLIENT[0], token_endpoint=token_endpoint, client_secret=SERVER_CLIENT[1])
    binding = DestinationBinding(
        base_url + DESTINATION_PATH,
        ClientCredentials(
            DESTINATION_CLIENT[0], token_endpoint=token_endpoint, client_secret=DESTINATION_CLIENT[1],
            resource=ias_resource(name=DESTINATION_SERVICE_NAME),
        ),
    )
    timeout = 10.0
    examples = [
        Downstream("backend", "on-behalf-of", backend_url,
                   ExchangeTarget("jwt-bearer", resource=target), None, timeout),
        Downstream("backend-rfc8693", "on-behalf-of", backend_url,
                   ExchangeTarget("token-exchange", audience=BACKEND_CLIENT_ID, token_format=None), None, timeout),
        Downstream("backend-as-server", "as-server", backend_url,
                   ExchangeTarget(resource=target, token_format=None), None, timeout),
        Downstream("backend-destination", "destination", destination="notes-backend-user", timeout_s=timeout),
        Downstream("backend-destination-app", "destination", destination="notes-backend-app", timeout_s=timeout),
    ]
    user_env = {k: v for k, v in env.items() if k.startswith(("MCP_DOWNSTREAM", "MCP_DESTINATION"))}
    own = {"MCP_DOWNSTREAM_CLIENT_ID": SERVER_CLIENT[0], "MCP_DOWNSTREAM_CLIENT_SECRET": SERVER_CLIENT[1],
           "MCP_DOWNSTREAM_TOKEN_URL": token_endpoint}
    extra = load_downstreams({**user_env, **own}) if user_env.get("MCP_DOWNSTREAMS", "").strip() else None
    clash = sorted(set(extra.downstreams) & set(DEV_DOWNSTREAMS)) if extra is not None else []
    if clash:
        raise ConfigError("MCP_DOWNSTREAMS", f"{clash[0]!r} is one of --dev's example downstreams; rename it")
    settings = DownstreamSettings(
        downstreams={**{d.name: d for d in examples}, **(extra.downstreams if extra is not None else {})},
        credentials=credentials,
        destination_service=binding,
    )
    lines = ["", "Onward calls (docs/onward-calls.md): the tool downstream_whoami calls the example API "
             f"{backend_url}/caller through:"]
    lines += [f"  {name:<24} {what}" for name, what in DEV_DOWNSTREAMS.items()]
    return DevOnward(routes, settings, "\n".join(lines))
