"""A local IAS look-alike for any server: discovery, keys, a token endpoint, and minting for tests.

It behaves like SAP Cloud Identity Services (IAS) for the client-credentials grant: OpenID
discovery, a JWKS, and a token endpoint issuing RS256 JWTs with IAS's claim set (``sub``/``azp``
the client, ``aud``, ``ias_apis`` with the client's permission groups, ``sap_id_type``,
``app_tid``, ``iat``/``exp``/``jti``). It also exchanges the tokens it issued, by the JWT bearer
grant (RFC 7523, as IAS does for principal propagation) and by RFC 8693 token exchange, with the
rules of `auth.testing._grants` (the subject token addressed to the exchanging client, ``act``
recording the actor). Deliberate differences, all for a local dev loop:

* without ``resource`` the token is for the first configured audience and carries ``ias_apis``
  (IAS would issue a token for the client itself, without ``ias_apis``); a ``resource`` that is
  one of an audience's RFC 8707 resource URLs is added to ``aud`` beside the audience;
* the issuer URL may be plain ``http`` (on loopback) and may have a path;
* there is no authorization-code flow: discovery names ``authorization_endpoint`` because MCP
  clients parse RFC 8414 metadata that requires it, and that endpoint only answers an error.

Clients authenticate with a secret (``client_secret_basic``/``client_secret_post``) or, when a
TLS layer in front hands over the peer certificate (the ASGI TLS extension, under uvicorn with
client certificates), with a registered certificate (``tls_client_auth``, RFC 8705 §2.1). As
IAS does, a token requested over a connection that presented a client certificate is bound to
it (``cnf.x5t#S256``, RFC 8705 §3.1), whichever way the client authenticated.

The HTTP handling is one synchronous function (`Issuer.handle`) with two thin front ends: an
ASGI app (`Issuer.app`, to mount in a Starlette app) and the threaded server of `LocalIssuer`.
Secrets and tokens are never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from .._binding import certificate_thumbprint
from .._settings import AuthSettings, IssuerConfig
from ._grants import GRANTS, Issued, TokenRequest, unsupported
from ._keys import MIN_KEY_BITS, new_key
from ._oauth import MAX_FORM_BYTES, NO_STORE, TokenEndpointError, parse_basic, parse_form
from ._registry import DEFAULT_AUDIENCE, DEFAULT_CLIENTS, Audience, RegisteredClient, resolve_audience

__all__ = ["Issuer", "HttpRequest", "HttpResponse", "CLIENT_PERMISSIONS"]

_TENANTS = uuid.UUID("1b7c3f0e-6a53-4d8e-9a51-0c4b5f1e2d77")  # namespace: app_tid derived from the key
_EXPIRED_BY = 3600  # an expired token's exp lies this far in the past: beyond any verifier's leeway


class _ClientPermissions:
    def __repr__(self) -> str:
        return "CLIENT_PERMISSIONS"


CLIENT_PERMISSIONS: Any = _ClientPermissions()
"""Default of `Issuer.mint`'s ``permissions``: the registered client's groups (none for an unknown client)."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request to the issuer, whichever server received it.

    Attributes:
        method: the HTTP method.
        path: the path below the issuer URL (``/oauth2/token``).
        headers: lower-case names; the first of repeated headers.
        body: the body; None when it exceeded the form limit and was not read.
        client_certificate: the TLS client certificate (PEM) the connection presented, if any.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None = b""
    client_certificate: str | None = None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, document: object, headers: Mapping[str, str] | None = None) -> HttpResponse:
    body = json.dumps(document, separators=(",", ":")).encode()
    return HttpResponse(status, body, (("Content-Type", "application/json"), *(headers or {}).items()))


@dataclass(frozen=True, slots=True)
class _Registry:
    clients: Mapping[str, RegisteredClient]
    audiences: tuple[Audience, ...]


class Issuer:
    """An IAS look-alike that signs with one RSA key, for the clients and audiences it is given.

    Args:
        url: the issuer URL (``iss``), e.g. ``http://127.0.0.1:8090``; where discovery, keys and
            the token endpoint are served (``{url}/.well-known/openid-configuration``,
            ``{url}/oauth2/certs``, ``{url}/oauth2/token``).
        clients: who may ask for tokens; by default `DEFAULT_CLIENTS` (``dev-full``, ``dev-read``).
        audiences: the applications tokens are for (`Audience` or a client id); the first is the
            audience of a token requested without ``resource``.
        key: the RSA signing key (see `load_or_create_key`); a fresh RSA-2048 key by default.
        token_lifetime: seconds from ``iat`` to ``exp``.
        app_tid: the tenant id in every token; by default derived from the key (stable with it).
        clock: seconds since the epoch, for ``iat``/``exp``.
        logger: where issued and refused token requests are logged (ids only, never a secret or token).

    Raises:
        ValueError: a malformed URL, lifetime, key, or no audience.
    """

    def __init__(
        self,
        url: str,
        *,
        clients: Iterable[RegisteredClient] = DEFAULT_CLIENTS,
        audiences: Iterable[Audience | str] = (DEFAULT_AUDIENCE,),
        key: rsa.RSAPrivateKey | None = None,
        token_lifetime: int = 3600,
        app_tid: str | None = None,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        self.url = _checked_url(url)
        if token_lifetime <= 0:
            raise ValueError("token_lifetime must be positive")
        self.token_lifetime = token_lifetime
        self._clock = clock
        self._log = logger or logging.getLogger("auth.testing")
        self._lock = threading.Lock()
        registry = _Registry({}, ())
        for client in clients:
            registry = _with_client(registry, client)
        for audience in audiences:
            registry = _with_audience(registry, audience)
        if not registry.audiences:
            raise ValueError("at least one audience is required")
        self._registry = registry

        private = key or new_key()
        if not isinstance(private, rsa.RSAPrivateKey) or private.key_size < MIN_KEY_BITS:
            raise ValueError(f"the signing key must be RSA with at least {MIN_KEY_BITS} bits")
        self.kid: str = RSAKey.import_key(private).thumbprint()  # RFC 7638: stable for the key
        self._key = RSAKey.import_key(private, {"kid": self.kid, "use": "sig", "alg": "RS256"})
        self._foreign: RSAKey | None = None
        self.app_tid = app_tid or str(uuid.uuid5(_TENANTS, self.kid))

    # --- URLs and registry ------------------------------------------------------------------

    @property
    def token_endpoint(self) -> str:
        return self.url + "/oauth2/token"

    @property
    def jwks_uri(self) -> str:
        return self.url + "/oauth2/certs"

    @property
    def discovery_url(self) -> str:
        return self.url + "/.well-known/openid-configuration"

    @property
    def clients(self) -> Mapping[str, RegisteredClient]:
        """The registered clients (a copy)."""
        return dict(self._registry.clients)

    @property
    def audiences(self) -> tuple[Audience, ...]:
        """The applications tokens are issued for; the first is the default."""
        return self._registry.audiences

    def add_client(self, client: RegisteredClient) -> None:
        """Register ``client`` (replacing one with the same id); takes effect for the next request."""
        with self._lock:
            self._registry = _with_client(self._registry, client)

    def add_audience(self, audience: Audience | str) -> None:
        """Add an application (or more resources of a known one); takes effect for the next request.

        E.g. ``issuer.add_audience(Audience("my-api", resources=(f"{base_url}/mcp",)))`` once a test
        server knows its port.
        """
        with self._lock:
            self._registry = _with_audience(self._registry, audience)

    def accepted_resources(self) -> frozenset[str]:
        """Every RFC 8707 ``resource`` value the token endpoint accepts."""
        return frozenset(r for a in self.audiences for r in (*a.resources, *a.names()))

    def audience_for(self, resource: str | None) -> tuple[str, ...]:
        """The ``aud`` of a token requested with ``resource`` (None: the first audience).

        Raises:
            TokenEndpointError: invalid_target when ``resource`` names no known application.
        """
        try:
            return resolve_audience(resource, self.audiences)
        except LookupError:
            raise TokenEndpointError("invalid_target", "resource does not name a known application") from None

    def audience_named(self, audience: str) -> tuple[str, ...] | None:
        """The ``aud`` for an RFC 8693 ``audience``: an application's client id or IAS name, else None."""
        for known in self.audiences:
            if audience in (known.client_id, known.name):
                return (known.client_id,)
        return None

    def verify_own(self, token: str) -> Mapping[str, object] | None:
        """The claims of ``token`` if this issuer signed it and it is valid now, else None (for the exchange grants).

        The signature with the current key, ``iss`` this issuer, ``exp`` in the future and ``nbf`` (if any)
        not beyond a minute ahead; anything malformed is None.
        """
        try:
            claims = jwt.decode(token, self._key, algorithms=["RS256"]).claims
        except (JoseError, ValueError, TypeError):
            return None
        now = self._clock()
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if claims.get("iss") != self.url or not isinstance(exp, int) or exp <= now:
            return None
        if not isinstance(nbf, int | float) or nbf > now + 60:
            return None
        return dict(claims)

    def settings(self, resource_url: str, *, audience: str | None = None, **options: Any) -> AuthSettings:
        """`AuthSettings` for a server at ``resource_url`` that trusts this issuer.

        Accepted audiences: ``audience`` (default: the first audience's client id) and
        ``resource_url`` itself. ``options`` are further `AuthSettings` fields (``cert_binding``,
        ``permission_aliases``, ...).
        """
        accepted = (audience or self.audiences[0].client_id, resource_url)
        return AuthSettings(
            issuers=(IssuerConfig(issuer=self.url, audiences=accepted),), resource_url=resource_url, **options
        )

    # --- documents --------------------------------------------------------------------------

    def metadata(self) -> dict[str, object]:
        """The OpenID discovery / RFC 8414 metadata document.

        Over ``https`` the issuer also advertises ``tls_client_auth`` and certificate-bound tokens
        (RFC 8705 §2.1.1, §3.3); over plain ``http`` neither is possible.
        """
        doc: dict[str, object] = {
            "issuer": self.url,
            # Not implemented (answers unsupported_response_type), but RFC 8414 §2 requires the
            # field and the MCP SDK's OAuthMetadata refuses documents without it.
            "authorization_endpoint": self.url + "/oauth2/authorize",
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_uri,
            # "code" as IAS advertises it: mcp-remote's --client-credentials builds an authorization
            # URL (never visited) before it takes the client_credentials path, and refuses an
            # issuer whose metadata lacks "code" ("Incompatible auth server").
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "grant_types_supported": list(GRANTS),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        if self.url.startswith("https://"):
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
        return {"keys": [{name: str(public[name]) for name in ("kty", "kid", "use", "alg", "n", "e")}]}

    # --- minting ----------------------------------------------------------------------------

    def mint(
        self,
        client_id: str,
        *,
        permissions: Iterable[str] | None = CLIENT_PERMISSIONS,
        audience: str | Sequence[str] | None = None,
        resource: str | None = None,
        lifetime: int | None = None,
        expired: bool = False,
        foreign_key: bool = False,
        certificate_thumbprint: str | None = None,
        header: Mapping[str, object] | None = None,
        claims: Mapping[str, object] | None = None,
    ) -> str:
        """Sign a token as the token endpoint would, without HTTP; with the faults a test needs.

        ::

            issuer.mint("dev-read")                                   # what the endpoint issues
            issuer.mint("dev-read", expired=True)                      # exp an hour ago
            issuer.mint("dev-read", audience="someone-else")           # wrong audience
            issuer.mint("dev-read", permissions=[])                    # no ias_apis at all
            issuer.mint("dev-read", foreign_key=True)                  # right kid, wrong key
            issuer.mint("dev-read", claims={"iss": "https://evil.example"})

        Args:
            client_id: ``sub`` and ``azp``; need not be a registered client.
            permissions: the ``ias_apis`` groups; by default the registered client's. ``None`` or
                empty omits the claim, as IAS does.
            audience: the ``aud`` (a string becomes a one-element array), unchecked; exclusive
                with ``resource``.
            resource: as the token request's ``resource`` parameter (checked like the endpoint does).
            lifetime: seconds until ``exp`` (negative: already expired); defaults to the issuer's.
            expired: ``exp`` an hour in the past (beyond any leeway), ``iat`` one lifetime before.
            foreign_key: sign with another RSA key under this issuer's ``kid`` (a bad signature).
            certificate_thumbprint: base64url SHA-256 of a client certificate's DER; adds
                ``cnf: {"x5t#S256": ...}`` (RFC 8705 §3.1).
            header: JOSE header fields to add or replace (``None`` removes one, e.g. ``typ``).
            claims: claims to add or replace; a value of ``None`` removes the claim.

        Raises:
            ValueError: ``resource`` names no known application, or both ``audience`` and ``resource``.
        """
        if audience is not None and resource is not None:
            raise ValueError("give audience or resource, not both")
        if audience is not None:
            aud = (audience,) if isinstance(audience, str) else tuple(audience)
        else:
            try:
                aud = resolve_audience(resource, self.audiences)
            except LookupError:
                raise ValueError("resource does not name a known application") from None
        if permissions is CLIENT_PERMISSIONS:
            registered = self._registry.clients.get(client_id)
            permissions = registered.permissions if registered else ()
        issued = Issued(client_id, client_id, aud, tuple(permissions or ()))
        lifetime = self.token_lifetime if lifetime is None else lifetime
        now = int(self._clock())
        if expired:
            now -= lifetime + _EXPIRED_BY
        payload = self._claims(issued, thumbprint=certificate_thumbprint, lifetime=lifetime, now=now)
        for name, value in (claims or {}).items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        return self._sign(payload, header, key=self._foreign_key() if foreign_key else self._key)

    def _foreign_key(self) -> RSAKey:
        if self._foreign is None:
            self._foreign = RSAKey.import_key(new_key(), {"kid": self.kid, "use": "sig", "alg": "RS256"})
        return self._foreign

    def _claims(self, issued: Issued, *, thumbprint: str | None, lifetime: int, now: int) -> dict[str, object]:
        claims: dict[str, object] = {
            "iss": self.url,
            "sub": issued.subject,
            "azp": issued.authorized_party,
            "aud": list(issued.audience),
            "iat": now,
            "exp": now + lifetime,
            "jti": str(uuid.uuid4()),
            "sap_id_type": "app",
            "app_tid": self.app_tid,
        }
        if issued.permissions:
            claims["ias_apis"] = list(issued.permissions)
        if thumbprint is not None:
            claims["cnf"] = {"x5t#S256": thumbprint}
        claims.update(issued.extra_claims)
        return claims

    def _sign(self, claims: dict[str, object], header: Mapping[str, object] | None, *, key: RSAKey) -> str:
        protected: dict[str, object] = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        for name, value in (header or {}).items():
            if value is None:
                protected.pop(name, None)
            else:
                protected[name] = value
        return jwt.encode(protected, claims, key, algorithms=[str(protected["alg"])], default_type=None)

    # --- HTTP -------------------------------------------------------------------------------

    def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one HTTP request (synchronous: parsing, a constant-time compare, one signature)."""
        path, method = request.path, request.method
        if path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
            return self._only(method, ("GET", "HEAD")) or _json(200, self.metadata())
        if path == "/oauth2/certs":
            return self._only(method, ("GET", "HEAD")) or _json(200, self.jwks())
        if path == "/oauth2/token":
            return self._only(method, ("POST",)) or self._token(request)
        if path == "/oauth2/authorize":
            refusal = TokenEndpointError(
                "unsupported_response_type", "the local issuer has no authorization-code flow"
            )
            return self._only(method, ("GET", "POST")) or _json(400, refusal.body(), refusal.headers())
        return _json(404, {"error": "not_found"})

    @staticmethod
    def _only(method: str, allowed: tuple[str, ...]) -> HttpResponse | None:
        if method in allowed:
            return None
        return _json(405, {"error": "method_not_allowed"}, {"Allow": ", ".join(allowed)})

    def app(self) -> Callable[[dict[str, Any], Any, Any], Awaitable[None]]:
        """The issuer as an ASGI app: serve it at the issuer URL's path (e.g. ``Mount("/dev-ias", issuer.app())``)."""
        return _AsgiIssuer(self)

    def _token(self, request: HttpRequest) -> HttpResponse:
        try:
            form = parse_form(request.body, request.headers)
            token_request = self._authenticate(request, form)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise TokenEndpointError("invalid_request", "grant_type is missing")
            grant = GRANTS.get(grant_type)
            if grant is None:
                raise unsupported(grant_type)
            issued = grant(self, token_request)
        except TokenEndpointError as exc:
            self._log.info("local issuer: token request rejected: %s", exc.error)
            return _json(exc.status, exc.body(), exc.headers())

        thumbprint = token_request.certificate_thumbprint
        now = int(self._clock())
        lifetime = self.token_lifetime
        if issued.expires_at is not None:  # an exchanged token never outlives the subject token
            lifetime = max(1, min(lifetime, issued.expires_at - now))
        claims = self._claims(issued, thumbprint=thumbprint, lifetime=lifetime, now=now)
        token = self._sign(claims, None, key=self._key)
        self._log.info(
            "local issuer: issued token client_id=%r grant=%s aud=%r jti=%s bound=%s",
            token_request.client.client_id,
            grant_type,
            list(issued.audience),
            claims["jti"],
            "yes" if thumbprint else "no",
        )
        answer: dict[str, object] = {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}
        if issued.issued_token_type is not None:
            answer["issued_token_type"] = issued.issued_token_type  # RFC 8693 §2.2.1
        return _json(200, answer, NO_STORE)

    def _authenticate(self, request: HttpRequest, form: Mapping[str, str]) -> TokenRequest:
        """Exactly one of client_secret_basic, client_secret_post (RFC 6749 §2.3.1) and tls_client_auth
        (RFC 8705 §2.1: ``client_id`` in the body, the certificate on the connection).

        Raises:
            TokenEndpointError: invalid_client (401) or invalid_request.
        """
        thumbprint = _thumbprint(request.client_certificate)
        authorization = request.headers.get("authorization")
        if authorization is not None:
            client_id, secret = parse_basic(authorization)
            if "client_secret" in form:
                # §2.3: "The client MUST NOT use more than one authentication method in each request."
                raise TokenEndpointError("invalid_request", "more than one client authentication method")
            if "client_id" in form and form["client_id"] != client_id:
                raise TokenEndpointError("invalid_request", "client_id does not match the credentials")
            client = self._check_secret(client_id, secret)
        elif "client_id" in form and "client_secret" in form:
            client = self._check_secret(form["client_id"], form["client_secret"])
        elif "client_id" in form and thumbprint is not None:
            client = self._check_certificate(form["client_id"], thumbprint)
        else:
            raise TokenEndpointError("invalid_client", "client authentication is required", 401)
        public_form = {name: value for name, value in form.items() if name != "client_secret"}
        return TokenRequest(public_form, client, thumbprint)

    def _check_secret(self, client_id: str, secret: str) -> RegisteredClient:
        client = self._registry.clients.get(client_id)
        # Compare even for an unknown client, so timing does not reveal which ids exist.
        expected = client.secret if client and client.secret is not None else "\0no such client"
        matches = hmac.compare_digest(secret.encode(), expected.encode())
        if client is None or client.secret is None or not matches:
            raise TokenEndpointError("invalid_client", "client authentication failed", 401)
        return client

    def _check_certificate(self, client_id: str, thumbprint: str) -> RegisteredClient:
        client = self._registry.clients.get(client_id)
        registered = client.certificate_thumbprint if client else None
        matches = hmac.compare_digest(thumbprint.encode(), (registered or "\0no certificate").encode())
        if client is None or registered is None or not matches:
            raise TokenEndpointError("invalid_client", "client authentication failed", 401)
        return client


def _thumbprint(pem: str | None) -> str | None:
    """``x5t#S256`` of the connection's client certificate, or None.

    Raises:
        TokenEndpointError: invalid_client when the TLS layer handed over an unreadable certificate.
    """
    if not pem:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise TokenEndpointError("invalid_client", "the client certificate cannot be read", 401) from None
    return certificate_thumbprint(certificate.public_bytes(serialization.Encoding.DER))


def _with_client(registry: _Registry, client: RegisteredClient) -> _Registry:
    if not isinstance(client, RegisteredClient):
        raise TypeError(f"clients must be RegisteredClient, got {type(client).__name__}")
    return _Registry({**registry.clients, client.client_id: client}, registry.audiences)


def _with_audience(registry: _Registry, audience: Audience | str) -> _Registry:
    new = Audience(audience) if isinstance(audience, str) else audience
    audiences = list(registry.audiences)
    for i, known in enumerate(audiences):
        if known.client_id == new.client_id:
            resources = tuple(dict.fromkeys((*known.resources, *new.resources)))
            audiences[i] = Audience(known.client_id, resources, new.name or known.name)
            break
    else:
        audiences.append(new)
    return _Registry(registry.clients, tuple(audiences))


def _checked_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment or "#" in url:
        raise ValueError(f"the issuer URL must be an absolute http(s) URL without query, got {url!r}")
    return url.rstrip("/")


class _AsgiIssuer:
    """`Issuer.handle` as an ASGI app; the body is read only up to the form limit."""

    def __init__(self, issuer: Issuer) -> None:
        self._issuer = issuer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        body = await _read_body(receive) if scope["method"] == "POST" else b""
        tls = (scope.get("extensions") or {}).get("tls") or {}
        chain = tls.get("client_cert_chain") or ()
        request = HttpRequest(scope["method"], path, headers, body, str(chain[0]) if chain else None)
        response = self._issuer.handle(request)
        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        raw_headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else response.body})


async def _read_body(receive: Any) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > MAX_FORM_BYTES:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
