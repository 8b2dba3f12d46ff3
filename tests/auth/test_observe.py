"""The auth layer's `Observer` hooks: what each site reports, the fixed categories, and the no-op default."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse

import auth
from auth import BearerAuthMiddleware, InvalidToken, JWTVerifier, KeysUnavailable, MissingToken
from auth._errors import (
    BadSignature,
    CertificateMismatch,
    InsufficientScope,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    UntrustedIssuer,
    WrongAudience,
)
from auth._jwks import FetchError, FetchRefused
from auth._observe import (
    FETCH_RESULTS,
    NO_OBSERVER,
    OUTCOMES,
    REASONS,
    DownstreamCall,
    fetch_result,
    verification_outcome,
)
from tests._idp import IdP

from ._cases import Ctx
from ._support import Clock, settings_for

AUTH_DIR = Path(auth.__file__).parent


class _Named(InvalidToken):
    pass


class _Expired(TokenExpired):  # a subclass of a category keeps its category
    pass


@pytest.mark.parametrize(("exc", "expected"), [
    (None, ("valid", "none")),
    (MissingToken("no header"), ("missing", "missing")),
    (InvalidToken("bad"), ("invalid", "invalid")),
    (_Named("bad"), ("invalid", "invalid")),
    (TokenExpired("reason"), ("invalid", "expired")),
    (TokenNotYetValid("reason"), ("invalid", "not_yet_valid")),
    (WrongAudience("reason"), ("invalid", "audience")),
    (UntrustedIssuer("reason"), ("invalid", "issuer")),
    (BadSignature("reason"), ("invalid", "signature")),
    (MalformedToken("reason"), ("invalid", "malformed")),
    (CertificateMismatch("reason"), ("invalid", "certificate")),
    (_Expired("reason"), ("invalid", "expired")),
    (KeysUnavailable("down"), ("unavailable", "keys_unavailable")),
    (InsufficientScope(frozenset({"a"}), frozenset({"a"})), ("forbidden", "insufficient_scope")),
    (RuntimeError("bug"), ("error", "error")),
])
def test_verification_outcome_is_one_of_the_fixed_categories(exc: BaseException | None,
                                                              expected: tuple[str, str]) -> None:
    outcome, reason = verification_outcome(exc)
    assert (outcome, reason) == expected
    assert outcome in OUTCOMES and reason in REASONS


def test_a_reason_never_carries_text_from_the_error() -> None:
    _, reason = verification_outcome(InvalidToken("kid 'attacker-chosen-text' unknown"))
    assert reason == "invalid"


@pytest.mark.parametrize(("exc", "expected"), [
    (None, "ok"),
    (FetchRefused("GET x answered 404"), "refused"),
    (TimeoutError(), "timeout"),
    (FetchError("not JSON"), "error"),
    (type("HostNotFound", (FetchError,), {})("nx"), "not_found"),
    (type("ConnectionRefused", (FetchError,), {})("refused"), "connection_refused"),
])
def test_fetch_result_is_one_of_the_fixed_results(exc: BaseException | None, expected: str) -> None:
    assert fetch_result(exc) == expected
    assert expected in FETCH_RESULTS


def test_the_default_observer_does_nothing_and_reuses_its_contexts() -> None:
    assert NO_OBSERVER.verifying() is NO_OBSERVER.verifying()
    with NO_OBSERVER.verifying(), NO_OBSERVER.fetching_keys("https://issuer", configured=True):
        pass
    with pytest.raises(InvalidToken), NO_OBSERVER.verifying():  # never swallows what it sees
        raise InvalidToken("x")
    NO_OBSERVER.token_cache(hit=True)
    NO_OBSERVER.refused(["t"], ["p"])
    NO_OBSERVER.rate_limited("write")
    with NO_OBSERVER.downstream("destination", "dest.example") as call:
        assert dict(call.headers) == {}
        call.set_status(200)


def test_the_auth_package_imports_no_telemetry_library() -> None:
    found = []
    for path in AUTH_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [(path.name, n) for n in names if n.split(".")[0] in ("opentelemetry", "prometheus_client")]
    assert found == []


# --- the sites, in process, against a real IdP ---------------------------------------------------

class Recorder:
    """An `Observer` that writes down what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def _context(self, *event: Any) -> AbstractContextManager[object]:
        events = self.events

        class Seen:
            def __enter__(self) -> None:
                return None

            def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
                events.append((*event, exc))

        return Seen()

    def verifying(self) -> AbstractContextManager[object]:
        return self._context("verifying")

    def fetching_keys(self, issuer: str, *, configured: bool) -> AbstractContextManager[object]:
        return self._context("fetching_keys", issuer, configured)

    def token_cache(self, *, hit: bool) -> None:
        self.events.append(("token_cache", hit))

    def refused(self, tools: Sequence[str], permissions: Iterable[str]) -> None:
        self.events.append(("refused", list(tools), sorted(permissions)))

    def rate_limited(self, kind: str) -> None:
        self.events.append(("rate_limited", kind))

    def downstream(self, name: str, target: str) -> AbstractContextManager[DownstreamCall]:
        return NO_OBSERVER.downstream(name, target)


@pytest.fixture
async def observed(idp: IdP) -> AsyncIterator[tuple[Recorder, JWTVerifier, Ctx]]:
    recorder, clock = Recorder(), Clock()
    verifier = JWTVerifier(settings_for(idp.issuer), clock=clock, monotonic=Clock(1000.0), observer=recorder)
    yield recorder, verifier, Ctx(issuer=idp.issuer, now=int(clock()), attacker_url="")
    await verifier.aclose()


async def test_the_verifier_reports_key_fetches_and_token_cache_use(
        observed: tuple[Recorder, JWTVerifier, Ctx]) -> None:
    recorder, verifier, ctx = observed
    token = ctx.good()
    await verifier.verify(token)
    await verifier.verify(token)
    with pytest.raises(InvalidToken):
        await verifier.verify(ctx.token(header=ctx.header(kid="no-such-kid")))
    assert recorder.events[:4] == [
        ("token_cache", False), ("fetching_keys", ctx.issuer, True, None), ("token_cache", True),
        ("token_cache", False)]
    assert recorder.events[4:] in ([], [("fetching_keys", ctx.issuer, True, None)])  # unknown kid: at most one look


async def test_the_middleware_reports_each_authentication_with_what_refused_it(
        observed: tuple[Recorder, JWTVerifier, Ctx]) -> None:
    recorder, verifier, ctx = observed
    app = BearerAuthMiddleware(PlainTextResponse("ok"), verifier=verifier, settings=settings_for(ctx.issuer),
                               observer=recorder)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs") as client:
        assert (await client.get("/mcp")).status_code == 401
        assert (await client.get("/mcp", headers={"Authorization": "Bearer not-a-jwt"})).status_code == 401
        assert (await client.get("/mcp", headers={"Authorization": f"Bearer {ctx.good()}"})).status_code == 200
        assert (await client.get("/health")).status_code == 200  # not protected: not an authentication
    seen = [e for e in recorder.events if e[0] == "verifying"]
    assert [type(e[1]) if e[1] else None for e in seen][:1] == [MissingToken]
    assert [verification_outcome(e[1])[0] for e in seen] == ["missing", "invalid", "valid"]
