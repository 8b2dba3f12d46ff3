"""Token-validation cost against a floor and against peers, measured side by side in one process.

    python -m pip install -e '.[test]' && python bench/bench_verify.py [--tokens 1000] [--rounds 7]

The floor is a bare RSA-2048 PKCS#1 v1.5 SHA-256 signature verify with `cryptography` on
pre-split, pre-decoded input: no parsing, no claims. Each round, every approach validates
the same batch of distinct IAS-shaped RS256 tokens (signature, issuer, audience, expiry),
interleaved (rotating who goes first) and timed in CPU time of the measuring thread (on a shared
machine, time spent descheduled would otherwise land on whoever was running). A ratio is
taken within each round; the table shows the median of those per-round ratios and their
spread. Keys are pre-loaded everywhere (our verifier
fetches its JWKS once, in-process, before timing).

- ``first sight``: our verifier on tokens it has never seen (a new batch every round), its token
  cache full as in a server that has been up for a while: parse, issuer, key lookup, RSA,
  claims, frozen value, cache insert and eviction of the oldest entry.
- ``cache hit``: the same tokens presented again to a verifier that has seen them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import jwt as pyjwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc import jwt as jrfc_jwt
from joserfc.jwk import KeySet, RSAKey

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # authlib.jose announces its own deprecation
    from authlib.jose import JsonWebToken

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from auth import AuthSettings, IssuerConfig, JWTVerifier  # noqa: E402

ISSUER = "https://bench.accounts.ondemand.com"
AUDIENCE = "mcp-client"
FLOOR = "bare RSA-2048 verify (floor)"
# CPU time of this thread, not wall time: on a shared machine, time spent descheduled while
# other processes run would otherwise land on whichever approach happened to be running.
_cpu = time.thread_time


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_tokens(private: rsa.RSAPrivateKey, kid: str, n: int) -> list[str]:
    """``n`` distinct IAS client-credentials tokens (ias.md), signed directly with `cryptography`."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}, separators=(",", ":")).encode())
    tokens = []
    for i in range(n):
        claims = {
            "iss": ISSUER, "sub": f"client-{i}", "azp": f"client-{i}", "aud": [AUDIENCE], "iat": now,
            "exp": now + 3600, "jti": str(uuid.uuid4()), "app_tid": "7b20408e-3fe0-4ade-aa2e-ad97baac72e8",
            "sap_id_type": "app", "ias_apis": ["api_read_access"],
        }
        signing_input = f"{header}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        tokens.append(f"{signing_input}.{_b64(signature)}")
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000, help="distinct tokens per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=0, help="tokens per approach before switching (0: the batch)")
    args = parser.parse_args()
    chunk_size = args.chunk or args.tokens

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = RSAKey.import_key(private, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
    jwks = {"keys": [key.as_dict(private=False)]}
    public = private.public_key()
    batches = [make_tokens(private, "k1", args.tokens) for _ in range(args.rounds)]

    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    floor_inputs: dict[str, tuple[bytes, bytes]] = {}
    for t in (t for batch in batches for t in batch):  # split and decode before timing: the floor is RSA alone
        signing_input, _, signature = t.rpartition(".")
        floor_inputs[t] = (base64.urlsafe_b64decode(signature + "=="), signing_input.encode())

    def floor(t: str) -> None:
        sig, data = floor_inputs[t]
        public.verify(sig, data, pkcs1, sha256)

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
    claims_options = {"iss": {"essential": True, "value": ISSUER}, "aud": {"essential": True, "value": AUDIENCE},
                      "exp": {"essential": True}}

    def authlib_decode(t: str) -> None:
        authlib_jwt.decode(t, jwks, claims_options=claims_options).validate()

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=json.dumps(jwks)))
    settings = AuthSettings(
        issuers=(IssuerConfig(issuer=ISSUER, audiences=(AUDIENCE,), jwks_uri=f"{ISSUER}/oauth2/certs"),),
        resource_url="https://mcp.example.com/mcp",
        token_cache_size=max(10_000, 2 * args.tokens * args.rounds),
    )
    # First sight at steady state: the cache is full (of a warm-up batch), so each new token also
    # evicts the oldest entry, as in a server that has been up for a while.
    fresh = JWTVerifier(replace(settings, token_cache_size=args.tokens),
                        client=httpx.AsyncClient(transport=transport))
    reused = JWTVerifier(settings, client=httpx.AsyncClient(transport=transport))
    fill = make_tokens(private, "k1", args.tokens)
    sync_approaches: dict[str, Callable[[str], object]] = {
        FLOOR: floor,
        "joserfc decode + claims registry": joserfc_decode,
        "authlib.jose decode + validate": authlib_decode,
        "PyJWT, pre-loaded key": pyjwt_decode,
    }
    ours = {"this project, first sight": fresh, "this project, cache hit (token seen before)": reused}
    names = [FLOOR, *ours, *list(sync_approaches)[1:]]

    async def measure() -> dict[str, list[float]]:
        warm_up = make_tokens(private, "k1", 1)[0]  # both fetch the JWKS once, before any timing
        for verifier in (fresh, reused):
            await verifier.verify(warm_up)
        for t in fill:
            await fresh.verify(t)
        for batch in batches:  # the reused verifier sees every token once before timing
            for t in batch:
                await reused.verify(t)
        hits_before = reused.cache_hits
        # The setup (tokens, keys, warm caches: tens of MB) leaves the collector's view, so a full
        # collection, which would walk all of it, does not land on whichever approach triggers it.
        gc.collect()
        gc.freeze()
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for batch in batches:
            spent = dict.fromkeys(names, 0.0)
            # Interleave, rotating who goes first. Whole batches by default: each approach runs
            # warm, as in a server validating tokens all day (small chunks measure cold caches).
            for number, start in enumerate(range(0, len(batch), chunk_size)):
                chunk = batch[start : start + chunk_size]
                shift = number % len(names)
                for name in names[shift:] + names[:shift]:
                    began = _cpu()
                    if name in ours:
                        verifier = ours[name]
                        for t in chunk:
                            await verifier.verify(t)
                    else:
                        fn = sync_approaches[name]
                        for t in chunk:
                            fn(t)
                    spent[name] += _cpu() - began
            for name in names:
                seconds[name].append(spent[name] / len(batch))
        assert reused.cache_hits - hits_before == args.tokens * args.rounds, "every cache-hit row must be a hit"
        assert fresh.cache_hits == 0, "every first-sight row must be a first sight"
        return seconds

    gc.collect()
    seconds = asyncio.run(measure())

    print(f"token validation: {args.tokens} distinct RS256 tokens per round, {args.rounds} interleaved rounds")
    print(f"{'approach':46} {'µs/token':>9} {'× floor':>8}  {'(min–max over rounds)':>22}")
    for name, times in seconds.items():
        ratios = [t / f for t, f in zip(times, seconds[FLOOR], strict=True)]
        spread = f"{min(ratios):.2f}–{max(ratios):.2f}"
        print(f"{name:46} {statistics.median(times) * 1e6:9.1f} {statistics.median(ratios):8.2f}  {spread:>22}")
    print()
    print("targets (issue 11), medians of per-round ratios to the floor:")
    for name, label, bound in (("this project, first sight", "fresh token", 2.0),
                               ("this project, cache hit (token seen before)", "reused token", 0.10)):
        ratio = statistics.median(t / f for t, f in zip(seconds[name], seconds[FLOOR], strict=True))
        print(f"  {label:14} {ratio:5.2f}x  target <= {bound:.2f}x  {'met' if ratio <= bound else 'NOT MET'}")


if __name__ == "__main__":
    main()
