"""What the auth layer tells an operator, through an injected `Observer` (no-op by default).

The auth layer imports no telemetry library. Each place where something worth counting happens
makes one call on the observer it was given; the server wires an OpenTelemetry implementation
(``server/_otel.py``) when telemetry is configured, and everything else gets `NO_OBSERVER`, whose
methods do nothing. Events and what they carry:

- ``verifying()``: a context around one request's authentication (the ``Authorization`` header,
  the verifier, the certificate binding); it sees the `AuthError` that refuses the request, which
  `verification_outcome` turns into an outcome and a reason category;
- ``fetching_keys(issuer, configured=...)``: a context around one key-set fetch; it sees the
  fetch's failure, which `fetch_result` turns into a result;
- ``token_cache(hit=...)``: the verified-token cache answered or not;
- ``refused(tools, permissions)``: the 403 gate refused a call of ``tools`` for lack of ``permissions``;
- ``rate_limited(kind)``: a request was refused by a rate limit (``kind``: ``read`` or ``write``);
- ``downstream(name, target)``: a context around one onward call; it yields a `DownstreamCall`
  whose ``headers`` (the trace context) go on the outgoing request and whose ``status`` is set
  from the answer.

Nothing the observer receives is a token, a claim value or a subject: issuers are the
configured ones (a token-named issuer is passed with ``configured=False``, for the observer to
fold into one label), tool names are the caller's (the observer bounds them to the registered
set), permissions come from the server's table, and categories are fixed strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Literal, Protocol

from ._errors import (
    AuthError,
    BadSignature,
    CertificateMismatch,
    InsufficientScope,
    KeysUnavailable,
    MalformedToken,
    MissingToken,
    TokenExpired,
    TokenNotYetValid,
    UntrustedIssuer,
    WrongAudience,
)

__all__ = [
    "Observer",
    "DownstreamCall",
    "NoObserver",
    "NO_OBSERVER",
    "verification_outcome",
    "fetch_result",
    "OUTCOMES",
    "REASONS",
    "FETCH_RESULTS",
]

Outcome = Literal["valid", "missing", "invalid", "forbidden", "unavailable", "error"]
OUTCOMES: tuple[Outcome, ...] = ("valid", "missing", "invalid", "forbidden", "unavailable", "error")
"""Outcomes of a request's authentication: every value `verification_outcome` returns."""

REASONS = (
    "none",  # valid
    "missing",  # no credentials (RFC 6750 §3.1)
    "expired",
    "not_yet_valid",
    "audience",
    "issuer",
    "signature",
    "malformed",
    "certificate",
    "invalid",  # an invalid token of no finer category
    "keys_unavailable",  # the issuer's keys cannot be had (503)
    "insufficient_scope",
    "error",  # not an AuthError: a bug, counted rather than hidden
)
"""Reason categories: a fixed set, so a metric label stays bounded whatever tokens arrive."""

# The categories of `InvalidToken` (the same ones the client's error_description names).
_CATEGORIES: tuple[tuple[type[AuthError], str], ...] = (
    (TokenExpired, "expired"),
    (TokenNotYetValid, "not_yet_valid"),
    (WrongAudience, "audience"),
    (UntrustedIssuer, "issuer"),
    (BadSignature, "signature"),
    (MalformedToken, "malformed"),
    (CertificateMismatch, "certificate"),
)

FETCH_RESULTS = ("ok", "refused", "not_found", "connection_refused", "timeout", "error")
"""Results of a key-set fetch: every value `fetch_result` returns."""

# By class name: `auth._jwks`, which defines the fetch errors, imports this module.
_FETCH_BY_CLASS = {
    "FetchRefused": "refused",
    "HostNotFound": "not_found",
    "ConnectionRefused": "connection_refused",
    "TimeoutError": "timeout",
}


def verification_outcome(exc: BaseException | None) -> tuple[Outcome, str]:
    """``(outcome, reason category)`` of a request's authentication that raised ``exc`` (None: it passed).

    Pure; the reason is one of `REASONS`.
    """
    if exc is None:
        return "valid", "none"
    if not isinstance(exc, AuthError):
        return "error", "error"
    if isinstance(exc, MissingToken):
        return "missing", "missing"
    if isinstance(exc, KeysUnavailable):
        return "unavailable", "keys_unavailable"
    if isinstance(exc, InsufficientScope):
        return "forbidden", "insufficient_scope"
    for cls, category in _CATEGORIES:
        if isinstance(exc, cls):
            return "invalid", category
    return "invalid", "invalid"


def fetch_result(exc: BaseException | None) -> str:
    """The result of a key-set fetch that raised ``exc`` (None: it succeeded); one of `FETCH_RESULTS` (pure)."""
    if exc is None:
        return "ok"
    for cls in type(exc).__mro__:
        result = _FETCH_BY_CLASS.get(cls.__name__)
        if result is not None:
            return result
    return "error"


class DownstreamCall(Protocol):
    """One onward call in progress: put ``headers`` on the request, report the answer's ``status``."""

    headers: MutableMapping[str, str]
    """Trace context for the outgoing request (``traceparent``, ``tracestate``); empty when not tracing."""

    def set_status(self, status: int) -> None:
        """The HTTP status the downstream answered."""


class Observer(Protocol):
    """Receives what the auth layer (and code beside it) has to report; see the module docstring.

    Every method must be cheap and must not raise: it runs on the request path.
    """

    def verifying(self) -> AbstractContextManager[object]:
        """A context around one request's authentication; sees the `AuthError` that refuses it."""
        ...

    def fetching_keys(self, issuer: str, *, configured: bool) -> AbstractContextManager[object]:
        """A context around one fetch of ``issuer``'s keys; sees the fetch's failure."""
        ...

    def token_cache(self, *, hit: bool) -> None:
        """The verified-token cache answered a token (``hit``) or the token is verified afresh."""
        ...

    def refused(self, tools: Sequence[str], permissions: Iterable[str]) -> None:
        """A call of ``tools`` was refused for lack of ``permissions`` (HTTP 403)."""
        ...

    def rate_limited(self, kind: str) -> None:
        """A request was refused by a rate limit (HTTP 429); ``kind`` is ``read`` or ``write``."""
        ...

    def downstream(self, name: str, target: str) -> AbstractContextManager[DownstreamCall]:
        """A context around one onward call to the configured downstream ``name`` (``target``: its host)."""
        ...


class _NoCall:
    __slots__ = ("headers",)

    def __init__(self) -> None:
        self.headers: MutableMapping[str, str] = {}

    def set_status(self, status: int) -> None:
        return None


class _Nothing:
    """A reusable context that does nothing (cheaper than a generator-based one)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _Nothing()


class NoObserver:
    """The default `Observer`: every method does nothing, at the cost of a method call."""

    __slots__ = ()

    def verifying(self) -> AbstractContextManager[object]:
        return _NOTHING

    def fetching_keys(self, issuer: str, *, configured: bool) -> AbstractContextManager[object]:
        return _NOTHING

    def token_cache(self, *, hit: bool) -> None:
        return None

    def refused(self, tools: Sequence[str], permissions: Iterable[str]) -> None:
        return None

    def rate_limited(self, kind: str) -> None:
        return None

    def downstream(self, name: str, target: str) -> AbstractContextManager[DownstreamCall]:
        return _no_call()


@contextmanager
def _no_call() -> Iterator[DownstreamCall]:
    yield _NoCall()


NO_OBSERVER: Observer = NoObserver()
"""The observer of every component that was given none."""
