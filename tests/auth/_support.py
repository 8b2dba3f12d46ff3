"""Shared helpers for the auth tests: a settable clock, IdP keys from `_cases`, settings builders."""

from __future__ import annotations

import time
from typing import Any

from joserfc.jwk import RSAKey

from auth import AuthSettings, IssuerConfig

from ._cases import AUDIENCE, KEY, KID, private_pem

RESOURCE = "https://mcp.example.com/mcp"


class Clock:
    """A clock the test moves by hand: ``clock()`` reads it, ``clock.advance(s)`` moves it."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def idp_key(key: Any = KEY, kid: str = KID) -> RSAKey:
    """``key`` (from `_cases`) as the joserfc key a `tests._idp.IdP` publishes and mints with."""
    return RSAKey.import_key(private_pem(key), parameters={"kid": kid, "use": "sig", "alg": "RS256"})


def issuer_config(issuer: str, **overrides: Any) -> IssuerConfig:
    return IssuerConfig(**({"issuer": issuer, "audiences": (AUDIENCE,)} | overrides))


def settings_for(*issuers: IssuerConfig | str, **overrides: Any) -> AuthSettings:
    configs = tuple(issuer_config(i) if isinstance(i, str) else i for i in issuers)
    return AuthSettings(**({"issuers": configs, "resource_url": RESOURCE} | overrides))
