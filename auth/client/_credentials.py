"""Who a client is and where it asks for tokens: credentials, errors and pure helpers (no I/O).

`ClientCredentials` describes a client of the client-credentials grant (RFC 6749 §4.4):
HTTP Basic with a secret (RFC 6749 §2.3.1) or mutual TLS with an X.509 certificate
(RFC 8705 §2, ``tls_client_auth``), as an SAP Cloud Identity Services ``identity`` binding
provides. `auth.client.TokenProvider` does the asking.

Errors::

    TokenRequestError              base: no token could be had
     ├── TokenRequestRejected      4xx with an OAuth error (RFC 6749 §5.2); never retried
     │    └── InvalidClient        401, or 400 error=invalid_client: wrong id, secret or certificate
     ├── TokenEndpointUnreachable  connection errors, timeouts or 5xx on every attempt
     ├── TokenResponseError        an answer that is not a usable token response (RFC 6749 §5.1)
     └── DiscoveryError            the issuer's metadata names no usable token endpoint (RFC 8414 §3)

Secrets and private keys never appear in a ``repr`` or a message.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote_plus, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .._errors import ConfigError
from .._settings import check_issuer_url

__all__ = [
    "ClientCredentials",
    "IssuedToken",
    "RetryPolicy",
    "TokenRequestError",
    "TokenRequestRejected",
    "InvalidClient",
    "TokenEndpointUnreachable",
    "TokenResponseError",
    "DiscoveryError",
    "credentials_from_env",
    "client_ssl_context",
    "ias_resource",
    "normalize_pem",
    "basic_authorization",
    "token_request_form",
    "parse_token_response",
    "refresh_margin",
    "backoff_delay",
    "discovery_urls",
]

AuthMethod = Literal["client_secret_basic", "tls_client_auth"]  # RFC 7591 §2 names
_IAS_RESOURCE = "urn:sap:identity:application:provider:"


# --------------------------------------------------------------------------- errors


class TokenRequestError(Exception):
    """No access token could be obtained.

    Attributes:
        token_endpoint: where we asked (None when discovery failed before a request).
        status: the last HTTP status, if any answer came.
    """

    def __init__(self, message: str, *, token_endpoint: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.token_endpoint = token_endpoint
        self.status = status


class TokenRequestRejected(TokenRequestError):
    """The authorization server refused the request (RFC 6749 §5.2); retrying will not help.

    Attributes:
        error: the OAuth error code (``invalid_scope``, ``invalid_target``, ...) or None.
        description: the server's ``error_description``, for the log.
    """

    def __init__(
        self,
        message: str,
        *,
        token_endpoint: str | None = None,
        status: int | None = None,
        error: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message, token_endpoint=token_endpoint, status=status)
        self.error = error
        self.description = description


class InvalidClient(TokenRequestRejected):
    """Client authentication failed: wrong client id, secret or certificate (RFC 6749 §5.2)."""


class TokenEndpointUnreachable(TokenRequestError):
    """Every attempt failed with a connection error, a timeout or a 5xx: try again later."""


class TokenResponseError(TokenRequestError):
    """The server answered, but not with a usable token response (RFC 6749 §5.1)."""


class DiscoveryError(TokenRequestError):
    """Neither discovery document of the issuer yields a usable token endpoint (RFC 8414 §3)."""


# --------------------------------------------------------------------------- pure helpers


def normalize_pem(text: str) -> str:
    """Undo the escaping PEM suffers in JSON and environment variables.

    Bindings sometimes carry literal ``\\n`` sequences instead of newlines (ias.md).
    """
    text = text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\r\n", "\n").strip()
    return text + "\n" if text else text


def ias_resource(*, name: str | None = None, client_id: str | None = None) -> str:
    """The IAS app-to-app ``resource`` naming a provider application by name or by client id.

    Raises:
        ValueError: not exactly one of ``name`` and ``client_id``, or an empty one.
    """
    if (name is None) == (client_id is None) or not (name or client_id):
        raise ValueError("give exactly one of name= or client_id=")
    return f"{_IAS_RESOURCE}name:{name}" if name is not None else f"{_IAS_RESOURCE}clientid:{client_id}"


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value for ``client_secret_basic``.

    RFC 6749 §2.3.1: id and secret are form-urlencoded (Appendix B) *before* Basic encoding,
    so a ``:`` in the id or any non-ASCII character survives.
    """
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


def token_request_form(credentials: ClientCredentials, resource: str | None) -> dict[str, str]:
    """The form body of the token request (RFC 6749 §4.4.2, RFC 8707 §2.1)."""
    form = {"grant_type": "client_credentials"}
    if credentials.auth_method == "tls_client_auth":
        form["client_id"] = credentials.client_id  # RFC 8705 §2: the id is not in the certificate
    if resource:
        form["resource"] = resource
    return form


def refresh_margin(lifetime: float) -> float:
    """How long before expiry to fetch a new token: max(60 s, 10 %), but at most half the lifetime.

    The cap keeps a short-lived token (say 60 s) from counting as due the moment it arrives.
    """
    return min(max(60.0, lifetime * 0.1), lifetime / 2)


def discovery_urls(issuer: str) -> tuple[str, str]:
    """Where to look for the issuer's metadata, in order.

    OpenID Connect Discovery §4 appends ``/.well-known/openid-configuration`` to the issuer;
    RFC 8414 §3.1 inserts ``/.well-known/oauth-authorization-server`` between host and path.
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return (
        f"{origin}{path}/.well-known/openid-configuration",
        f"{origin}/.well-known/oauth-authorization-server{path}",
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential back-off for transient failures.

    ``attempts`` counts the first try; ``base_delay`` doubles per retry up to ``max_delay``.
    """

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("RetryPolicy needs attempts >= 1 and 0 <= base_delay <= max_delay")


def backoff_delay(policy: RetryPolicy, retry: int, jitter: float, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1-based), with "equal jitter".

    ``jitter`` is in [0, 1): half the exponential step is fixed, half random, so many clients
    that failed together spread out. A server's ``Retry-After`` (RFC 9110 §10.2.3) raises the
    delay, capped at ``max_delay`` so the total time stays bounded.
    """
    step = min(policy.max_delay, policy.base_delay * 2.0 ** (retry - 1))
    delay = step / 2 + step / 2 * jitter
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_delay))
    return delay


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """An access token and when, on the provider's clock, it stops being usable."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: float
    obtained_at: float
    scope: str | None = None

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.expires_in

    @property
    def refresh_at(self) -> float:
        return self.expires_at - refresh_margin(self.expires_in)


def json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def parse_token_response(
    status: int,
    body: bytes,
    *,
    obtained_at: float,
    default_lifetime: float = 300.0,
    token_endpoint: str | None = None,
) -> IssuedToken:
    """Interpret a non-5xx answer of the token endpoint.

    ``expires_in`` is only RECOMMENDED (RFC 6749 §5.1); without it ``default_lifetime`` applies.

    Raises:
        InvalidClient: 401, or error=invalid_client (RFC 6749 §5.2).
        TokenRequestRejected: any other 4xx.
        TokenResponseError: a 2xx that is not a bearer token response, or any other status.
    """

    def bad(message: str) -> TokenResponseError:
        return TokenResponseError(message, token_endpoint=token_endpoint, status=status)

    doc = json_object(body)
    if 400 <= status < 500:
        error = doc.get("error") if doc else None
        error = error if isinstance(error, str) else None
        description = doc.get("error_description") if doc else None
        description = description[:200] if isinstance(description, str) else None
        cls = InvalidClient if status == 401 or error == "invalid_client" else TokenRequestRejected
        message = f"token endpoint refused the request: HTTP {status}" + (f" {error}" if error else "")
        raise cls(message, token_endpoint=token_endpoint, status=status, error=error, description=description)
    if not 200 <= status < 300:
        raise bad(f"unexpected HTTP {status} from the token endpoint")
    if doc is None:
        raise bad("token response is not a JSON object")
    token, token_type = doc.get("access_token"), doc.get("token_type")
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        raise bad("token response has no usable access_token")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":  # case-insensitive, §5.1
        raise bad(f"token_type is {token_type!r}, not Bearer")
    raw = doc.get("expires_in", default_lifetime)
    try:
        lifetime = float(raw)  # some servers send a numeric string
    except (TypeError, ValueError):
        raise bad(f"expires_in is not a number: {raw!r}") from None
    if not 0 < lifetime < 10 * 365 * 86400:
        raise bad(f"expires_in out of range: {raw!r}")
    scope = doc.get("scope")
    return IssuedToken(token, token_type, lifetime, obtained_at, scope if isinstance(scope, str) else None)


# --------------------------------------------------------------------------- credentials


def check_resource(resource: str | None, setting: str = "resource") -> str | None:
    # RFC 8707 §2: an absolute URI without a fragment (a URN such as IAS's qualifies).
    if resource is None:
        return None
    parts = urlsplit(resource)
    if not parts.scheme or parts.fragment or any(c.isspace() for c in resource):
        raise ConfigError(setting, f"must be an absolute URI without a fragment, got {resource!r}")
    return resource


def _check_key_pair(certificate: str, private_key: str) -> None:
    try:
        chain = x509.load_pem_x509_certificates(certificate.encode())
    except ValueError:
        raise ConfigError("certificate", "is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(private_key.encode(), password=None)
    except TypeError:
        raise ConfigError("private_key", "is encrypted; an unencrypted PEM key is required") from None
    except Exception:  # ValueError, UnsupportedAlgorithm: never echo the key
        raise ConfigError("private_key", "is not a PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != chain[0].public_key().public_bytes(der, spki):
        raise ConfigError("private_key", "does not belong to the first certificate")


@contextlib.contextmanager
def _renamed(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a ConfigError about a field under the name its source uses (env var, binding key)."""
    try:
        yield
    except ConfigError as exc:
        problem = str(exc).partition(": ")[2]
        raise ConfigError(names.get(exc.setting, exc.setting), problem) from None


@dataclass(frozen=True, slots=True, repr=False)
class ClientCredentials:
    """Who the client is and where it asks for tokens.

    Give ``token_endpoint``, or ``issuer`` to discover it. Give ``client_secret`` for
    ``client_secret_basic``, or ``certificate`` and ``private_key`` (PEM, in memory) for
    ``tls_client_auth``. ``resource`` is sent with every request unless overridden: an
    RFC 8707 URI or an IAS provider URN (`ias_resource`).

    Raises:
        ConfigError: naming the field that is missing or invalid.
    """

    client_id: str
    token_endpoint: str | None = None
    issuer: str | None = None
    client_secret: str | None = None
    certificate: str | None = None
    private_key: str | None = None
    resource: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id.strip():
            raise ConfigError("client_id", "is required")
        for name in ("token_endpoint", "issuer", "client_secret", "certificate", "private_key", "resource"):
            if not isinstance(getattr(self, name), str | None):
                raise ConfigError(name, "must be a string")
        if (self.token_endpoint is None) == (self.issuer is None):
            raise ConfigError("token_endpoint", "give exactly one of token_endpoint and issuer")
        if self.token_endpoint is not None:
            check_issuer_url(self.token_endpoint, "token_endpoint")
        if self.issuer is not None:
            check_issuer_url(self.issuer, "issuer")
        check_resource(self.resource)
        has_cert = self.certificate is not None or self.private_key is not None
        if self.client_secret is not None and has_cert:
            raise ConfigError("client_secret", "give a secret or a certificate and key, not both")
        if self.client_secret is None and not has_cert:
            raise ConfigError("client_secret", "give a secret, or a certificate and key")
        if self.client_secret is not None and not self.client_secret:
            raise ConfigError("client_secret", "is empty")
        if has_cert:
            if not self.certificate:
                raise ConfigError("certificate", "is required with a private key")
            if not self.private_key:
                raise ConfigError("private_key", "is required with a certificate")
            object.__setattr__(self, "certificate", normalize_pem(self.certificate))
            object.__setattr__(self, "private_key", normalize_pem(self.private_key))
            _check_key_pair(self.certificate, self.private_key)

    def __repr__(self) -> str:
        where = (
            f"token_endpoint={self.token_endpoint!r}" if self.token_endpoint else f"issuer={self.issuer!r}"
        )
        extra = f", resource={self.resource!r}" if self.resource else ""
        method = f"auth_method={self.auth_method!r}"
        return f"ClientCredentials(client_id={self.client_id!r}, {where}, {method}{extra})"

    __str__ = __repr__

    @property
    def auth_method(self) -> AuthMethod:
        """How the client authenticates, by its RFC 7591 §2 name."""
        return "client_secret_basic" if self.client_secret is not None else "tls_client_auth"

    @classmethod
    def from_identity_binding(
        cls, credentials: Mapping[str, Any], *, resource: str | None = None, private_key: str | None = None
    ) -> ClientCredentials:
        """From the ``credentials`` of an ``identity`` binding in ``VCAP_SERVICES`` (ias.md).

        The token endpoint is discovered from ``url`` (bindings carry none). With
        ``credential-type`` ``X509_PROVIDED`` the binding has no key: pass ``private_key``.

        Raises:
            ConfigError: naming the binding key that is missing or invalid.
        """
        kind = str(credentials.get("credential-type") or "")
        cert, key = credentials.get("certificate"), private_key or credentials.get("key")
        secret = credentials.get("clientsecret")
        if kind.startswith("X509"):
            use_cert = True
        elif kind == "SECRET":
            use_cert = False
        else:  # unset or unknown: the certificate when it is usable, else the secret
            use_cert = cert is not None and (key is not None or secret is None)
        names = {
            "client_id": "clientid",
            "issuer": "url",
            "client_secret": "clientsecret",
            "private_key": "key",
        }
        for name in ("clientid", "url"):
            if not isinstance(credentials.get(name), str):
                raise ConfigError(name, "is missing from the identity binding")
        if not use_cert and not isinstance(secret, str):
            raise ConfigError(
                "clientsecret", f"missing (credential-type {kind or 'unset'}): no secret and no certificate"
            )
        with _renamed(names):
            return cls(
                client_id=credentials["clientid"],
                issuer=credentials["url"].rstrip("/"),
                client_secret=None if use_cert else secret,
                certificate=cert if use_cert else None,
                private_key=key if use_cert else None,
                resource=resource,
            )

    @classmethod
    def from_vcap_services(
        cls,
        vcap_json: str,
        name: str | None = None,
        *,
        resource: str | None = None,
        private_key: str | None = None,
    ) -> ClientCredentials:
        """From the ``identity`` binding named ``name`` (or the only one) in ``VCAP_SERVICES``.

        Raises:
            ConfigError: naming ``VCAP_SERVICES`` or the binding key at fault.
        """
        try:
            vcap = json.loads(vcap_json)
        except ValueError:
            raise ConfigError("VCAP_SERVICES", "is not valid JSON") from None
        if not isinstance(vcap, dict):
            raise ConfigError("VCAP_SERVICES", "must be a JSON object")
        if name is None:
            bindings = [b for b in vcap.get("identity") or [] if isinstance(b, dict)]
            if len(bindings) != 1:
                raise ConfigError(
                    "VCAP_SERVICES", f"has {len(bindings)} identity bindings; name the one to use"
                )
        else:
            bindings = [
                b
                for bs in vcap.values()
                if isinstance(bs, list)
                for b in bs
                if isinstance(b, dict) and b.get("name") == name
            ]
            if not bindings:
                raise ConfigError("VCAP_SERVICES", f"has no binding named {name!r}")
        binding = bindings[0]
        creds = binding.get("credentials")
        label = f"VCAP_SERVICES[{binding.get('name', 'identity')}].credentials"
        if not isinstance(creds, dict):
            raise ConfigError(label, "is missing")
        try:
            return cls.from_identity_binding(creds, resource=resource, private_key=private_key)
        except ConfigError as exc:
            raise ConfigError(f"{label}.{exc.setting}", str(exc).partition(": ")[2]) from None

    @classmethod
    def from_pem_files(
        cls,
        client_id: str,
        certificate_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        token_endpoint: str | None = None,
        issuer: str | None = None,
        resource: str | None = None,
    ) -> ClientCredentials:
        """For ``tls_client_auth`` with the certificate and key read from PEM files.

        Raises:
            ConfigError: a file cannot be read or does not hold what it should.
        """
        pem = {}
        for setting, path in (("certificate", certificate_file), ("private_key", key_file)):
            try:
                pem[setting] = Path(path).read_text("ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(setting, f"cannot read {os.fspath(path)!r}: {type(exc).__name__}") from None
        return cls(client_id, token_endpoint, issuer, None, pem["certificate"], pem["private_key"], resource)


_ENV_NAMES = {
    "client_id": "MCP_CLIENT_ID",
    "client_secret": "MCP_CLIENT_SECRET",
    "certificate": "MCP_CLIENT_CERT",
    "private_key": "MCP_CLIENT_KEY",
    "token_endpoint": "MCP_TOKEN_URL",
    "issuer": "MCP_ISSUER",
    "resource": "MCP_TOKEN_RESOURCE",
}


def _pem_setting(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if not value or "-----BEGIN" in value:
        return value or None
    try:  # not PEM itself: a path to a PEM file
        return Path(value).read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, f"is neither PEM nor a readable file: {type(exc).__name__}") from None


def credentials_from_env(env: Mapping[str, str]) -> ClientCredentials:
    """Build `ClientCredentials` from environment variables (for ``python -m auth token``).

    ``MCP_CLIENT_ID`` with ``MCP_CLIENT_SECRET``, or with ``MCP_CLIENT_CERT`` and
    ``MCP_CLIENT_KEY`` (PEM text or file paths), and ``MCP_TOKEN_URL`` or ``MCP_ISSUER``.
    Without ``MCP_CLIENT_ID``, the ``identity`` binding in ``VCAP_SERVICES`` is used
    (``MCP_IDENTITY_SERVICE`` names it when there are several). ``MCP_TOKEN_RESOURCE`` is
    the resource either way.

    Raises:
        ConfigError: naming the variable at fault.
    """
    get = {k: env.get(v, "").strip() or None for k, v in _ENV_NAMES.items()}
    with _renamed({"resource": "MCP_TOKEN_RESOURCE"}):
        check_resource(get["resource"])
    if get["client_id"] is None:
        stray = [n for k, n in _ENV_NAMES.items() if get[k] and k != "resource"]
        if stray:
            raise ConfigError("MCP_CLIENT_ID", f"is required when {stray[0]} is set")
        if not env.get("VCAP_SERVICES"):
            raise ConfigError("MCP_CLIENT_ID", "is required (or bind an identity service: VCAP_SERVICES)")
        binding = env.get("MCP_IDENTITY_SERVICE", "").strip() or None
        return ClientCredentials.from_vcap_services(env["VCAP_SERVICES"], binding, resource=get["resource"])
    if get["token_endpoint"] is None and get["issuer"] is None:
        raise ConfigError("MCP_TOKEN_URL", "is required (or MCP_ISSUER, to discover the token endpoint)")
    if get["token_endpoint"] and get["issuer"]:
        raise ConfigError("MCP_TOKEN_URL", "set MCP_TOKEN_URL or MCP_ISSUER, not both")
    cert, key = _pem_setting(env, "MCP_CLIENT_CERT"), _pem_setting(env, "MCP_CLIENT_KEY")
    if get["client_secret"] is None and cert is None and key is None:
        raise ConfigError("MCP_CLIENT_SECRET", "is required (or MCP_CLIENT_CERT and MCP_CLIENT_KEY)")
    with _renamed(_ENV_NAMES):
        return ClientCredentials(
            client_id=get["client_id"],
            token_endpoint=get["token_endpoint"],
            issuer=get["issuer"],
            client_secret=get["client_secret"],
            certificate=cert,
            private_key=key,
            resource=get["resource"],
        )


# --------------------------------------------------------------------------- TLS


@contextlib.contextmanager
def _private_pem_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from, gone when the block ends.

    ``ssl`` loads client keys only from files. On Linux an anonymous memory file keeps the
    key off any disk; elsewhere a ``mkstemp`` file (mode 0600, O_EXCL) lives for one call.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.memfd_create("mcp-client-credentials", os.MFD_CLOEXEC)
        except OSError:
            pass
        else:
            try:
                os.write(fd, data)
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)
            return
    fd, path = tempfile.mkstemp(prefix="mcp-client-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def client_ssl_context(
    credentials: ClientCredentials, *, ca_bundle: str | os.PathLike[str] | None = None
) -> ssl.SSLContext:
    """A verifying TLS context for the token endpoint, carrying the client certificate for mTLS.

    ``ca_bundle`` replaces the default trust store (tests, private CAs); the server is
    always verified.

    Raises:
        ConfigError: the certificate or key cannot be loaded.
    """
    ctx = ssl.create_default_context(cafile=os.fspath(ca_bundle)) if ca_bundle else httpx.create_ssl_context()
    if credentials.auth_method == "tls_client_auth":
        pem = f"{credentials.certificate}{credentials.private_key}".encode("ascii")
        with _private_pem_file(pem) as path:
            try:
                ctx.load_cert_chain(path)
            except (ssl.SSLError, OSError):
                raise ConfigError("certificate", "OpenSSL could not load the certificate and key") from None
    return ctx
