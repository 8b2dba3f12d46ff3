"""Pure claim checks: claims and an injected clock in, a `VerifiedToken` or `InvalidToken` out.

Nothing here does I/O or reads the wall clock, so every rule is a table-driven test.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ._errors import InvalidToken
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

# One DNS label (RFC 1123), lower case as IAS issues them: no dots, no port, no path.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_TIME = 2**63  # far beyond any real date; keeps int/float arithmetic exact and bounded
# RFC 8705 §3.1: base64url of a SHA-256 digest is 43 characters, the last one canonical.
_X5T_S256 = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
# RFC 7800 confirmation members we can check; anything else (DPoP's jkt, RFC 9449 §6) we cannot.
_CHECKABLE_CNF = frozenset({"x5t#S256"})


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    kind = type(value)
    # bool is an int subclass; exact types only. NaN/Infinity cannot arrive from our JSON parser
    # but may from callers.
    if kind is int:
        if -_MAX_TIME < value < _MAX_TIME:
            return value  # type: ignore[no-any-return]
        raise InvalidToken(f"{name} is out of range")  # JSON integers are unbounded: 10**400
    if kind is float and math.isfinite(value):
        return value  # type: ignore[no-any-return]
    raise InvalidToken(f"{name} is not a finite number")


def match_issuer(claims: Mapping[str, Any], issuers: tuple[IssuerConfig, ...]) -> tuple[IssuerConfig, str]:
    """Find the trusted issuer of an (unverified) token and the issuer URL its keys come from.

    For IAS, ``ias_iss`` takes precedence over ``iss`` when present (custom domains).
    Matching is exact; multi-tenant IAS also accepts ``https://<one label>.<trusted domain>``.

    Raises:
        InvalidToken: no trusted issuer matches.
    """
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise InvalidToken("iss missing or not a string")
    ias_iss = claims.get("ias_iss")
    if ias_iss is not None and (not isinstance(ias_iss, str) or not ias_iss):
        raise InvalidToken("ias_iss is not a string")
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
    raise InvalidToken(f"untrusted issuer {iss!r}" + (f" (ias_iss {ias_iss!r})" if ias_iss is not None else ""))


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    """A time claim (RFC 7519 §2 NumericDate): a plain in-range int at once, anything else the careful way."""
    value = claims.get(name)
    if type(value) is int and -_MAX_TIME < value < _MAX_TIME:
        return value
    return _number(claims, name)


def _times(claims: Mapping[str, Any], now: float, leeway: float) -> tuple[float, float | None, float, float]:
    """Enforce ``exp`` (required), ``nbf`` and ``iat`` (RFC 7519 §4.1.4-6) in one read of each.

    Returns ``exp``, ``iat`` and the wall-clock window ``[start, end)`` within which these times
    keep the token valid (a cached verdict is reused only inside it).

    Raises:
        InvalidToken: expired, not yet valid, issued in the future, or ``exp`` missing.
    """
    exp = _time(claims, "exp")
    if exp is None:
        raise InvalidToken("exp missing")  # a token that never expires is a credential forever
    if now >= exp + leeway:
        raise InvalidToken("token expired")
    start = -math.inf
    nbf = _time(claims, "nbf")
    if nbf is not None:
        if now + leeway < nbf:
            raise InvalidToken("token not yet valid (nbf)")
        start = nbf
    iat = _time(claims, "iat")
    if iat is not None:
        if now + leeway < iat:
            raise InvalidToken("token issued in the future (iat)")
        if iat > start:
            start = iat
    return exp, iat, float(start) - leeway, float(exp) + leeway


def check_times(claims: Mapping[str, Any], *, now: float, leeway: float) -> int:
    """Enforce ``exp`` (required), ``nbf`` and ``iat`` (RFC 7519 §4.1.4-6); return ``exp``.

    Raises:
        InvalidToken: expired, not yet valid, issued in the future, or ``exp`` missing.
    """
    return int(_times(claims, now, leeway)[0])


def _string_list(value: object, name: str) -> list[str]:
    if type(value) is not list:
        raise InvalidToken(f"{name} must be an array of strings")
    try:
        "".join(value)  # one C-level pass that fails on any member that is not a string
    except TypeError:
        raise InvalidToken(f"{name} must be an array of strings") from None
    return value


def _space_separated(value: object, name: str) -> list[str]:
    if isinstance(value, str):
        return value.split()
    return _string_list(value, name)


def extract_permissions(claims: Mapping[str, Any], config: IssuerConfig) -> frozenset[str]:
    """Permissions the issuer granted, read the way its profile writes them.

    Raises:
        InvalidToken: the permission claim has the wrong type.
    """
    if config.profile == "ias":
        if "ias_apis" not in claims:
            return frozenset()  # IAS omits the claim when nothing is granted
        apis = frozenset(_string_list(claims["ias_apis"], "ias_apis"))
        return apis - _NOT_PERMISSIONS if not apis.isdisjoint(_NOT_PERMISSIONS) else apis
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
    exp, iat, start, end = _times(claims, now, leeway)
    aud = claims.get("aud")
    if type(aud) is str:
        audiences: tuple[str, ...] = (aud,)
    elif aud is None:
        raise InvalidToken("aud missing")
    else:
        audiences = tuple(_string_list(aud, "aud"))
        if not audiences:
            raise InvalidToken("aud missing")
    # RFC 7519 §4.1.3 and RFC 8707 §2: exact match of one entry, no prefix or dot tricks.
    ours = config.audiences
    for candidate in audiences:
        if candidate in ours:
            break
    else:
        raise InvalidToken(f"audience {list(audiences)!r} is not ours")
    subject = claims.get("sub")
    if type(subject) is not str or not subject:
        raise InvalidToken("sub missing or not a string")
    permissions = extract_permissions(claims, config)
    profile = config.profile
    verified = VerifiedToken(
        subject,
        _first_string(claims, _CLIENT_CLAIMS[profile]) or subject,
        issuer,
        audiences,
        expand_permissions(permissions, implies) if implies else permissions,
        int(exp),
        None if iat is None else int(iat),
        _first_string(claims, _TENANT_CLAIMS[profile]),
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
        raise InvalidToken("cnf is not an object")
    if not cnf.keys() <= _CHECKABLE_CNF:
        names = sorted(k for k in cnf if k not in _CHECKABLE_CNF)[:4]
        raise InvalidToken(f"cnf has confirmation methods we cannot check: {names!r}"[:200])
    if not cnf:
        return None
    x5t = cnf["x5t#S256"]
    if type(x5t) is not str or not _X5T_S256.fullmatch(x5t):
        raise InvalidToken("cnf.x5t#S256 is not the base64url of a SHA-256 digest")
    return x5t
