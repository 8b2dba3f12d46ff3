"""Token-validation cost against peers, measured side by side in one process.

    python -m pip install -e '.[test]' && python bench/bench_verify.py [--tokens 1000] [--rounds 3]

Prints each approach's time per token and its ratio to the floor: a bare RSA-2048
PKCS#1 v1.5 SHA-256 signature verify with `cryptography`, measured in the same rounds.
Every approach validates signature, issuer, audience and expiry of the same 1000 distinct
IAS-shaped RS256 tokens; keys are pre-loaded (our verifier gets its JWKS once, in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
import warnings
from collections.abc import Callable

import httpx
import jwt as pyjwt

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # authlib.jose announces its own deprecation
    from authlib.jose import JsonWebToken
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwt as jrfc_jwt
from joserfc.jwk import KeySet, RSAKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from auth import AuthSettings, IssuerConfig, JWTVerifier  # noqa: E402

ISSUER = "https://bench.accounts.ondemand.com"
AUDIENCE = "mcp-client"


def make_tokens(key: RSAKey, n: int) -> list[str]:
    now = int(time.time())
    header = {"alg": "RS256", "kid": key.kid, "typ": "JWT"}
    return [
        jrfc_jwt.encode(header, {
            "iss": ISSUER, "sub": f"client-{i}", "azp": f"client-{i}", "aud": [AUDIENCE], "iat": now,
            "exp": now + 3600, "jti": str(uuid.uuid4()), "app_tid": "t", "ias_apis": ["api_read_access"],
        }, key)
        for i in range(n)
    ]


def per_token(fn: Callable[[str], object], tokens: list[str]) -> float:
    start = time.perf_counter()
    for t in tokens:
        fn(t)
    return (time.perf_counter() - start) / len(tokens)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
    tokens = make_tokens(key, args.tokens)
    public = key.public_key
    jwks = {"keys": [key.as_dict(private=False)]}

    def floor(t: str) -> None:
        h, p, s = t.split(".")
        sig = pyjwt.utils.base64url_decode(s)
        public.verify(sig, f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256())

    pyjwt_key = pyjwt.PyJWK(jwks["keys"][0]).key

    def pyjwt_decode(t: str) -> None:
        pyjwt.decode(t, pyjwt_key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER,
                     options={"require": ["exp", "iss", "aud"]})

    keyset = KeySet.import_key_set(jwks)
    registry = jrfc_jwt.JWTClaimsRegistry(iss={"essential": True, "value": ISSUER},
                                          aud={"essential": True, "value": AUDIENCE}, exp={"essential": True})

    def joserfc_decode(t: str) -> None:
        registry.validate(jrfc_jwt.decode(t, keyset, algorithms=["RS256"]).claims)

    authlib_jwt = JsonWebToken(["RS256"])

    def authlib_decode(t: str) -> None:
        claims = authlib_jwt.decode(t, jwks, claims_options={
            "iss": {"essential": True, "value": ISSUER}, "aud": {"essential": True, "value": AUDIENCE},
            "exp": {"essential": True}})
        claims.validate()

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=json.dumps(jwks)))
    settings = AuthSettings(
        issuers=(IssuerConfig(issuer=ISSUER, audiences=(AUDIENCE,), jwks_uri=f"{ISSUER}/oauth2/certs"),),
        resource_url="https://mcp.example.com/mcp",
    )
    loop = asyncio.new_event_loop()
    cold = JWTVerifier(_no_cache(settings), client=httpx.AsyncClient(transport=transport))
    warm = JWTVerifier(settings, client=httpx.AsyncClient(transport=transport))
    for t in tokens:  # fill the warm cache; both verifiers fetch the JWKS once here
        loop.run_until_complete(warm.verify(t))
    loop.run_until_complete(cold.verify(tokens[0]))

    async def run_all(v: JWTVerifier) -> None:
        for t in tokens:
            await v.verify(t)

    def ours(v: JWTVerifier) -> Callable[[list[str]], float]:
        def measure(ts: list[str]) -> float:
            start = time.perf_counter()
            loop.run_until_complete(run_all(v))
            return (time.perf_counter() - start) / len(ts)
        return measure

    approaches: dict[str, Callable[[list[str]], float]] = {
        "bare RSA verify (floor)": lambda ts: per_token(floor, ts),
        "this project, first sight (no cache)": ours(cold),
        "this project, token seen before (cache hit)": ours(warm),
        "PyJWT, pre-loaded key": lambda ts: per_token(pyjwt_decode, ts),
        "joserfc decode + claims registry": lambda ts: per_token(joserfc_decode, ts),
        "authlib.jose decode + validate": lambda ts: per_token(authlib_decode, ts),
    }
    results: dict[str, list[float]] = {name: [] for name in approaches}
    for _ in range(args.rounds):
        for name, measure in approaches.items():
            results[name].append(measure(tokens))
    floor_s = statistics.median(results["bare RSA verify (floor)"])
    print(f"{args.tokens} distinct RS256 tokens, median of {args.rounds} rounds")
    print(f"{'approach':48} {'µs/token':>10} {'× floor':>8}")
    for name, times in results.items():
        t = statistics.median(times)
        print(f"{name:48} {t * 1e6:10.1f} {t / floor_s:8.2f}")


def _no_cache(settings: AuthSettings) -> AuthSettings:
    from dataclasses import replace

    return replace(settings, token_cache_size=0)


if __name__ == "__main__":
    main()
