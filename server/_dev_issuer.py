"""An embedded, IAS-compatible OAuth issuer for ``python -m server --dev`` and for tests.

It behaves like SAP Cloud Identity Services (IAS) for the client-credentials grant:
discovery, a JWKS, and a token endpoint issuing RS256 JWTs with IAS's claim set
(``sap_id_type``, ``app_tid``, ``ias_apis``, ...). It is mounted as a Starlette sub-app of
the MCP server, so one port serves both:

    issuer = DevIssuer("http://127.0.0.1:8080")             # issuer URL: <base>/dev-ias
    app = Starlette(routes=[*issuer.well_known_routes(), issuer.mount(), ...])

Deliberate differences from IAS, all for a single-server dev loop:

* every token is for the one MCP server: without ``resource`` the audience is the server's
  client id and ``ias_apis`` carries the client's groups (IAS would issue a token for the
  consumer itself, without ``ias_apis``);
* the issuer URL has a path (``/dev-ias``) and may be plain ``http``;
* there is no authorization-code flow: discovery names ``authorization_endpoint`` because MCP
  clients parse RFC 8414 metadata that requires it, and that endpoint only answers an error.

Clients authenticate with a secret (``client_secret_basic``/``client_secret_post``) or, when
the server terminates mutual TLS and puts the peer certificate in the ASGI TLS extension
(``server._tls``), with a registered certificate (``tls_client_auth``, RFC 8705 §2.1:
``client_id`` in the body, no secret). As IAS does, every token requested over a connection
that presented a client certificate is bound to it (``cnf.x5t#S256``, RFC 8705 §3.1), whichever
way the client authenticated.

Secrets and tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import logging
import re
import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from auth import ConfigError, certificate_thumbprint

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
_URN_NAME = "urn:sap:identity:application:provider:name:"
_URN_CLIENTID = "urn:sap:identity:application:provider:clientid:"
_MAX_FORM_BYTES = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1

TokenError = Literal[
    "invalid_request", "invalid_client", "unsupported_grant_type", "invalid_target", "unsupported_response_type"
]


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


DEFAULT_CLIENTS: Mapping[str, DevClient] = {
    "dev-full": DevClient("dev-full-secret", ("api_read_access", "api_write_access")),
    "dev-read": DevClient("dev-read-secret", ("api_read_access",)),
}

DEV_CLIENTS_SETTING = "MCP_DEV_CLIENTS"
_DEV_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DEV_SECRET = re.compile(r"[^\s:,]{1,128}")
_DEV_GROUP = re.compile(r"[A-Za-z0-9._-]{1,128}")


def parse_dev_clients(value: str, *, reserved: Iterable[str] = DEFAULT_CLIENTS) -> dict[str, DevClient]:
    """Extra dev clients from ``MCP_DEV_CLIENTS`` (pure).

    Syntax: comma-separated ``<client_id>:<secret>:<group>[+<group>...]``, e.g.
    ``my-agent:my-secret:api_read_access+api_archive``; an empty group list
    (``nobody:pw:``) is a client without permission groups. Client ids and groups are
    ``[A-Za-z0-9._-]``; a secret has no ``:``, ``,`` or whitespace.

    Raises:
        ConfigError: naming ``MCP_DEV_CLIENTS`` and the faulty entry (its secret masked).
    """
    clients: dict[str, DevClient] = {}
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":")
        shown = f"{parts[0]}:***:{parts[2]}" if len(parts) == 3 else parts[0] + ":..."
        if len(parts) != 3:
            raise ConfigError(
                DEV_CLIENTS_SETTING, f"expected entries like 'client:secret:group+group', got {shown!r}"
            )
        client_id, secret, groups = parts
        if not _DEV_CLIENT_ID.fullmatch(client_id):
            raise ConfigError(DEV_CLIENTS_SETTING, f"client id must be 1-64 of A-Z a-z 0-9 . _ - in {shown!r}")
        if not _DEV_SECRET.fullmatch(secret):
            problem = f"secret must be 1-128 characters without ':' ',' or spaces in {shown!r}"
            raise ConfigError(DEV_CLIENTS_SETTING, problem)
        apis = tuple(groups.split("+")) if groups else ()
        if not all(_DEV_GROUP.fullmatch(g) for g in apis):
            raise ConfigError(DEV_CLIENTS_SETTING, f"groups must be A-Z a-z 0-9 . _ - joined by '+' in {shown!r}")
        if client_id in reserved or client_id in clients:
            raise ConfigError(DEV_CLIENTS_SETTING, f"client id {client_id!r} is already defined")
        clients[client_id] = DevClient(secret, apis)
    return clients


_DEFAULT_APIS: tuple[str, ...] = ("\0default",)  # sentinel for mint(apis=...): "the client's groups"


class _TokenEndpointError(Exception):
    """An RFC 6749 §5.2 error response; ``description`` is sent, so never put secrets in it."""

    def __init__(self, error: TokenError, description: str, status: int = 400) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> JSONResponse:
        headers = dict(_NO_STORE)
        if self.error == "invalid_client":
            headers["WWW-Authenticate"] = 'Basic realm="dev-ias"'
        return JSONResponse(
            {"error": self.error, "error_description": self.description}, self.status, headers=headers
        )


@dataclass(frozen=True, slots=True)
class _Authenticated:
    """The outcome of client authentication, with the thumbprint of the TLS client certificate if any."""

    client_id: str
    client: DevClient
    certificate_thumbprint: str | None = None


class DevIssuer:
    """A local IAS look-alike: one RSA-2048 key, fixed clients, client-credentials only.

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
    ) -> None:
        self.base_url = _checked_base_url(base_url)
        if not mount_path.startswith("/") or mount_path.endswith("/") or "?" in mount_path or "#" in mount_path:
            raise ValueError(f"mount_path must look like '/dev-ias', got {mount_path!r}")
        if token_lifetime <= 0:
            raise ValueError("token_lifetime must be positive")
        self.mount_path = mount_path
        self.issuer = self.base_url + mount_path
        self.server_client_id = server_client_id
        self.server_name = server_name
        self.resource_url = resource_url if resource_url is not None else self.base_url + "/mcp"
        self.token_lifetime = token_lifetime
        self.app_tid = app_tid or str(uuid.uuid4())
        self._clock = clock
        self._clients: dict[str, DevClient] = dict(DEFAULT_CLIENTS)
        for client_id, spec in (extra_clients or {}).items():
            client = spec if isinstance(spec, DevClient) else DevClient(spec[0], tuple(spec[1]))
            if not client_id or not (client.secret or client.certificate_thumbprint):
                raise ValueError(
                    f"client {client_id!r} needs a non-empty id and a secret or a certificate thumbprint"
                )
            self._clients[client_id] = client

        key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if key.key_size < 2048:
            raise ValueError("the signing key must have at least 2048 bits")
        self._key = RSAKey.import_key(key)
        self.kid = self._key.thumbprint()  # RFC 7638: stable for the key, unique enough
        self._key = RSAKey.import_key(key, {"kid": self.kid, "use": "sig", "alg": "RS256"})

    # --- URLs ------------------------------------------------------------------------------

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/oauth2/token"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/oauth2/certs"

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def clients(self) -> Mapping[str, DevClient]:
        """The registered clients (a copy)."""
        return dict(self._clients)

    def accepted_resources(self) -> frozenset[str]:
        """The RFC 8707 ``resource`` values that name the MCP server."""
        return frozenset(
            {self.resource_url, _URN_NAME + self.server_name, _URN_CLIENTID + self.server_client_id}
        )

    # --- documents -------------------------------------------------------------------------

    def metadata(self) -> dict[str, object]:
        """The OpenID discovery / RFC 8414 metadata document.

        Served over ``https``, the issuer also advertises ``tls_client_auth`` and certificate-bound
        tokens (RFC 8705 §2.1.1, §3.3); over plain ``http`` neither is possible.
        """
        doc: dict[str, object] = {
            "issuer": self.issuer,
            # Not implemented (answers unsupported_response_type), but RFC 8414 §2 requires the
            # field and the MCP SDK's OAuthMetadata refuses documents without it.
            "authorization_endpoint": self.issuer + "/oauth2/authorize",
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_uri,
            # "code" as IAS advertises it: mcp-remote's --client-credentials builds an authorization
            # URL (never visited) before it takes the client_credentials path, and refuses an
            # issuer whose metadata lacks "code" ("Incompatible auth server").
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        if self.base_url.startswith("https://"):
            doc["token_endpoint_auth_methods_supported"] = [
                "client_secret_basic",
                "client_secret_post",
                "tls_client_auth",
            ]
            doc["tls_client_certificate_bound_access_tokens"] = True
        return doc

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JSON Web Key Set served at :attr:`jwks_uri`."""
        public = self._key.as_dict(private=False)
        jwk = {name: str(public[name]) for name in ("kty", "kid", "use", "alg", "n", "e")}
        return {"keys": [jwk]}

    # --- minting ---------------------------------------------------------------------------

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
        if apis is _DEFAULT_APIS:
            registered = self._clients.get(client_id)
            apis = registered.apis if registered else ()
        claims = self._claims(
            client_id,
            apis=tuple(apis or ()),
            audience=self._audience(resource),
            thumbprint=client_certificate_thumbprint,
            lifetime=self.token_lifetime if lifetime is None else lifetime,
        )
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return self._sign(claims, header)

    def _audience(self, resource: str | None) -> list[str]:
        if resource is None:
            return [self.server_client_id]
        if resource not in self.accepted_resources():
            raise ValueError("resource does not name this server")
        if resource == self.resource_url:
            return [self.server_client_id, resource]
        return [self.server_client_id]

    def _claims(
        self,
        client_id: str,
        *,
        apis: tuple[str, ...],
        audience: list[str],
        thumbprint: str | None,
        lifetime: int,
    ) -> dict[str, object]:
        now = int(self._clock())
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": client_id,
            "azp": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "jti": str(uuid.uuid4()),
            "sap_id_type": "app",
            "app_tid": self.app_tid,
        }
        if apis:
            claims["ias_apis"] = list(apis)
        if thumbprint is not None:
            claims["cnf"] = {"x5t#S256": thumbprint}
        return claims

    def _sign(self, claims: dict[str, object], header: Mapping[str, object] | None = None) -> str:
        protected: dict[str, object] = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        for name, value in (header or {}).items():
            if value is None:
                protected.pop(name, None)
            else:
                protected[name] = value
        alg = str(protected["alg"])
        return jwt.encode(protected, claims, self._key, algorithms=[alg], default_type=None)

    # --- HTTP ------------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The issuer as an ASGI app, to mount at :attr:`mount_path` (see :meth:`mount`)."""
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._metadata_endpoint, methods=["GET"]),
                Route("/.well-known/oauth-authorization-server", self._metadata_endpoint, methods=["GET"]),
                Route("/oauth2/certs", self._jwks_endpoint, methods=["GET"]),
                Route("/oauth2/token", self._token_endpoint, methods=["POST"]),
                Route("/oauth2/authorize", self._authorize_endpoint, methods=["GET", "POST"]),
            ]
        )

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

    async def _jwks_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.jwks())

    async def _authorize_endpoint(self, request: Request) -> Response:
        return _TokenEndpointError(
            "unsupported_response_type", "the dev issuer supports only the client_credentials grant"
        ).response()

    async def _token_endpoint(self, request: Request) -> Response:
        try:
            form = await _read_form(request)
            who = self._authenticate(request, form)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise _TokenEndpointError("invalid_request", "grant_type is missing")
            if grant_type != "client_credentials":
                raise _TokenEndpointError("unsupported_grant_type", "only client_credentials is supported")
            try:
                audience = self._audience(form.get("resource"))
            except ValueError:
                raise _TokenEndpointError("invalid_target", "resource does not name a known application") from None
        except _TokenEndpointError as exc:
            logger.info("dev issuer: token request rejected: %s", exc.error)
            return exc.response()

        claims = self._claims(
            who.client_id,
            apis=who.client.apis,
            audience=audience,
            thumbprint=who.certificate_thumbprint,
            lifetime=self.token_lifetime,
        )
        token = self._sign(claims)
        logger.info(
            "dev issuer: issued token client_id=%r aud=%r jti=%s bound=%s",
            who.client_id,
            audience,
            claims["jti"],
            "yes" if who.certificate_thumbprint else "no",
        )
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime},
            headers=_NO_STORE,
        )

    def _authenticate(self, request: Request, form: Mapping[str, str]) -> _Authenticated:
        """Exactly one of client_secret_basic, client_secret_post (RFC 6749 §2.3.1) and
        tls_client_auth (RFC 8705 §2.1: ``client_id`` in the body, the certificate on the connection).

        A client certificate on the connection binds the token whichever method authenticated.

        Raises:
            _TokenEndpointError: invalid_client (401) or invalid_request.
        """
        thumbprint = _presented_thumbprint(request)
        authorization = request.headers.get("authorization")
        if authorization is not None:
            client_id, secret = _parse_basic(authorization)
            if "client_secret" in form:
                # §2.3: "The client MUST NOT use more than one authentication method in each request."
                raise _TokenEndpointError("invalid_request", "more than one client authentication method")
            if "client_id" in form and form["client_id"] != client_id:
                raise _TokenEndpointError("invalid_request", "client_id does not match the credentials")
            who = self._check_secret(client_id, secret)
        elif "client_id" in form and "client_secret" in form:
            who = self._check_secret(form["client_id"], form["client_secret"])
        elif "client_id" in form and thumbprint is not None:
            who = self._check_certificate(form["client_id"], thumbprint)
        else:
            raise _TokenEndpointError("invalid_client", "client authentication is required", 401)
        return dataclasses.replace(who, certificate_thumbprint=thumbprint)

    def _check_secret(self, client_id: str, secret: str) -> _Authenticated:
        client = self._clients.get(client_id)
        # Compare even for an unknown client, so timing does not reveal which ids exist.
        expected = client.secret if client and client.secret is not None else "\0no such client"
        matches = hmac.compare_digest(secret.encode(), expected.encode())
        if client is None or client.secret is None or not matches:
            raise _TokenEndpointError("invalid_client", "client authentication failed", 401)
        return _Authenticated(client_id, client)

    def _check_certificate(self, client_id: str, thumbprint: str) -> _Authenticated:
        client = self._clients.get(client_id)
        registered = client.certificate_thumbprint if client else None
        matches = hmac.compare_digest(thumbprint.encode(), (registered or "\0no certificate").encode())
        if client is None or registered is None or not matches:
            raise _TokenEndpointError("invalid_client", "client authentication failed", 401)
        return _Authenticated(client_id, client)


def _presented_thumbprint(request: Request) -> str | None:
    """``x5t#S256`` of the client certificate of the TLS connection (ASGI TLS extension), or None.

    Only the server's own TLS layer is believed: the issuer never reads X-Forwarded-Client-Cert.

    Raises:
        _TokenEndpointError: invalid_client when the extension holds no readable certificate.
    """
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    if not chain:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(str(chain[0]).encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise _TokenEndpointError("invalid_client", "the client certificate cannot be read", 401) from None
    return certificate_thumbprint(certificate.public_bytes(serialization.Encoding.DER))


def _checked_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"base_url must be an absolute http(s) URL without query, got {base_url!r}")
    return base_url.rstrip("/")


def _parse_basic(authorization: str) -> tuple[str, str]:
    """Decode ``Basic base64(urlencode(id):urlencode(secret))`` (RFC 6749 §2.3.1).

    Raises:
        _TokenEndpointError: invalid_client when the header is not usable Basic credentials.
    """
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise _TokenEndpointError("invalid_client", "unsupported authorization scheme", 401)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _TokenEndpointError("invalid_client", "malformed Basic credentials", 401) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id:
        raise _TokenEndpointError("invalid_client", "malformed Basic credentials", 401)
    return unquote_plus(client_id), unquote_plus(secret)


async def _read_form(request: Request) -> dict[str, str]:
    """Parse an ``application/x-www-form-urlencoded`` body, bounded in size.

    Raises:
        _TokenEndpointError: invalid_request for another media type, an oversized or
            undecodable body, or a repeated parameter (RFC 6749 §3.2).
    """
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise _TokenEndpointError("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise _TokenEndpointError("invalid_request", "request body too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise _TokenEndpointError("invalid_request", "the body is not UTF-8") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise _TokenEndpointError("invalid_request", f"parameter {name!r} is repeated")
        form[name] = value
    return form


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
) -> str:
    """The "what to do next" text for ``--dev``: fetch a token, then call a tool with it.

    With ``ca_file`` (``--dev --mtls``) every curl trusts the dev CA, and with the client
    certificate files the X.509 flow is shown too: a token over mutual TLS
    (``tls_client_auth``), bound to the certificate, then the MCP call with the same certificate.
    The secret shown is the fixed, public ``dev-read`` credential, not a real one.
    """
    token_endpoint = base_url.rstrip("/") + mount_path + "/oauth2/token"
    call = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_notes","arguments":{}}}'
    cacert = f" --cacert {shlex.quote(ca_file)}" if ca_file else ""
    extract = "    | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    mcp_call = [
        "    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\",
        f"    -H 'MCP-Protocol-Version: {MCP_PROTOCOL_VERSION}' \\",
        f"    -d '{call}'",
    ]
    lines = [
        f"Dev issuer (IAS look-alike): {base_url.rstrip('/')}{mount_path}",
        "Clients: dev-full (read+write), dev-read (read)"
        + (f", {x509_client_id} (read+write, X.509 certificate)" if x509_client_id else "")
        + "".join(f", {cid} ({'+'.join(c.apis) or 'no groups'}, {DEV_CLIENTS_SETTING})"
                  for cid, c in (extra_clients or {}).items())
        + ". Get a token and call a tool:",
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
            f"  MCP_ISSUER={base_url.rstrip('/')}{mount_path}"
            f" python -m auth tools call {resource_url} whoami --ca-bundle {shlex.quote(ca_file)}",
        ]
    return "\n".join(lines)
