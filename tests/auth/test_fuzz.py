"""Property tests (hypothesis) for every parser of untrusted or configured text in ``auth/``.

For any input: the answer is a value or one of the typed errors (`AuthError`, `ConfigError`),
never another exception (a 500), never an acceptance of a token that was tampered with, and
never more than a few milliseconds of CPU. Time is the measuring thread's CPU time, so a busy
shared machine does not count against us; the bound is generous all the same.

Examples are bounded for CI (``max_examples``); ``HYPOTHESIS_PROFILE=deep`` explores longer.
"""

from __future__ import annotations

import gc
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth import (
    AuthError,
    ConfigError,
    InsufficientScope,
    InvalidToken,
    IssuerConfig,
    KeysUnavailable,
    MissingToken,
    load_settings,
)
from auth._binding import client_certificate, parse_forwarded_client_cert
from auth._challenge import challenge, error_body, error_headers
from auth._claims import check_claims, match_issuer
from auth._jws import b64url_decode, parse_jwks, parse_jws, verify_signature
from auth._middleware import bearer_token
from auth.mcp._gate import _header_names, _header_targets, _parse, targets, tool_names

from ._cases import AUDIENCE, IAS_DOMAIN, IAS_ISSUER, KEY, KID, Ctx, b64, compact, public_jwk

# The budget fixture spans all examples of a test on purpose: it keeps the slowest one.
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=200, deadline=None, database=None, suppress_health_check=_QUIET)
settings.register_profile("deep", max_examples=5000, deadline=None, database=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.timeout(300)

T = TypeVar("T")
CPU_BOUND_S = 0.05  # "a few milliseconds", with a wide margin for a slow CI machine
NOW = 1_800_000_000
CTX = Ctx(issuer=IAS_ISSUER, now=NOW)
RS256 = frozenset({"RS256"})
PUBLISHED = parse_jwks({"keys": [public_jwk(KEY, use="sig", alg="RS256")]})
IAS = IssuerConfig(issuer=IAS_ISSUER, audiences=(AUDIENCE,), domains=(IAS_DOMAIN,))
GOOD = CTX.good()


class CpuBudget:
    """Records the slowest call (thread CPU time) of a test's examples."""

    def __init__(self) -> None:
        self.worst = 0.0

    @contextmanager
    def timed(self) -> Iterator[None]:
        # A full garbage collection walks the whole test process's heap (hypothesis keeps a lot):
        # its cost says nothing about the input, so it must not land inside the measurement.
        gc.disable()
        started = time.thread_time()
        try:
            yield
        finally:
            self.worst = max(self.worst, time.thread_time() - started)
            gc.enable()


@pytest.fixture
def budget() -> Iterator[CpuBudget]:
    b = CpuBudget()
    yield b
    assert b.worst < CPU_BOUND_S, f"slowest example took {b.worst * 1e3:.1f} ms of CPU"


def outcome(fn: Callable[[], T], *errors: type[Exception]) -> T | Exception:
    """``fn()``'s value, or the error if it is one of ``errors`` (anything else propagates: a failure)."""
    try:
        return fn()
    except errors as exc:
        return exc


# --------------------------------------------------------------------------- strategies

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
CLAIM_NAMES = ["iss", "ias_iss", "sub", "azp", "aud", "exp", "nbf", "iat", "ias_apis", "cnf", "app_tid",
               "client_id", "scope", "scp", "roles", "zone_uuid"]
CLAIM_VALUES = (json_values | st.sampled_from([NOW, NOW + 3600, NOW - 3600, 10**400, -(10**400), 1e308, AUDIENCE,
                                               IAS_ISSUER, [AUDIENCE], {"x5t#S256": "a" * 43}, {"jkt": "x"}]))
claim_sets = st.dictionaries(st.sampled_from(CLAIM_NAMES) | st.text(max_size=6), CLAIM_VALUES, max_size=10)
segments = st.text(alphabet=B64URL, max_size=60) | st.text(alphabet=B64URL + "=+/ .\t\n\x00é", max_size=40)
header_values = st.dictionaries(st.sampled_from(["alg", "kid", "typ", "cty", "crit", "jku", "b64", "zip"]),
                                json_values | st.sampled_from(["RS256", KID, "JWT", "none", "HS256"]), max_size=5)


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    """The good token with one edit: a character replaced, inserted or deleted anywhere."""
    token = GOOD
    at = draw(st.integers(0, len(token) - 1))
    kind = draw(st.sampled_from(["replace", "insert", "delete", "swap_segments"]))
    char = draw(st.sampled_from(B64URL + ".=+/ é\x00") | st.characters())
    if kind == "replace":
        mutated = token[:at] + char + token[at + 1:]
    elif kind == "insert":
        mutated = token[:at] + char + token[at:]
    elif kind == "delete":
        mutated = token[:at] + token[at + 1:]
    else:
        h, p, s = token.split(".")
        mutated = draw(st.sampled_from([f"{p}.{h}.{s}", f"{h}.{h}.{s}", f"{p}.{p}.{s}", f"{h}.{p}.{h}"]))
    return mutated


# --------------------------------------------------------------------------- tokens


@given(token=st.text(max_size=300) | st.builds(lambda a, b, c: f"{a}.{b}.{c}", segments, segments, segments))
def test_parse_jws_on_any_text_returns_or_raises_invalid_token(budget: CpuBudget, token: str) -> None:
    with budget.timed():
        outcome(lambda: parse_jws(token, algorithms=RS256), InvalidToken)


@given(header=header_values | json_values, claims=claim_sets | json_values, signature=st.binary(max_size=300))
def test_parse_jws_on_any_json_segments_returns_or_raises_invalid_token(
        budget: CpuBudget, header: Any, claims: Any, signature: bytes) -> None:
    token = compact(header, claims, signature=signature)
    with budget.timed():
        result = outcome(lambda: parse_jws(token, algorithms=RS256), InvalidToken)
    if not isinstance(result, Exception):
        assert result.alg == "RS256" and isinstance(result.kid, str)
        with budget.timed():  # a random signature never verifies
            assert isinstance(outcome(lambda: verify_signature(result, PUBLISHED[KID]), InvalidToken), InvalidToken)


@given(token=mutated_tokens())
def test_any_single_edit_of_a_valid_token_is_refused(budget: CpuBudget, token: str) -> None:
    def verify() -> object:
        jws = parse_jws(token, algorithms=RS256)
        config, issuer = match_issuer(jws.claims, (IAS,))
        verify_signature(jws, PUBLISHED[jws.kid] if jws.kid in PUBLISHED else PUBLISHED[KID])
        return check_claims(jws.claims, config, issuer, now=NOW, leeway=60)

    if token == GOOD:
        return
    with budget.timed():
        assert isinstance(outcome(verify, InvalidToken), InvalidToken)


@given(claims=claim_sets)
def test_claim_checks_on_any_claims_give_a_frozen_token_or_invalid_token(budget: CpuBudget,
                                                                          claims: dict[str, Any]) -> None:
    candidate = CTX.claims() | claims

    def check() -> object:
        config, issuer = match_issuer(candidate, (IAS,))
        return check_claims(candidate, config, issuer, now=NOW, leeway=60)

    with budget.timed():
        result = outcome(check, InvalidToken)
    if not isinstance(result, Exception):  # accepted: then every rule really held
        assert isinstance(candidate["exp"], int | float) and NOW < candidate["exp"] + 60
        assert AUDIENCE in ([candidate["aud"]] if isinstance(candidate["aud"], str) else candidate["aud"])
        assert set(candidate.get("cnf", {})) <= {"x5t#S256"}


@given(segment=st.binary(max_size=80) | st.text(alphabet=B64URL + "=+/ ", max_size=80).map(str.encode))
def test_b64url_accepts_exactly_one_spelling(segment: bytes) -> None:
    result = outcome(lambda: b64url_decode(segment), InvalidToken)
    if not isinstance(result, Exception):
        assert b64(result).encode() == segment  # the only spelling of these bytes


# --------------------------------------------------------------------------- Authorization

header_names = st.sampled_from([b"authorization", b"Authorization", b"AUTHORIZATION", b"x-other", b"cookie"])
header_bytes = (st.binary(max_size=60)
                | st.builds(lambda s, t: s + t, st.sampled_from([b"Bearer ", b"bearer ", b"Bearer", b"Basic ", b""]),
                            st.binary(max_size=40) | st.text(alphabet=B64URL + ". \t", max_size=40).map(str.encode)))
queries = st.binary(max_size=60) | st.sampled_from([b"access_token=x", b"a=1&access_token=", b"access%5Ftoken=y"])


@given(headers=st.lists(st.tuples(header_names, header_bytes), max_size=4), query=queries)
def test_bearer_token_returns_one_clean_token_or_a_typed_error(
        budget: CpuBudget, headers: list[tuple[bytes, bytes]], query: bytes) -> None:
    with budget.timed():
        result = outcome(lambda: bearer_token(headers, query), MissingToken, InvalidToken)
    authorization = [v for k, v in headers if k.lower() == b"authorization"]
    if not authorization:
        assert isinstance(result, MissingToken)  # bare challenge, whatever the query string holds
    elif isinstance(result, str):
        assert len(authorization) == 1 and result and result.isascii()
        assert " " not in result and result == result.strip()
        assert result in authorization[0].decode("ascii")


# --------------------------------------------------------------------------- X-Forwarded-Client-Cert

xfcc_alphabet = '";,=\\ \t%-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/\n'
xfcc_pieces = st.sampled_from(["-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----", "Hash=", "Cert=",
                               "By=", "Subject=", "URI=", "DNS=", '"', ";", ",", "\\", " ", "%0A", "MIIB", "="])
xfcc_values = (st.text(max_size=200) | st.text(alphabet=xfcc_alphabet, max_size=400)
               | st.lists(xfcc_pieces | st.text(alphabet=xfcc_alphabet, max_size=8), max_size=60).map("".join)
               | st.builds(lambda piece, n, tail: piece * n + tail, xfcc_pieces, st.integers(0, 3000),
                           st.sampled_from(["", "x", '"', "-----END CERTIFICATE-----"])))


@given(value=xfcc_values)
def test_forwarded_client_cert_returns_der_or_invalid_token_in_linear_time(budget: CpuBudget, value: str) -> None:
    with budget.timed():
        outcome(lambda: parse_forwarded_client_cert(value), InvalidToken)
    scope = {"type": "http", "headers": [(b"x-forwarded-client-cert", value.encode("utf-8", "surrogatepass"))]}
    with budget.timed():
        outcome(lambda: client_certificate(scope, trust_forwarded=True), InvalidToken)


# --------------------------------------------------------------------------- settings

ENV_NAMES = ["MCP_AUTH_ISSUER", "MCP_AUTH_ISSUERS", "MCP_AUTH_AUDIENCE", "MCP_AUTH_JWKS_URI", "MCP_AUTH_IAS_DOMAINS",
             "MCP_AUTH_PROFILE", "MCP_AUTH_ALGORITHMS", "MCP_AUTH_LEEWAY", "MCP_AUTH_JWKS_TTL",
             "MCP_AUTH_JWKS_COOLDOWN", "MCP_AUTH_HTTP_TIMEOUT", "MCP_AUTH_TOKEN_CACHE_SIZE", "MCP_AUTH_IMPLIES",
             "MCP_AUTH_PERMISSION_ALIASES", "MCP_AUTH_CHALLENGE_SCOPES", "MCP_AUTH_CERT_BINDING",
             "MCP_AUTH_TRUST_XFCC", "MCP_AUTH_MULTI_TENANT", "MCP_AUTH_XSAPPNAME", "MCP_RESOURCE_URL",
             "MCP_RESOURCE_NAME", "MCP_RESOURCE_DOCUMENTATION", "VCAP_APPLICATION", "VCAP_SERVICES"]
ENV_VALUES = st.text(max_size=40) | st.sampled_from(
    ["https://t.accounts.ondemand.com", "http://127.0.0.1:8080", "1", "true", "0", "-1", "1e999", "nan", "RS256",
     "ias", "xsuaa", "required", "a>b", "a=b", "https://mcp.example.com/mcp", "", "\u00b2", "\u0661\u0662", "1_0",
     "inf"])


def identity_binding(credentials: Any) -> str:
    return json.dumps({"identity": [{"label": "identity", "name": "ias", "credentials": credentials}]})


VCAP_SERVICES = (json_values.map(json.dumps) | st.text(max_size=40)
                 | st.dictionaries(st.sampled_from(["clientid", "url", "domains", "domain", "app_tid", "xsappname",
                                                    "uaadomain", "clientsecret"]),
                                   json_values | st.sampled_from(["https://t.accounts.ondemand.com", ["a", 1]]),
                                   max_size=6).map(identity_binding)
                 | json_values.map(lambda v: json.dumps({"xsuaa": [{"credentials": v}], "identity": v})))


@given(env=st.dictionaries(st.sampled_from(ENV_NAMES), ENV_VALUES, max_size=8), vcap=st.none() | VCAP_SERVICES,
       app=st.none() | json_values.map(json.dumps))
def test_load_settings_on_any_environment_gives_settings_or_config_error(
        budget: CpuBudget, env: dict[str, str], vcap: str | None, app: str | None) -> None:
    env = env | ({"VCAP_SERVICES": vcap} if vcap is not None else {}) | ({"VCAP_APPLICATION": app} if app else {})
    with budget.timed():
        result = outcome(lambda: load_settings(env), ConfigError)
    if isinstance(result, ConfigError):
        assert result.setting and str(result).startswith(result.setting)  # the message names the setting


# --------------------------------------------------------------------------- the gate's body parsing

_header_names({"headers": [(b"mcp-name", b"warm-up")]})  # the first call imports the SDK's decoder
NAME_VALUES = st.binary(max_size=40) | st.sampled_from([b"=?base64?bm90ZXM=?=", b"=?base64?!!?=", b"=?base64?", b""])


@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | st.builds(lambda n: (b"[" * n) + (b"]" * n), st.integers(0, 5000)), modern=st.booleans())
def test_gate_body_parsing_never_raises(budget: CpuBudget, body: bytes, modern: bool) -> None:
    with budget.timed():
        message = _parse(body, modern)
        names = tool_names(message)
    assert all(isinstance(n, str) for n in names)


@given(message=json_values | st.lists(st.fixed_dictionaries(
    {"method": st.sampled_from(["tools/call", "tools/list", 1]), "params": json_values}), max_size=5))
def test_tool_names_of_any_message_are_strings(message: Any) -> None:
    names = tool_names(message)
    assert all(isinstance(n, str) for n in names)
    calls = message if isinstance(message, list) else [message]
    assert len(names) == sum(1 for m in calls if isinstance(m, dict) and m.get("method") == "tools/call")


@given(headers=st.lists(st.tuples(st.sampled_from([b"mcp-name", b"mcp-method", b"x"]), NAME_VALUES), max_size=4))
def test_mcp_name_headers_decode_to_strings_or_count_as_nameless(budget: CpuBudget,
                                                                  headers: list[tuple[bytes, bytes]]) -> None:
    with budget.timed():
        names = _header_names({"headers": headers})
    assert len(names) == sum(1 for k, _ in headers if k == b"mcp-name")
    assert all(isinstance(n, str) for n in names)


METHODS = st.sampled_from(["tools/call", "prompts/get", "resources/read", "completion/complete", "tools/list", 1])
REFS = st.fixed_dictionaries({"type": st.sampled_from(["ref/prompt", "ref/resource", "ref/x", 3]),
                              "name": json_values, "uri": json_values})


@given(message=json_values | st.lists(st.fixed_dictionaries(
    {"method": METHODS, "params": json_values | st.fixed_dictionaries({"ref": REFS | json_values})}), max_size=5))
def test_targets_of_any_message_are_known_kinds_and_string_names(message: Any) -> None:
    used = targets(message)
    assert all(kind in ("tool", "prompt", "resource", "reference") and isinstance(name, str) for kind, name in used)
    items = message if isinstance(message, list) else [message]
    named = sum(1 for m in items if isinstance(m, dict) and m.get("method") in ("tools/call", "prompts/get",
                                                                                 "resources/read"))
    assert named <= len(used) <= len(items)


@given(headers=st.lists(st.tuples(st.sampled_from([b"mcp-name", b"mcp-method", b"x"]),
                                  NAME_VALUES | st.sampled_from([b"tools/call", b"prompts/get", b"resources/read"])),
                        max_size=4),
       body=st.lists(st.tuples(st.sampled_from(["tool", "prompt", "resource", "reference"]), st.text(max_size=5)),
                     max_size=3))
def test_every_mcp_name_header_is_checked_as_some_kind(budget: CpuBudget, headers: list[tuple[bytes, bytes]],
                                                        body: list[tuple[Any, str]]) -> None:
    with budget.timed():
        used = _header_targets({"headers": headers}, body)
    names = _header_names({"headers": headers})
    assert {name for _, name in used} == set(names)
    assert all(kind in ("tool", "prompt", "resource") for kind, _ in used)


# --------------------------------------------------------------------------- challenge rendering

_PARAM = re.compile(r'([a-z_]+)="((?:[^"\\]|\\[\x20-\x7e])*)"')
errors = st.sampled_from([MissingToken(), InvalidToken(), KeysUnavailable(retry_after=7)]) | st.builds(
    lambda req: InsufficientScope(frozenset(req), frozenset(req)), st.lists(st.text(max_size=12), max_size=4))


@given(exc=errors, metadata=st.text(max_size=80), scopes=st.lists(st.text(max_size=12), max_size=5))
def test_challenge_of_any_input_is_one_clean_header_value(budget: CpuBudget, exc: AuthError, metadata: str,
                                                          scopes: list[str]) -> None:
    with budget.timed():
        value = challenge(exc, resource_metadata=metadata, scopes=scopes)
        headers = error_headers(exc, resource_metadata=metadata, scopes=scopes)
        body = error_body(exc)
    # RFC 9110 §5.5: printable ASCII only; no CR/LF (no header injection), no other controls.
    for text in (value, *(v for _, v in headers)):
        assert all(" " <= ch <= "~" for ch in text), repr(text)
    assert value.startswith("Bearer ")
    rest = value[len("Bearer "):]
    params = _PARAM.findall(rest)
    assert ", ".join(f'{k}="{v}"' for k, v in params) == rest  # nothing outside well-formed parameters
    names = [k for k, _ in params]
    assert names[0] == "resource_metadata" and names.count("resource_metadata") == 1
    assert ("error" in names) == (exc.error is not None)
    unquoted = dict((k, re.sub(r"\\(.)", r"\1", v)) for k, v in params)
    if metadata.isprintable() and metadata.isascii():
        assert unquoted["resource_metadata"] == metadata  # printable input is carried exactly
    json.loads(body)
