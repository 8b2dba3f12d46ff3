"""Pure claim checks: claims and an injected clock in, a `VerifiedToken` or `InvalidToken` out.

Nothing here does I/O or reads the wall clock, so every rule is a table-driven test.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ._errors import (
    CertificateMismatch,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    UntrustedIssuer,
    WrongAudience,
)
from ._permissions import expand_permissions
from ._settings import IssuerConfig
from ._token import VerifiedToken

__all__ = [
    "match_issuer",
    "check_times",
    "check_claims",
    "check_claims_window",
    "extract_permissions",
    "PRINCIPAL_PROPAGATION",
]

PRINCIPAL_PROPAGATION = "principal-propagation"
"""IAS marker for "all APIs for principal propagation": not a permission group (ias.md)."""
_NOT_PERMISSIONS = frozenset({"", PRINCIPAL_PROPAGATION})
_ABSENT = object()

# One DNS label (RFC 1123), lower case as IAS issues them: no dots, no port, no path.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_TIME = 2**63  # far beyond any real date; keeps int/float arithmetic exact and bounded
_MIN_TIME = -_MAX_TIME
# RFC 8705 §3.1: base64url of a SHA-256 digest is 43 characters, the last one canonical.
_X5T_S256 = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
# RFC 7800 confirmation members we can check; anything else (DPoP's jkt, RFC 9449 §6) we cannot.
_CHECKABLE_CNF = frozenset({"x5t#S256"})


def _number(value: Any, name: str) -> float:
    """A NumericDate (RFC 7519 §2) read carefully: a finite number in range, or `InvalidToken`."""
    kind = type(value)
    # bool is an int subclass; exact types only. NaN/Infinity cannot arrive from our JSON parser
    # but may from callers.
    if kind is int:
        if _MIN_TIME < value < _MAX_TIME:
            return value  # type: ignore[no-any-return]
        raise MalformedToken(f"{name} is out of range")  # JSON integers are unbounded: 10**400
    if kind is float and math.isfinite(value):
        return value  # type: ignore[no-any-return]
    raise MalformedToken(f"{name} is not a finite number")


def match_issuer(claims: Mapping[str, Any], issuers: tuple[IssuerConfig, ...]) -> tuple[IssuerConfig, str]:
    """Find the trusted issuer of an (unverified) token and the issuer URL its keys come from.

    For IAS, ``ias_iss`` takes precedence over ``iss`` when present (custom domains).
    Matching is exact; multi-tenant IAS also accepts ``https://<one label>.<trusted domain>``.

    Raises:
        InvalidToken: no trusted issuer matches.
    """
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise UntrustedIssuer("iss missing or not a string")
    ias_iss = claims.get("ias_iss")
    if ias_iss is not None and (not isinstance(ias_iss, str) or not ias_iss):
        raise UntrustedIssuer("ias_iss is not a string")
    for config in issuers:
        effective = ias_iss if (config.profile == "ias" and ias_iss is not None) else iss
        if effective == config.issuer:
            return config, effective
        for domain in config.domains:
            # https://<one DNS label>.<domain>: plain string checks and one precompiled pattern.
            if (
                effective.startswith("https://")
                and effective.endswith(domain)
                and _LABEL.fullmatch(effective, 8, len(effective) - len(domain) - 1)
                and effective[-len(domain) - 1] == "."
            ):
                return config, effective
    raise UntrustedIssuer(f"untrusted issuer {iss!r}" + (f" (ias_iss {ias_iss!r})" if ias_iss is not None else ""))


def _times(claims: Mapping[str, Any], now: float, leeway: float) -> tuple[float, float | None, float, float]:
    """Enforce ``exp`` (required), ``nbf`` and ``iat`` (RFC 7519 §4.1.4-6) in one read of each.

    Returns ``exp``, ``iat`` and the wall-clock window ``[start, end)`` within which these times
    keep the token valid (a cached verdict is reused only inside it). A plain in-range int, what
    issuers send, is taken as it is; anything else goes through `_number`.

    Raises:
        InvalidToken: expired, not yet valid, issued in the future, or ``exp`` missing.
    """
    exp = claims.get("exp")
    if type(exp) is not int or not _MIN_TIME < exp < _MAX_TIME:
        if exp is None:
            raise MalformedToken("exp missing")  # a token that never expires is a credential forever
        exp = _number(exp, "exp")
    if now >= exp + leeway:
        raise TokenExpired("token expired")
    start = -math.inf
    nbf = claims.get("nbf")
    if nbf is not None:
        if type(nbf) is not int or not _MIN_TIME < nbf < _MAX_TIME:
            nbf = _number(nbf, "nbf")
        if now + leeway < nbf:
            raise TokenNotYetValid("token not yet valid (nbf)")
        start = nbf
    iat = claims.get("iat")
    if iat is not None:
        if type(iat) is not int or not _MIN_TIME < iat < _MAX_TIME:
            iat = _number(iat, "iat")
        if now + leeway < iat:
            raise TokenNotYetValid("token issued in the future (iat)")
        if iat > start:
            start = iat
    return exp, iat, float(start) - leeway, float(exp) + leeway


def check_times(claims: Mapping[str, Any], *, now: float, leeway: float) -> int:
    """Enforce ``exp`` (required), ``nbf`` and ``iat`` (RFC 7519 §4.1.4-6); return ``exp``.

    Raises:
        InvalidToken: expired, not yet valid, issued in the future, or ``exp`` missing.
    """
    return int(_times(claims, now, leeway)[0])


def _audience_list(value: object) -> tuple[str, ...]:
    """An ``aud`` that is not a single string: a non-empty array of strings (RFC 7519 §4.1.3)."""
    if value is None:
        raise WrongAudience("aud missing")
    audiences = tuple(_string_list(value, "aud"))
    if not audiences:
        raise WrongAudience("aud missing")
    return audiences


def _all_strings(values: list[Any]) -> bool:
    try:
        "".join(values)  # one C-level pass that fails on any member that is not a string
    except TypeError:
        return False
    return True


def _string_list(value: object, name: str) -> list[str]:
    if type(value) is not list or not _all_strings(value):
        raise MalformedToken(f"{name} must be an array of strings")
    return value


def _space_separated(value: object, name: str) -> list[str]:
    if isinstance(value, str):
        return value.split()
    return _string_list(value, name)


def _ias_permissions(apis: frozenset[str]) -> frozenset[str]:
    """IAS permission groups (``ias_apis``), without the markers that are not permissions (ias.md)."""
    return apis if apis.isdisjoint(_NOT_PERMISSIONS) else apis - _NOT_PERMISSIONS


def extract_permissions(claims: Mapping[str, Any], config: IssuerConfig) -> frozenset[str]:
    """Permissions the issuer granted, read the way its profile writes them.

    Raises:
        InvalidToken: the permission claim has the wrong type.
    """
    if config.profile == "ias":
        apis = claims.get("ias_apis", _ABSENT)
        if apis is _ABSENT:
            return frozenset()  # IAS omits the claim when nothing is granted
        return _ias_permissions(frozenset(_string_list(apis, "ias_apis")))
    if config.profile == "xsuaa":
        scopes = _space_separated(claims.get("scope", []), "scope")
        if not config.xsappname:
            return frozenset(scopes)
        prefix = config.xsappname + "."
        return frozenset(s[len(prefix) :] for s in scopes if s.startswith(prefix) and len(s) > len(prefix))
    if config.profile == "entra":
        granted = set(_space_separated(claims.get("scp", ""), "scp"))
        granted.update(_string_list(claims.get("roles", []), "roles"))
        return frozenset(granted)
    return frozenset(_space_separated(claims.get("scope", ""), "scope"))


def _first_string(claims: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = claims.get(name)
        if type(value) is str and value:
            return value
    return None


_CLIENT_CLAIMS = {
    "ias": ("azp", "client_id", "sub"),
    "xsuaa": ("client_id", "cid", "azp", "sub"),
    "entra": ("azp", "appid", "sub"),
    "generic": ("client_id", "azp", "sub"),
}
_TENANT_CLAIMS = {"ias": ("app_tid", "zone_uuid"), "xsuaa": ("zid",), "entra": ("tid",), "generic": ("tenant",)}
_PRINCIPAL_CLAIMS = {profile: (_CLIENT_CLAIMS[profile], _TENANT_CLAIMS[profile]) for profile in _CLIENT_CLAIMS}


def check_claims(
    claims: Mapping[str, Any],
    config: IssuerConfig,
    issuer: str,
    *,
    now: float,
    leeway: float,
    implies: Mapping[str, frozenset[str]] | None = None,
) -> VerifiedToken:
    """Validate the claims of a token whose signature and issuer are already established.

    Raises:
        InvalidToken: any claim fails (time, audience, subject, permission types, ``cnf``).
    """
    return check_claims_window(claims, config, issuer, now=now, leeway=leeway, implies=implies)[0]


def check_claims_window(
    claims: Mapping[str, Any],
    config: IssuerConfig,
    issuer: str,
    *,
    now: float,
    leeway: float,
    implies: Mapping[str, frozenset[str]] | None = None,
) -> tuple[VerifiedToken, float, float]:
    """`check_claims`, also returning the wall-clock window ``[start, end)`` its times allow.

    One read of every claim: a verifier caching the verdict needs the window, and reading the
    time claims again for it would repeat what was just checked.

    Raises:
        InvalidToken: any claim fails (time, audience, subject, permission types, ``cnf``).
    """
    get = claims.get
    exp, nbf, iat = get("exp"), get("nbf"), get("iat")
    if (
        type(exp) is int and type(iat) is int and nbf is None
        and _MIN_TIME < exp < _MAX_TIME and _MIN_TIME < iat < _MAX_TIME
        and now < exp + leeway and iat <= now + leeway
    ):  # the usual token, plain ints and no nbf: exactly what _times accepts, without building its answer
        start, end = float(iat) - leeway, float(exp) + leeway
    else:  # every other case, and the reason for a refusal
        exp_checked, iat_checked, start, end = _times(claims, now, leeway)
        exp, iat = int(exp_checked), None if iat_checked is None else int(iat_checked)
    aud = get("aud")
    if type(aud) is str:
        audiences: tuple[str, ...] = (aud,)
    elif type(aud) is list and aud and _all_strings(aud):
        audiences = tuple(aud)
    else:
        audiences = _audience_list(aud)  # raises the reason
    # RFC 7519 §4.1.3 and RFC 8707 §2: exact match of one entry, no prefix or dot tricks.
    ours = config.audiences
    for candidate in audiences:
        if candidate in ours:
            break
    else:
        raise WrongAudience(f"audience {list(audiences)!r} is not ours")
    subject = get("sub")
    if type(subject) is not str or not subject:
        raise MalformedToken("sub missing or not a string")
    profile = config.profile
    apis = get("ias_apis")
    if profile == "ias" and type(apis) is list and _all_strings(apis):
        permissions = _ias_permissions(frozenset(apis))  # the usual IAS token, read once
    else:
        permissions = extract_permissions(claims, config)
    client_names, tenant_names = _PRINCIPAL_CLAIMS[profile]
    client = get(client_names[0])  # the usual case: the profile's first choice is there
    if type(client) is not str or not client:
        client = _first_string(claims, client_names) or subject
    tenant = get(tenant_names[0])
    if type(tenant) is not str or not tenant:
        tenant = _first_string(claims, tenant_names)
    verified = VerifiedToken(
        subject,
        client,
        issuer,
        audiences,
        expand_permissions(permissions, implies) if implies else permissions,
        exp,
        iat,
        tenant,
        _confirmation(claims["cnf"]) if "cnf" in claims else None,
        claims if type(claims) is MappingProxyType else MappingProxyType(dict(claims)),
    )
    return verified, start, end


def _confirmation(cnf: object) -> str | None:
    """The certificate thumbprint of a ``cnf`` claim (RFC 7800 §3.1, RFC 8705 §3.1).

    A confirmation method we cannot check (``jkt`` for DPoP, RFC 9449 §6, or any other) means
    the token is not a plain bearer token: refusing it is the only safe answer.
    """
    if type(cnf) is not dict:
        raise MalformedToken("cnf is not an object")
    if not cnf.keys() <= _CHECKABLE_CNF:
        names = sorted(k for k in cnf if k not in _CHECKABLE_CNF)[:4]
        raise CertificateMismatch(f"cnf has confirmation methods we cannot check: {names!r}"[:200])
    if not cnf:
        return None
    x5t = cnf["x5t#S256"]
    if type(x5t) is not str or not _X5T_S256.fullmatch(x5t):
        raise MalformedToken("cnf.x5t#S256 is not the base64url of a SHA-256 digest")
    return x5t
