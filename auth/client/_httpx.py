"""Bearer-token auth for httpx and httpx2 clients, from any `TokenSource` (RFC 6750 §2.1).

One generator, `bearer_flow`, holds the logic for both libraries and does no I/O: it
yields either a request to send or a `NeedToken` instruction, and is sent back the
response or the token. `_drive` answers the instructions from the token source inside
``async_auth_flow``, so the token fetch happens on the client's event loop and concurrent
requests share the source's cache and single flight.

The flow: attach ``Authorization: Bearer <token>``; on a 401, invalidate that token, get
a fresh one and resend once. A second 401 is returned to the caller as it is.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, MutableMapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

import httpx
import httpx2

__all__ = ["TokenSource", "NeedToken", "bearer_flow", "HttpxBearerAuth", "Httpx2BearerAuth"]


class TokenSource(Protocol):
    """Where the auth adapters get tokens from (`TokenProvider` is one)."""

    async def token(self, force_refresh: bool = False, *, resource: str | None = None) -> str: ...

    def invalidate(self, token: str) -> None: ...


class _Request(Protocol):
    @property
    def headers(self) -> MutableMapping[str, str]: ...

    async def aread(self) -> bytes: ...


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...


@dataclass(frozen=True, slots=True)
class NeedToken:
    """An instruction from `bearer_flow`: send me a token, after invalidating ``refused`` if set."""

    refused: str | None = None


_Req = TypeVar("_Req", bound=_Request)


def bearer_flow(request: _Req) -> Generator[_Req | NeedToken, Any, None]:
    """The auth flow, free of I/O: yields requests and `NeedToken`; is sent responses and tokens."""
    token: str = yield NeedToken()
    request.headers["Authorization"] = f"Bearer {token}"
    response: _Response = yield request
    if response.status_code != 401:
        return
    # RFC 6750 §3.1: the token may have expired or been revoked early; one fresh try.
    fresh: str = yield NeedToken(refused=token)
    if fresh == token:
        return  # the source has nothing newer: resending would fail the same way
    request.headers["Authorization"] = f"Bearer {fresh}"
    yield request


async def _drive(request: _Req, source: TokenSource, resource: str | None) -> AsyncGenerator[_Req, Any]:
    """Run `bearer_flow`, answering its token instructions from ``source``."""
    await request.aread()  # a retried request must be re-sendable, so its body is buffered
    flow = bearer_flow(request)
    step = next(flow)
    while True:
        if isinstance(step, NeedToken):
            if step.refused is not None:
                source.invalidate(step.refused)
            answer: Any = await source.token(resource=resource)
        else:
            answer = yield step
        try:
            step = flow.send(answer)
        except StopIteration:
            return


def _sync_unsupported() -> NoReturn:
    raise TypeError("bearer token auth needs an AsyncClient: the token source is asynchronous")


class HttpxBearerAuth(httpx.Auth):
    """``httpx.Auth`` sending a token from ``source``; use with ``httpx.AsyncClient``."""

    def __init__(self, source: TokenSource, *, resource: str | None = None) -> None:
        self._source = source
        self._resource = resource

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._source!r}, resource={self._resource!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        _sync_unsupported()
        yield request  # pragma: no cover (makes this a generator, as httpx expects)

    def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        return _drive(request, self._source, self._resource)


class Httpx2BearerAuth(httpx2.Auth):
    """``httpx2.Auth`` sending a token from ``source``: the ``mcp`` SDK's client uses httpx2."""

    def __init__(self, source: TokenSource, *, resource: str | None = None) -> None:
        self._source = source
        self._resource = resource

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._source!r}, resource={self._resource!r})"

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        _sync_unsupported()
        yield request  # pragma: no cover

    def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        return _drive(request, self._source, self._resource)
