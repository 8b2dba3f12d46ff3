"""The embedded dev issuer of ``python -m server --dev``: the library's local issuer, mounted at ``/dev-ias``.

`auth.testing.Issuer` does the work (discovery, JWKS, client-credentials tokens with IAS's claim
set, client secrets and ``tls_client_auth``, certificate-bound tokens); this module fixes it to
the notes server: one port serves both the MCP endpoint and the issuer, every token is for the
server's client id ``mcp-dev-server`` (its URL and IAS URNs are the accepted RFC 8707 resources),
the clients are ``dev-full``, ``dev-read`` and any from ``MCP_DEV_CLIENTS``::

    issuer = DevIssuer("http://127.0.0.1:8080")             # issuer URL: <base>/dev-ias
    app = Starlette(routes=[*issuer.well_known_routes(), issuer.mount()])

Several instances can share one standalone issuer instead (``btp-mcp-issuer``,
``MCP_DEV_ISSUER``): see ``server/_main.py``. Secrets and tokens are never logged.
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from auth.testing import CLIENT_PERMISSIONS, Audience, Issuer, RegisteredClient, parse_clients

__all__ = [
    "DEFAULT_CLIENTS",
    "DEFAULT_MOUNT_PATH",
    "DevClient",
    "DevIssuer",
    "parse_dev_clients",
    "startup_banner",
]

logger = logging.getLogger(__name__)

DEFAULT_MOUNT_PATH = "/dev-ias"
MCP_PROTOCOL_VERSION = "2025-11-25"


@dataclass(frozen=True, slots=True)
class DevClient:
    """A registered client: its secret and the API permission groups granted to it.

    ``certificate_thumbprint`` (``base64url(SHA-256(DER))``, as `auth.certificate_thumbprint`
    computes it) registers an X.509 client for ``tls_client_auth``; such a client may have no
    secret (``DevClient(None, apis, certificate_thumbprint=...)``).
    """

    secret: str | None
    apis: tuple[str, ...] = ()
    certificate_thumbprint: str | None = None

    def __repr__(self) -> str:  # keep the secret out of reprs, logs and tracebacks
        secret = "'***'" if self.secret is not None else "None"
        thumbprint = self.certificate_thumbprint
        return f"DevClient(secret={secret}, apis={self.apis!r}, certificate_thumbprint={thumbprint!r})"

    def registered(self, client_id: str) -> RegisteredClient:
        """The library's form of this client."""
        return RegisteredClient(client_id, self.secret, self.apis, self.certificate_thumbprint)


DEFAULT_CLIENTS: Mapping[str, DevClient] = {
    "dev-full": DevClient("dev-full-secret", ("api_read_access", "api_write_access")),
    "dev-read": DevClient("dev-read-secret", ("api_read_access",)),
}

DEV_CLIENTS_SETTING = "MCP_DEV_CLIENTS"
DEV_ISSUER_SETTING = "MCP_DEV_ISSUER"


def parse_dev_clients(value: str, *, reserved: Iterable[str] = DEFAULT_CLIENTS) -> dict[str, DevClient]:
    """Extra dev clients from ``MCP_DEV_CLIENTS`` (pure).

    Syntax: comma-separated ``<client_id>:<secret>:<group>[+<group>...]``, e.g.
    ``my-agent:my-secret:api_read_access+api_archive``; an empty group list
    (``nobody:pw:``) is a client without permission groups. Client ids and groups are
    ``[A-Za-z0-9._-]``; a secret has no ``:``, ``,`` or whitespace.

    Raises:
        ConfigError: naming ``MCP_DEV_CLIENTS`` and the faulty entry (its secret masked).
    """
    parsed = parse_clients(value, setting=DEV_CLIENTS_SETTING, reserved=reserved)
    return {cid: DevClient(c.secret, c.permissions) for cid, c in parsed.items()}


_DEFAULT_APIS: tuple[str, ...] = ("\0default",)  # sentinel for mint(apis=...): "the client's groups"


class DevIssuer:
    """A local IAS look-alike for the notes server: one RSA-2048 key, fixed clients, client credentials and exchange.

    Args:
        base_url: where the MCP server is reachable, e.g. ``http://127.0.0.1:8080``.
        mount_path: where the issuer app is mounted under ``base_url``.
        server_client_id: the MCP server's client id, always the token's ``aud``.
        server_name: the server's IAS application name, for ``resource=urn:...:name:<name>``.
        resource_url: the server's RFC 8707 resource URL; defaults to ``<base_url>/mcp``.
        token_lifetime: seconds from ``iat`` to ``exp``.
        extra_clients: clients added to (or replacing) :data:`DEFAULT_CLIENTS`, as
            ``{client_id: DevClient(secret, apis)}`` or ``{client_id: (secret, apis)}``; an X.509
            client as ``DevClient(None, apis, certificate_thumbprint=...)``.
        app_tid: the tenant id put in every token; a fresh UUID by default.
        private_key: the signing key; a fresh RSA-2048 key by default.
        clock: seconds since the epoch, for ``iat``/``exp``.
        applications: further applications tokens may be asked for by ``resource`` (or RFC 8693
            ``audience``), after the MCP server: the onward calls' downstream APIs.

    Raises:
        ValueError: on a malformed URL, mount path, lifetime, or client.
    """

    def __init__(
        self,
        base_url: str,
        *,
        mount_path: str = DEFAULT_MOUNT_PATH,
        server_client_id: str = "mcp-dev-server",
        server_name: str = "mcp-dev-server",
        resource_url: str | None = None,
        token_lifetime: int = 3600,
        extra_clients: Mapping[str, DevClient | tuple[str, Iterable[str]]] | None = None,
        app_tid: str | None = None,
        private_key: rsa.RSAPrivateKey | None = None,
        clock: Callable[[], float] = time.time,
        applications: Iterable[Audience] = (),
    ) -> None:
        self.base_url = _checked_base_url(base_url)
        if not mount_path.startswith("/") or mount_path.endswith("/") or "?" in mount_path or "#" in mount_path:
            raise ValueError(f"mount_path must look like '/dev-ias', got {mount_path!r}")
        self.mount_path = mount_path
        self.server_client_id = server_client_id
        self.server_name = server_name
        self.resource_url = resource_url if resource_url is not None else self.base_url + "/mcp"
        clients: dict[str, DevClient] = dict(DEFAULT_CLIENTS)
        for client_id, spec in (extra_clients or {}).items():
            clients[client_id] = spec if isinstance(spec, DevClient) else DevClient(spec[0], tuple(spec[1]))
        self._dev_clients = clients
        self.library = Issuer(
            self.base_url + mount_path,
            clients=[client.registered(client_id) for client_id, client in clients.items()],
            audiences=[Audience(server_client_id, (self.resource_url,), server_name), *applications],
            key=private_key,
            token_lifetime=token_lifetime,
            app_tid=app_tid or str(uuid.uuid4()),
            clock=clock,
            logger=logger,
        )
        """The library issuer doing the work (`auth.testing.Issuer`)."""

    # --- URLs and facts ----------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The issuer URL: ``<base_url><mount_path>``."""
        return self.library.url

    @property
    def token_lifetime(self) -> int:
        return self.library.token_lifetime

    @property
    def app_tid(self) -> str:
        return self.library.app_tid

    @property
    def kid(self) -> str:
        return self.library.kid

    @property
    def token_endpoint(self) -> str:
        return self.library.token_endpoint

    @property
    def jwks_uri(self) -> str:
        return self.library.jwks_uri

    @property
    def discovery_url(self) -> str:
        return self.library.discovery_url

    @property
    def clients(self) -> Mapping[str, DevClient]:
        """The registered clients (a copy)."""
        return dict(self._dev_clients)

    def accepted_resources(self) -> frozenset[str]:
        """The RFC 8707 ``resource`` values that name the MCP server."""
        return self.library.accepted_resources()

    def metadata(self) -> dict[str, object]:
        """The OpenID discovery / RFC 8414 metadata document."""
        return self.library.metadata()

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JSON Web Key Set served at :attr:`jwks_uri`."""
        return self.library.jwks()

    def mint(
        self,
        client_id: str,
        *,
        apis: Iterable[str] | None = _DEFAULT_APIS,
        resource: str | None = None,
        client_certificate_thumbprint: str | None = None,
        lifetime: int | None = None,
        header: Mapping[str, object] | None = None,
        **overrides: object,
    ) -> str:
        """Sign a token as the token endpoint would, without HTTP (for tests).

        Args:
            client_id: ``sub`` and ``azp``; need not be a registered client.
            apis: the ``ias_apis`` groups; by default the registered client's groups. ``None``
                or empty omits the claim, as IAS does.
            resource: as the token request's ``resource`` parameter.
            client_certificate_thumbprint: base64url SHA-256 of the client certificate's DER;
                adds ``cnf: {"x5t#S256": ...}`` (RFC 8705 §3.1).
            lifetime: seconds until ``exp``; defaults to the issuer's lifetime.
            header: JOSE header fields to add or replace (``None`` removes one, e.g. ``typ``).
            **overrides: claims to add or replace; a value of ``None`` removes the claim.

        Raises:
            ValueError: when ``resource`` does not name the server.
        """
        permissions: Any = CLIENT_PERMISSIONS if apis is _DEFAULT_APIS else apis
        return self.library.mint(
            client_id,
            permissions=permissions,
            resource=resource,
            certificate_thumbprint=client_certificate_thumbprint,
            lifetime=lifetime,
            header=header,
            claims=overrides,
        )

    # --- HTTP --------------------------------------------------------------------------------

    def app(self) -> Any:
        """The issuer as an ASGI app, to mount at :attr:`mount_path` (see :meth:`mount`)."""
        return self.library.app()

    def mount(self) -> Mount:
        """``Mount(mount_path, app=self.app())`` for the MCP server's route list."""
        return Mount(self.mount_path, app=self.app())

    def well_known_routes(self) -> list[BaseRoute]:
        """Metadata at the root-level locations MCP clients try first for an issuer with a path.

        RFC 8414 §3.1 inserts the well-known segment between host and path
        (``/.well-known/oauth-authorization-server/dev-ias``); the MCP SDK then tries the same
        for ``openid-configuration`` before the OIDC form served by :meth:`app`. Add these routes
        to the app serving the host's root.
        """
        issuer_path = urlsplit(self.issuer).path
        return [
            Route(f"/.well-known/{doc}{issuer_path}", self._metadata_endpoint, methods=["GET"])
            for doc in ("oauth-authorization-server", "openid-configuration")
        ]

    async def _metadata_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.metadata())


def _checked_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"base_url must be an absolute http(s) URL without query, got {base_url!r}")
    return base_url.rstrip("/")


def startup_banner(
    base_url: str,
    resource_url: str,
    *,
    mount_path: str = DEFAULT_MOUNT_PATH,
    ca_file: str | None = None,
    client_cert_file: str | None = None,
    client_key_file: str | None = None,
    x509_client_id: str | None = None,
    extra_clients: Mapping[str, DevClient] | None = None,
    shared_issuer: str | None = None,
) -> str:
    """The "what to do next" text for ``--dev``: fetch a token, then call a tool with it.

    With ``ca_file`` (``--dev --mtls``) every curl trusts the dev CA, and with the client
    certificate files the X.509 flow is shown too: a token over mutual TLS
    (``tls_client_auth``), bound to the certificate, then the MCP call with the same certificate.
    The secret shown is the fixed, public ``dev-read`` credential, not a real one. With
    ``shared_issuer`` (``MCP_DEV_ISSUER``) the tokens come from that standalone issuer instead.
    """
    issuer_url = shared_issuer.rstrip("/") if shared_issuer else base_url.rstrip("/") + mount_path
    token_endpoint = issuer_url + "/oauth2/token"
    call = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_notes","arguments":{}}}'
    cacert = f" --cacert {shlex.quote(ca_file)}" if ca_file else ""
    extract = "    | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    mcp_call = [
        "    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\",
        f"    -H 'MCP-Protocol-Version: {MCP_PROTOCOL_VERSION}' \\",
        f"    -d '{call}'",
    ]
    if shared_issuer:
        first = (f"Dev issuer (IAS look-alike): {issuer_url} (shared, {DEV_ISSUER_SETTING}; a token for"
                 f" resource={resource_url} needs the issuer started with --resource {resource_url})")
        clients = "Clients: those of the shared issuer (by default dev-full and dev-read)"
    else:
        first = f"Dev issuer (IAS look-alike): {issuer_url}"
        clients = (
            "Clients: dev-full (read+write), dev-read (read)"
            + (f", {x509_client_id} (read+write, X.509 certificate)" if x509_client_id else "")
            + "".join(f", {cid} ({'+'.join(c.apis) or 'no groups'}, {DEV_CLIENTS_SETTING})"
                      for cid, c in (extra_clients or {}).items())
        )
    lines = [
        first,
        clients + ". Get a token and call a tool:",
        "",
        f"  TOKEN=$(curl -s{cacert} -u dev-read:dev-read-secret -d grant_type=client_credentials"
        f" {token_endpoint} \\",
        extract,
        f"  curl -s{cacert} {resource_url} -H \"Authorization: Bearer $TOKEN\" \\",
        *mcp_call,
    ]
    if ca_file and client_cert_file and client_key_file and x509_client_id:
        cert = f"--cert {shlex.quote(client_cert_file)} --key {shlex.quote(client_key_file)}"
        lines += [
            "",
            "Mutual TLS (client certificates optional; a token fetched with one is bound to it,"
            " cnf.x5t#S256):",
            f"  CA certificate:      {ca_file}",
            f"  client certificate:  {client_cert_file}  ({x509_client_id})",
            f"  client key:          {client_key_file}",
            "",
            f"  TOKEN=$(curl -s{cacert} {cert} \\",
            f"    -d grant_type=client_credentials -d client_id={x509_client_id} {token_endpoint} \\",
            extract,
            f"  curl -s{cacert} {cert} {resource_url} -H \"Authorization: Bearer $TOKEN\" \\",
            *mcp_call,
            "",
            "  # or the same with the CLI:",
            f"  MCP_CLIENT_ID={x509_client_id} MCP_CLIENT_CERT={shlex.quote(client_cert_file)}"
            f" MCP_CLIENT_KEY={shlex.quote(client_key_file)} \\",
            f"  MCP_ISSUER={issuer_url}"
            f" python -m auth tools call {resource_url} whoami --ca-bundle {shlex.quote(ca_file)}",
        ]
    return "\n".join(lines)
