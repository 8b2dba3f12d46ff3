"""Calling a named downstream from a tool: one call, a token of its own, never the caller's.

    downstreams = Downstreams(load_downstreams(os.environ))          # once, at start; aclose() at the end

    @mcp.tool()
    async def orders() -> dict[str, object]:
        response = await downstreams.request("s4", "GET", "/orders")  # bound to the current caller
        return response.json()

Per call: the downstream's mode (configuration, not the tool) decides the token: ``as-server``
asks for a client-credentials token for the downstream's ``resource``; ``on-behalf-of`` exchanges
the current caller's token (read from the request context our middleware sets) for one addressed
to the downstream; ``destination`` asks the BTP Destination service. Tokens are cached per
(grant and target, caller's token), so one caller's token never reaches another's call. The
caller's token itself goes only to the token endpoint or the Destination service, never to a
downstream: a token equal to it is refused even if an issuer handed it back.

Everything that can go wrong ends as a `DownstreamError`, an MCP ``ToolError`` with a stable
``code`` and a message the model can act on, within the downstream's deadline. Each call writes
one audit line (downstream, mode, outcome, HTTP status, duration; never a token).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver.exceptions import ToolError

from .._context import optional_token
from .._http import tls_context
from .._observe import NO_OBSERVER, Observer
from ..client._credentials import (
    InvalidClient,
    RetryPolicy,
    TokenEndpointUnreachable,
    TokenRequestError,
    TokenRequestRejected,
    _private_pem_file,
)
from ..client._exchange import token_digest
from ..client._provider import TokenProvider
from ._destination import Destination, DestinationError, DestinationService
from ._settings import Downstream, DownstreamSettings

__all__ = ["Downstreams", "DownstreamError", "ErrorCode", "AuditWrite"]

log = logging.getLogger("auth.downstream")
_audit_log = logging.getLogger("audit")

ErrorCode = Literal[
    "unknown_downstream",
    "no_caller",
    "exchange_refused",
    "issuer_unavailable",
    "destination_refused",
    "destination_unavailable",
    "passthrough_refused",
    "unauthorized",
    "forbidden",
    "unreachable",
    "timeout",
    "response_too_large",
]
AuditWrite = Callable[[str, Mapping[str, Any]], None]
_MAX_RESPONSE = 4 * 1024 * 1024


class DownstreamError(ToolError):
    """A downstream call failed; the tool call reports it as an error the model can read.

    An MCP ``ToolError``: raised from a tool, the SDK answers ``isError: true`` with the message
    (never a bare 500). The message names the downstream and what happened, never a token or an
    issuer's free text.

    Attributes:
        code: stable: ``exchange_refused``, ``issuer_unavailable``, ``unauthorized`` (the downstream
            answered 401), ``forbidden`` (403), ``timeout``, ``unreachable``, ``no_caller``,
            ``destination_refused``, ``destination_unavailable``, ``unknown_downstream``,
            ``passthrough_refused``, ``response_too_large``.
        downstream: the downstream's name.
        status: the HTTP status behind it, if any.
    """

    def __init__(self, code: ErrorCode, downstream: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"downstream {downstream!r} [{code}]: {detail}")
        self.code: ErrorCode = code
        self.downstream = downstream
        self.status = status


def _default_audit(msg: str, fields: Mapping[str, Any]) -> None:
    _audit_log.info(msg, extra={"audit": dict(fields)})


@dataclass(frozen=True, slots=True)
class _Caller:
    token: str | None = field(repr=False)
    client_id: str | None
    expires_in: float | None


@dataclass(frozen=True, slots=True)
class _Authorization:
    """Where to send and what to present, for one call."""

    base_url: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    token: str | None = field(default=None, repr=False)  # ours, to invalidate on a 401
    certificate: str | None = field(default=None, repr=False)
    authentication: str | None = None


class Downstreams:
    """The configured downstreams, callable from any tool on behalf of the current request.

    Args:
        settings: the downstreams and our credentials (`load_downstreams`).
        provider: token provider for our credentials; by default one of our own (closed by `aclose`).
        destinations: the Destination service client; by default one over the settings' binding.
        audit: writes one line per downstream call, ``(msg, fields)``; the ``audit`` logger by default.
        clock: monotonic seconds, for durations.
        wall_clock: seconds since the epoch, to tell how long the caller's token stays valid.
        max_response_bytes: `request` refuses a larger answer.
    """

    def __init__(
        self,
        settings: DownstreamSettings,
        *,
        provider: TokenProvider | None = None,
        destinations: DestinationService | None = None,
        audit: AuditWrite | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
        max_response_bytes: int = _MAX_RESPONSE,
        observer: Observer | None = None,
    ) -> None:
        self._settings = settings
        self._observer = observer or NO_OBSERVER
        self._owned: list[Any] = []
        if provider is None and settings.credentials is not None:
            timeout = min(5.0, max((d.timeout_s for d in settings.downstreams.values()), default=5.0))
            provider = TokenProvider(
                settings.credentials,
                ca_bundle=settings.ca_file,
                timeout=timeout,
                retry=RetryPolicy(attempts=2, base_delay=0.25, max_delay=1.0),
            )
            self._owned.append(provider)
        if destinations is None and settings.destination_service is not None:
            destinations = DestinationService(settings.destination_service, ca_file=settings.ca_file)
            self._owned.append(destinations)
        self._provider = provider
        self._destinations = destinations
        self._audit = audit or _default_audit
        self._clock = clock
        self._wall = wall_clock
        self._max_response = max_response_bytes
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._tls_clients: dict[str, tuple[bytes, httpx.AsyncClient]] = {}

    def __repr__(self) -> str:
        return f"Downstreams({sorted(self._settings.downstreams)!r})"

    @property
    def names(self) -> tuple[str, ...]:
        """The configured downstreams' names."""
        return tuple(self._settings.downstreams)

    def __contains__(self, name: object) -> bool:
        return name in self._settings.downstreams

    def downstream(self, name: str) -> Downstream:
        """The configuration of ``name``.

        Raises:
            DownstreamError: unknown_downstream.
        """
        found = self._settings.downstreams.get(name)
        if found is None:
            raise DownstreamError("unknown_downstream", name[:64], "no downstream of that name is configured")
        return found

    async def __aenter__(self) -> Downstreams:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP clients and what we created."""
        clients = [*self._clients.values(), *(c for _, c in self._tls_clients.values())]
        self._clients.clear()
        self._tls_clients.clear()
        for client in clients:
            await client.aclose()
        for owned in self._owned:
            await owned.aclose()

    # ----------------------------------------------------------------------- the one-call API

    async def token(self, name: str, *, subject_token: str | None = None) -> str:
        """A bearer token for ``name``, for the current caller (cached while valid).

        ``subject_token`` replaces the current request's token as the one exchanged (for a
        framework whose requests this layer's context does not reach).

        Raises:
            DownstreamError: anything that keeps a token from being had, within the deadline.
        """
        downstream = self.downstream(name)
        started, status, outcome = self._clock(), None, "error"
        caller = _Caller(None, None, None)
        try:
            caller = self._caller(downstream, subject_token)
            async with asyncio.timeout(downstream.timeout_s):
                authorization = await self._authorize(downstream, caller)
            token = authorization.token
            if token is None:
                raise DownstreamError("destination_refused", name, "the destination has no bearer token; use request()")
            outcome = "ok"
            return token
        except TimeoutError:
            outcome = "timeout"
            raise DownstreamError("timeout", name, f"no token within {downstream.timeout_s:g} s") from None
        except DownstreamError as exc:
            outcome, status = exc.code, exc.status
            raise
        finally:
            self._write_audit(downstream, caller, "token", outcome, status, started)

    async def request(
        self,
        name: str,
        method: str,
        path: str = "",
        *,
        subject_token: str | None = None,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
    ) -> httpx.Response:
        """Call ``name`` (``path`` is joined to its URL) with its own token, within its deadline.

        The answer comes back read (at most ``max_response_bytes``). A 401 is retried once with a
        fresh token; a second 401, and a 403, end as `DownstreamError`; any other status is the
        tool's to judge.

        Raises:
            DownstreamError: no token, the downstream refused it (401/403), could not be reached,
                or did not answer within the deadline.
        """
        downstream = self.downstream(name)
        started, status, outcome = self._clock(), None, "error"
        caller = _Caller(None, None, None)
        authentication = None
        # A client span and the duration metric when telemetry is on; its trace headers go out too.
        with self._observer.downstream(name, downstream.destination or _host(downstream.url)) as call:
            if call.headers:
                headers = {**call.headers, **(headers or {})}
            try:
                caller = self._caller(downstream, subject_token)
                async with asyncio.timeout(downstream.timeout_s):
                    for attempt in (1, 2):
                        authorization = await self._authorize(downstream, caller, fresh=attempt == 2)
                        authentication = authorization.authentication
                        response = await self._send(
                            downstream, authorization, method, path,
                            params=params, headers=headers, json=json, content=content, caller_token=caller.token,
                        )
                        status = response.status_code
                        if status != 401 or attempt == 2:
                            break
                        self._forget(downstream, caller, authorization)  # revoked early? one fresh token
                self._check_refusal(downstream, response)
                outcome = "ok"
                return response
            except TimeoutError:
                outcome = "timeout"
                raise DownstreamError("timeout", name, f"no answer within {downstream.timeout_s:g} s") from None
            except DownstreamError as exc:
                outcome, status = exc.code, exc.status if exc.status is not None else status
                raise
            finally:
                if status is not None:
                    call.set_status(status)
                self._write_audit(downstream, caller, "request", outcome, status, started, authentication)

    def client(self, name: str) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for ``name`` (``as-server`` or ``on-behalf-of``): its URL as
        ``base_url``, and per request a token for the then current caller.

        Shared and closed by `aclose`: do not close it. Each request writes an audit line; a 401
        after one fresh token, and a 403, raise `DownstreamError`. The token is had within the
        downstream's deadline, and each HTTP phase is bounded by it.

        Raises:
            DownstreamError: unknown_downstream, or a ``destination`` downstream (use `request`).
        """
        downstream = self.downstream(name)
        if downstream.mode == "destination":
            raise DownstreamError("unknown_downstream", name, "a destination is called through request()")
        client = self._clients.get(name)
        if client is None:
            assert downstream.url is not None  # checked by Downstream
            client = httpx.AsyncClient(
                base_url=downstream.url.rstrip("/") + "/",
                auth=_DownstreamAuth(self, downstream),
                verify=tls_context(self._settings.ca_file),
                timeout=httpx.Timeout(downstream.timeout_s),
                follow_redirects=False,  # a redirect must not carry the token elsewhere
                trust_env=False,
            )
            self._clients[name] = client
        return client

    # ----------------------------------------------------------------------- internals

    def _caller(self, downstream: Downstream, subject_token: str | None) -> _Caller:
        """The current request's caller: the principal our verifier accepted, and its raw token.

        Raises:
            DownstreamError: no_caller when the downstream needs the caller's token and there is none.
        """
        principal = optional_token()
        client_id = principal.client_id if principal is not None else None
        expires_in = None  # how long the token to exchange stays valid, when known
        if subject_token is None and principal is not None:
            # The SDK's context holds the raw bearer token next to the principal our middleware bound.
            access = get_access_token()
            if access is not None and access.client_id == principal.client_id:
                subject_token = access.token
                expires_in = principal.expires_at - self._wall()
        if subject_token is None and downstream.needs_caller:
            raise DownstreamError(
                "no_caller", downstream.name, "calls on behalf of the caller, but this request has no caller token"
            )
        # Kept in every mode: exchanged (on-behalf-of), offered to a destination that takes it, and
        # otherwise only looked for in what is about to be sent, so it never is.
        return _Caller(subject_token, client_id, expires_in)

    async def _authorize(self, downstream: Downstream, caller: _Caller, *, fresh: bool = False) -> _Authorization:
        name = downstream.name
        if downstream.mode == "destination":
            destination = await self._destination(downstream, caller)
            bearer = next(
                (v[7:] for k, v in destination.headers if k.lower() == "authorization" and v[:7].lower() == "bearer "),
                None,
            )
            authorization = _Authorization(
                destination.url, destination.headers, bearer, destination.client_certificate, destination.authentication
            )
        else:
            assert self._provider is not None and downstream.target is not None and downstream.url is not None
            target = downstream.target
            try:
                if downstream.mode == "as-server":
                    issued = await self._provider.issued_token(fresh, resource=target.resource)
                else:
                    assert caller.token is not None  # _caller made sure
                    issued = await self._provider.exchange(
                        caller.token, target, subject_expires_in=caller.expires_in, force_refresh=fresh
                    )
            except InvalidClient as exc:
                raise DownstreamError(
                    "exchange_refused",
                    name,
                    f"the identity service refused this server's credentials ({exc.error or exc.status})",
                    status=exc.status,
                ) from None
            except TokenRequestRejected as exc:
                what = "to exchange the caller's token" if downstream.needs_caller else "a token for this server"
                raise DownstreamError(
                    "exchange_refused", name, f"the identity service refused {what} ({exc.error or exc.status})",
                    status=exc.status,
                ) from None
            except TokenEndpointUnreachable:
                raise DownstreamError(
                    "issuer_unavailable", name, "the identity service is unreachable; try again shortly"
                ) from None
            except TokenRequestError as exc:
                raise DownstreamError(
                    "issuer_unavailable", name, f"no usable token from the identity service ({type(exc).__name__})"
                ) from None
            token = issued.access_token
            authorization = _Authorization(downstream.url, (("Authorization", f"Bearer {token}"),), token)
        if caller.token is not None and any(
            hmac.compare_digest(caller.token.encode(), v.partition(" ")[2].encode()) for _, v in authorization.headers
        ):
            # The MCP authorization spec: never forward the token we received. Should an issuer
            # (or a destination) hand it back, it stays here.
            log.error("downstream %s: the token to send is the caller's own; refused", name)
            raise DownstreamError("passthrough_refused", name, "refused to forward the caller's token")
        return authorization

    async def _destination(self, downstream: Downstream, caller: _Caller) -> Destination:
        assert self._destinations is not None and downstream.destination is not None
        try:
            return await self._destinations.lookup(downstream.destination, caller_token=caller.token)
        except DestinationError as exc:
            raise DownstreamError(exc.code, downstream.name, str(exc), status=exc.status) from None

    def _forget(self, downstream: Downstream, caller: _Caller, authorization: _Authorization) -> None:
        if downstream.mode == "destination":
            if self._destinations is not None and downstream.destination is not None:
                self._destinations.forget(downstream.destination, caller.token)
        elif self._provider is not None and authorization.token is not None:
            self._provider.invalidate(authorization.token)

    def _check_refusal(self, downstream: Downstream, response: httpx.Response) -> None:
        if response.status_code == 401:
            raise DownstreamError(
                "unauthorized", downstream.name, "the downstream API refused the token (HTTP 401)", status=401
            )
        if response.status_code == 403:
            raise DownstreamError(
                "forbidden", downstream.name, "the downstream API denied access (HTTP 403)", status=403
            )

    def _http_for(self, downstream: Downstream, authorization: _Authorization) -> httpx.AsyncClient:
        if authorization.certificate is None:
            key = "\0plain"
            digest = b""
        else:
            key, digest = downstream.name, token_digest(authorization.certificate)
        held = self._tls_clients.get(key)
        if held is not None and held[0] == digest:
            return held[1]
        verify: ssl.SSLContext | bool = tls_context(self._settings.ca_file)
        if authorization.certificate is not None:
            verify = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context()
            with _private_pem_file(authorization.certificate.encode("ascii")) as path:
                verify.load_cert_chain(path)
        client = httpx.AsyncClient(
            verify=verify, timeout=httpx.Timeout(downstream.timeout_s), follow_redirects=False, trust_env=False
        )
        if held is not None:
            self._owned.append(held[1])  # a rotated certificate: close the old client at the end
        self._tls_clients[key] = (digest, client)
        return client

    async def _send(
        self,
        downstream: Downstream,
        authorization: _Authorization,
        method: str,
        path: str,
        *,
        params: Any,
        headers: Mapping[str, str] | None,
        json: Any,
        content: bytes | str | None,
        caller_token: str | None,
    ) -> httpx.Response:
        name = downstream.name
        url = authorization.base_url.rstrip("/") + ("/" + path.lstrip("/") if path else "")
        ours = {k.lower() for k, _ in authorization.headers}
        sent = {k: v for k, v in (headers or {}).items() if k.lower() not in ours}  # ours win, never doubled
        sent.update(authorization.headers)
        if downstream.mode == "destination":
            http = self._http_for(downstream, authorization)
        else:
            http = self._http_for(downstream, _Authorization(authorization.base_url, ()))
        try:
            request = http.build_request(method, url, params=params, headers=sent, json=json, content=content)
            _refuse_passthrough(name, caller_token, request)
            response = await http.send(request, stream=True)
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_response:
                        raise DownstreamError(
                            "response_too_large", name, f"the answer exceeds {self._max_response} bytes",
                            status=response.status_code,
                        )
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            log.warning("downstream %s: %s", name, type(exc).__name__)
            raise DownstreamError(
                "unreachable", name, f"cannot reach the downstream API ({type(exc).__name__})"
            ) from None
        return httpx.Response(response.status_code, headers=response.headers, content=bytes(body), request=request)

    def _write_audit(
        self,
        downstream: Downstream,
        caller: _Caller,
        call: str,
        outcome: str,
        status: int | None,
        started: float,
        authentication: str | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            "client_id": caller.client_id,
            "downstream": downstream.name,
            "mode": downstream.mode,
            "call": call,
            "outcome": outcome,
            "status": status,
            "duration_ms": round((self._clock() - started) * 1000, 2),
        }
        if authentication is not None:
            fields["authentication"] = authentication
        try:
            self._audit("downstream call", fields)
        except Exception:  # the audit must not turn a finished call into a failure
            log.exception("audit write failed")


def _refuse_passthrough(name: str, caller_token: str | None, request: httpx.Request) -> None:
    """Refuse to send the caller's token anywhere in a request: URL, any header, the body.

    The MCP authorization specification forbids forwarding the token the server received; this
    holds for a tool's own headers, query and body too, not only for the ``Authorization`` we set.

    Raises:
        DownstreamError: passthrough_refused.
    """
    if not caller_token:
        return
    needle = caller_token.encode("ascii", "ignore")
    body = request.content if isinstance(request.stream, httpx.ByteStream) else b""
    if needle in str(request.url).encode() or needle in body or any(needle in v for _, v in request.headers.raw):
        log.error("downstream %s: the request carries the caller's own token; refused", name)
        raise DownstreamError("passthrough_refused", name, "refused to forward the caller's token")


class _DownstreamAuth(httpx.Auth):
    """The `Downstreams.client` flow: a token for the current caller, one fresh retry on 401."""

    def __init__(self, owner: Downstreams, downstream: Downstream) -> None:
        self._owner = owner
        self._downstream = downstream

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise TypeError("downstream clients are asynchronous")
        yield request  # pragma: no cover

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        owner, downstream = self._owner, self._downstream
        started, status, outcome = owner._clock(), None, "error"
        caller = _Caller(None, None, None)
        try:
            caller = owner._caller(downstream, None)
            await request.aread()  # a retried request must be re-sendable
            response = None
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(downstream.timeout_s):
                        authorization = await owner._authorize(downstream, caller, fresh=attempt == 2)
                except TimeoutError:
                    outcome = "timeout"
                    raise DownstreamError(
                        "timeout", downstream.name, f"no token within {downstream.timeout_s:g} s"
                    ) from None
                request.headers["Authorization"] = dict(authorization.headers)["Authorization"]
                _refuse_passthrough(downstream.name, caller.token, request)
                response = yield request
                status = response.status_code
                if status != 401:
                    break
                owner._forget(downstream, caller, authorization)
            assert response is not None
            owner._check_refusal(downstream, response)
            outcome = "ok"
        except DownstreamError as exc:
            outcome, status = exc.code, exc.status if exc.status is not None else status
            raise
        finally:
            owner._write_audit(downstream, caller, "client", outcome, status, started)


def _host(url: str | None) -> str:
    """The host of a downstream's URL, for telemetry (never a path or query)."""
    return httpx.URL(url).host if url else ""
