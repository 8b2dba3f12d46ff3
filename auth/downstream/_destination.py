"""A small async client of the SAP BTP Destination service: a destination name in, URL and credentials out.

The REST API (SAP's "Find a destination" API, the one ``btp-runtime.md`` names)::

    GET {uri}/destination-configuration/v1/destinations/{name}
    Authorization: Bearer <client-credentials token of the destination binding>
    X-user-token: <caller's JWT>            OAuth2JWTBearer, OAuth2UserTokenExchange, OAuth2SAMLBearerAssertion
    X-subject-token: <caller's token>       OAuth2TokenExchange (with X-subject-token-type)

    200 {"owner": {...}, "destinationConfiguration": {"Name", "Type", "URL", "Authentication",
         "ProxyType", ...}, "authTokens": [{"type", "value", "http_header": {"key", "value"},
         "expires_in", "error"}], "certificates": [{"Name", "Type", "Content"}]}

The service fetches the tokens itself (client credentials, JWT bearer, token exchange at the
destination's ``tokenServiceURL``); the answer's ``authTokens`` carry them, ready as headers. The
caller's token goes only to this service, and only for a destination whose type needs it: the
type is learnt first with ``$skipTokenRetrieval=true`` (cached), so a destination that
authenticates as the application never sees a user's token. Answers are cached per (name, digest
of the caller's token) until shortly before their tokens expire, bounded and single-flight.

Why not ``sap-cloud-sdk``: see docs/onward-calls.md (it is synchronous, on ``requests``, and brings
~140 packages, 184 MB, into the server's environment for one GET).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from .._http import tls_context
from .._settings import check_issuer_url
from ..client._credentials import (
    TokenEndpointUnreachable,
    TokenRequestError,
    TokenRequestRejected,
    json_object,
    refresh_margin,
)
from ..client._exchange import ACCESS_TOKEN_TYPE, token_digest
from ..client._provider import TokenProvider, _SingleFlight
from ._settings import DestinationBinding

__all__ = [
    "Destination",
    "DestinationError",
    "DestinationService",
    "USER_TOKEN_TYPES",
    "SUBJECT_TOKEN_TYPES",
    "parse_destination",
    "certificate_bundle",
    "caller_headers",
]

log = logging.getLogger("auth.downstream")

USER_TOKEN_TYPES = frozenset({"OAuth2JWTBearer", "OAuth2UserTokenExchange", "OAuth2SAMLBearerAssertion"})
"""Authentication types that take the caller's JWT in ``X-user-token``."""
SUBJECT_TOKEN_TYPES = frozenset({"OAuth2TokenExchange"})
"""Authentication types that take the caller's token in ``X-subject-token`` (RFC 8693)."""
_MAX_BODY = 512 * 1024  # a destination with a keystore is a few KiB
_KEYSTORES = ("pem", "p12", "pfx")
_HEADER_NAME = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]{0,20})PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]*?-----END \1PRIVATE KEY-----")
Code = Literal["destination_unavailable", "destination_refused"]


class DestinationError(Exception):
    """A destination cannot be had.

    Attributes:
        code: ``destination_unavailable`` (the service or its token endpoint cannot be reached,
            or answers nonsense: try again later) or ``destination_refused`` (unknown name, our
            credentials refused, the service could not fetch the destination's token, an
            unsupported configuration).
        status: the service's HTTP status, if any.
    """

    def __init__(self, code: Code, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code: Code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class Destination:
    """What a call needs from a destination: where, and the headers (and certificate) to present.

    Secrets (``headers``, ``client_certificate``) stay out of the ``repr``; the destination's
    own credentials (``clientSecret``, ``Password``, ...) are not kept at all.

    Attributes:
        name: the destination's name.
        url: its ``URL``.
        authentication: its ``Authentication`` type.
        headers: ready-made headers: the tokens' ``http_header`` entries, ``sap-client``, ``URL.headers.*``.
        client_certificate: for ``ClientCertificateAuthentication``: the PEM certificate chain and
            unencrypted key to present over TLS.
        lifetime: seconds until the shortest-lived token expires; None when there are no tokens.
    """

    name: str
    url: str
    authentication: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    client_certificate: str | None = field(default=None, repr=False)
    lifetime: float | None = None

    @property
    def caller_token_header(self) -> str | None:
        """The header that takes the caller's token for this type, or None (no caller token needed)."""
        return caller_headers(self.authentication)


def caller_headers(authentication: str) -> str | None:
    """``X-user-token`` or ``X-subject-token`` for a type that needs the caller's token, else None (pure)."""
    if authentication in USER_TOKEN_TYPES:
        return "X-user-token"
    if authentication in SUBJECT_TOKEN_TYPES:
        return "X-subject-token"
    return None


def _lifetime(value: object) -> float | None:
    try:
        seconds = float(value)  # type: ignore[arg-type]  # the service sends a string or a number
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds < 10 * 365 * 86400 else None


def certificate_bundle(certificates: object, properties: Mapping[str, Any], name: str) -> str:
    """The PEM chain and key of a ``ClientCertificateAuthentication`` destination's keystore (pure).

    The keystore is the entry of ``certificates`` named by ``KeyStoreLocation`` (a ``.pem`` bundle
    or a ``.p12``/``.pfx`` PKCS #12 file, base64 in ``Content``), opened with ``KeyStorePassword``.

    Raises:
        DestinationError: destination_refused: no usable keystore, or it cannot be opened.
    """
    location = properties.get("KeyStoreLocation")
    entries = [c for c in certificates if isinstance(c, dict)] if isinstance(certificates, list) else []
    chosen = next((c for c in entries if c.get("Name") == location), None) if location else None
    if chosen is None and not location:
        chosen = next((c for c in entries if str(c.get("Name", "")).rsplit(".", 1)[-1].lower() in _KEYSTORES), None)
    if chosen is None or not isinstance(chosen.get("Content"), str):
        raise DestinationError("destination_refused", f"destination {name!r}: no client certificate keystore")
    kind = str(chosen.get("Name", "")).rsplit(".", 1)[-1].lower()
    password = properties.get("KeyStorePassword")
    secret = password.encode() if isinstance(password, str) and password else None
    try:
        content = base64.b64decode("".join(chosen["Content"].split()), validate=True)
    except (binascii.Error, ValueError):
        raise DestinationError("destination_refused", f"destination {name!r}: keystore is not base64") from None
    try:
        if kind in ("p12", "pfx"):
            key, leaf, chain = pkcs12.load_key_and_certificates(content, secret)
            if key is None or leaf is None:
                raise ValueError("no key or certificate")
            certs = [leaf, *(chain or [])]
        elif kind == "pem":
            certs = x509.load_pem_x509_certificates(content)
            block = _PEM_KEY.search(content)
            if block is None:
                raise ValueError("no private key")
            key = serialization.load_pem_private_key(block.group(0), secret)
        else:
            raise ValueError(f"unsupported keystore type {kind!r}")
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
        pem += key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    except Exception as exc:  # never echo key material: the exception's name only
        raise DestinationError(
            "destination_refused", f"destination {name!r}: the keystore cannot be opened ({type(exc).__name__})"
        ) from None
    return pem.decode("ascii")


def parse_destination(status: int, body: bytes, name: str) -> Destination:
    """Interpret the service's answer to a lookup (pure).

    Raises:
        DestinationError: destination_refused for 4xx, a token the service could not fetch, an
            on-premise destination or an unusable URL; destination_unavailable for anything else
            that is not a destination.
    """
    if status == 404:
        raise DestinationError("destination_refused", f"no destination named {name!r}", status=status)
    if 400 <= status < 500:
        raise DestinationError("destination_refused", f"destination service refused: HTTP {status}", status=status)
    doc = json_object(body) if status == 200 else None
    config = doc.get("destinationConfiguration") if doc else None
    if not isinstance(config, dict):
        raise DestinationError("destination_unavailable", f"destination service answered HTTP {status}", status=status)
    url, authentication = config.get("URL"), config.get("Authentication") or "NoAuthentication"
    if config.get("ProxyType", "Internet") not in ("Internet", None):
        raise DestinationError(
            "destination_refused", f"destination {name!r}: ProxyType {str(config.get('ProxyType'))[:40]!r} "
            "needs the Connectivity service, which is not supported"
        )
    if not isinstance(url, str) or not isinstance(authentication, str):
        raise DestinationError("destination_refused", f"destination {name!r} has no URL")
    try:
        check_issuer_url(url.rstrip("/"), "URL", allow_query=True)
    except ValueError:
        raise DestinationError("destination_refused", f"destination {name!r}: URL is not an https URL") from None
    headers: list[tuple[str, str]] = []
    if isinstance(config.get("sap-client"), str):
        headers.append(("sap-client", config["sap-client"]))
    for key, value in config.items():
        if key.startswith("URL.headers.") and isinstance(value, str) and set(key[12:]) <= _HEADER_NAME and key[12:]:
            headers.append((key[12:], value))
    lifetimes = []
    tokens = doc.get("authTokens") if doc else None
    for token in tokens if isinstance(tokens, list) else ():
        if not isinstance(token, dict):
            continue
        if token.get("error"):
            # The service could not get the destination's token (say the exchange was refused).
            log.warning("destination %s: token retrieval failed: %s", name, str(token["error"])[:200])
            raise DestinationError(
                "destination_refused", f"destination {name!r}: the service could not fetch its token"
            )
        header = token.get("http_header")
        if not isinstance(header, dict) or not isinstance(header.get("key"), str) or not header.get("value"):
            raise DestinationError("destination_unavailable", f"destination {name!r}: an auth token has no http_header")
        headers.append((header["key"], str(header["value"])))
        if (seconds := _lifetime(token.get("expires_in"))) is not None:
            lifetimes.append(seconds)
    if authentication not in ("NoAuthentication", "ClientCertificateAuthentication") and not any(
        k.lower() == "authorization" for k, _ in headers
    ):
        raise DestinationError(
            "destination_refused", f"destination {name!r} ({authentication}): no token in the answer"
        )
    certificate = None
    if authentication == "ClientCertificateAuthentication":
        certificate = certificate_bundle(doc.get("certificates") if doc else None, config, name)
    return Destination(
        name=name,
        url=url,
        authentication=authentication,
        headers=tuple(headers),
        client_certificate=certificate,
        lifetime=min(lifetimes) if lifetimes else None,
    )


class DestinationService:
    """Looks destinations up, with the binding's own token; caches, bounded, single-flight.

    Args:
        binding: the service URL and our credentials at its token service.
        provider: the `TokenProvider` for the service's token; one over ``binding.credentials`` by default.
        http_client: for the service (not closed by us); by default one of our own.
        ca_file: extra trusted CAs for the client we create.
        timeout: seconds per HTTP request to the service.
        ttl: how long an answer without tokens (and a destination's type) is reused.
        cache_size: answers kept, one per destination and caller.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        binding: DestinationBinding,
        *,
        provider: TokenProvider | None = None,
        http_client: httpx.AsyncClient | None = None,
        ca_file: str | None = None,
        timeout: float = 5.0,
        ttl: float = 300.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._binding = binding
        self._base = binding.service_url.rstrip("/") + "/destination-configuration/v1/destinations/"
        self._provider = provider or TokenProvider(binding.credentials, ca_bundle=ca_file, timeout=timeout)
        self._owns_provider = provider is None
        self._client = http_client
        self._owns_client = http_client is None
        self._ca_file = ca_file
        self._timeout = timeout
        self._ttl = ttl
        self._max = cache_size
        self._clock = clock
        self._answers: OrderedDict[Hashable, tuple[float, Destination]] = OrderedDict()
        self._types: dict[str, tuple[float, str]] = {}
        self._flight = _SingleFlight()
        self.lookups = 0  # requests sent to the service (for tests and metrics)

    def __repr__(self) -> str:
        return f"DestinationService({self._binding.service_url!r})"

    async def __aenter__(self) -> DestinationService:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close what we created."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._owns_provider:
            await self._provider.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=tls_context(self._ca_file), timeout=httpx.Timeout(self._timeout),
                follow_redirects=False, trust_env=False,
            )
        return self._client

    async def authentication(self, name: str) -> str:
        """The destination's ``Authentication`` type, learnt without fetching any token (cached).

        Raises:
            DestinationError: the destination cannot be looked up.
        """
        known = self._types.get(name)
        if known is not None and self._clock() < known[0]:
            return known[1]

        async def probe() -> str:
            status, body = await self._get(name, {}, skip_tokens=True)
            doc = json_object(body) if status == 200 else None
            config = doc.get("destinationConfiguration") if doc else None
            if not isinstance(config, dict):
                parse_destination(status, body, name)  # raises the matching error
                raise DestinationError("destination_unavailable", f"destination {name!r}: unusable answer")
            kind = str(config.get("Authentication") or "NoAuthentication")[:80]
            if len(self._types) >= self._max:
                self._types.clear()
            self._types[name] = (self._clock() + self._ttl, kind)
            return kind

        return await self._flight.run(("type", name), probe)

    async def lookup(self, name: str, *, caller_token: str | None = None) -> Destination:
        """The destination ``name``, with tokens for the caller when its type needs them.

        ``caller_token`` is sent (as ``X-user-token`` or ``X-subject-token``) only when the
        destination's type takes one.

        Raises:
            DestinationError: the destination cannot be had; destination_refused when it needs a
                caller's token and none was given.
        """
        header = caller_headers(await self.authentication(name))
        if header is not None and caller_token is None:
            raise DestinationError("destination_refused", f"destination {name!r} needs the caller's token")
        key = (name, token_digest(caller_token) if header is not None and caller_token is not None else None)
        cached = self._answers.get(key)
        if cached is not None and self._clock() < cached[0]:
            self._answers.move_to_end(key)
            return cached[1]
        extra: dict[str, str] = {}
        if header == "X-user-token" and caller_token is not None:
            extra["X-user-token"] = caller_token
        elif header == "X-subject-token" and caller_token is not None:
            extra = {"X-subject-token": caller_token, "X-subject-token-type": ACCESS_TOKEN_TYPE}

        async def fetch() -> Destination:
            started = self._clock()
            status, body = await self._get(name, extra)
            found = parse_destination(status, body, name)
            if found.authentication != (self._types.get(name) or (0, found.authentication))[1]:
                self._types.pop(name, None)  # changed since the probe: learn it again next time
            lifetime = found.lifetime if found.lifetime is not None else self._ttl
            keep = min(self._ttl, lifetime - refresh_margin(lifetime))
            if keep > 0:
                self._answers[key] = (started + keep, found)
                self._answers.move_to_end(key)
                while len(self._answers) > self._max:
                    self._answers.popitem(last=False)
            return found

        return await self._flight.run(("lookup", key), fetch)

    def forget(self, name: str, caller_token: str | None) -> None:
        """Drop the cached answer for ``name`` and this caller (say, its token was refused)."""
        self._answers.pop((name, token_digest(caller_token) if caller_token is not None else None), None)
        self._answers.pop((name, None), None)

    async def _get(self, name: str, extra: Mapping[str, str], *, skip_tokens: bool = False) -> tuple[int, bytes]:
        url = self._base + quote(name, safe="")
        params = {"$skipTokenRetrieval": "true"} if skip_tokens else None
        for attempt in (1, 2):
            try:
                token = await self._provider.token(force_refresh=attempt == 2)
            except TokenRequestRejected as exc:
                raise DestinationError(
                    "destination_refused", f"destination service credentials refused: {exc.error or exc.status}"
                ) from None
            except TokenEndpointUnreachable:
                raise DestinationError(
                    "destination_unavailable", "destination service token endpoint unreachable"
                ) from None
            except TokenRequestError:
                raise DestinationError("destination_unavailable", "no token for the destination service") from None
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", **extra}
            self.lookups += 1
            try:
                async with self._http().stream("GET", url, params=params, headers=headers) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > _MAX_BODY:
                            raise DestinationError("destination_unavailable", "destination answer too large")
            except httpx.HTTPError as exc:
                log.warning("destination service %s: %s", self._binding.service_url, type(exc).__name__)
                raise DestinationError("destination_unavailable", "destination service unreachable") from None
            if response.status_code == 401 and attempt == 1:
                self._provider.invalidate(token)  # revoked or expired early: one fresh token
                continue
            if response.status_code >= 500:
                raise DestinationError(
                    "destination_unavailable", f"destination service answered HTTP {response.status_code}",
                    status=response.status_code,
                )
            return response.status_code, bytes(body)
        raise AssertionError("unreachable")  # pragma: no cover
