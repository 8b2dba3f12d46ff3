"""Strict JWS compact parsing and signature verification (RFC 7515, RFC 7519, RFC 8725).

Parsing is pure and refuses anything a resource server has no business accepting: other
serialisations, encrypted or nested tokens, unknown critical headers, key-carrying headers,
duplicate JSON members and non-finite numbers. Verification binds the key type to the
algorithm, so an RSA public key can never become an HMAC secret (RFC 8725 §3.1).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from ._errors import InvalidToken

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "ParsedJWS",
    "PublicJWK",
    "parse_jws",
    "parse_jwks",
    "verify_signature",
]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_EC_CURVES = {
    "ES256": ("P-256", ec.SECP256R1, 32),
    "ES384": ("P-384", ec.SECP384R1, 48),
    "ES512": ("P-521", ec.SECP521R1, 66),
}

SUPPORTED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
"""Asymmetric algorithms only: a resource server never shares a secret with the issuer."""

_KTY_FOR_ALG = {alg: ("EC" if alg.startswith("ES") else "RSA") for alg in SUPPORTED_ALGORITHMS}
_MIN_RSA_BITS = 2048  # RFC 7518 §3.3
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_KID = re.compile(r"[A-Za-z0-9_.~+/=:-]{1,128}")
# Headers that name or carry a key: using them lets the token choose its own verifier.
_KEY_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})


@dataclass(frozen=True, slots=True)
class ParsedJWS:
    """A syntactically valid JWS whose signature is not yet checked."""

    alg: str
    kid: str
    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class PublicJWK:
    """One usable verification key from a JWKS, its type bound to the algorithms it may serve."""

    kid: str
    kty: str
    alg: str | None
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    curve: str | None = None

    def fits(self, alg: str) -> bool:
        """Whether this key may verify ``alg`` (RFC 8725 §3.1: the key decides, not the token)."""
        if self.alg is not None and self.alg != alg:
            return False
        if _KTY_FOR_ALG.get(alg) != self.kty:
            return False
        return self.kty != "EC" or _EC_CURVES[alg][0] == self.curve


def _b64decode(segment: str, what: str) -> bytes:
    # RFC 7515 §2: base64url without padding; no '+', '/', '=' or whitespace.
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidToken(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex already guards
        raise InvalidToken(f"{what} is not base64url") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


# Built once: json.loads with hooks would construct a decoder per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidToken(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidToken(f"{what} is not a JSON object")
    return value


def parse_jws(token: str, *, algorithms: frozenset[str], max_bytes: int = 8192) -> ParsedJWS:
    """Split and decode a compact JWS, enforcing the header policy.

    Raises:
        InvalidToken: for anything but a three-part JWS with an allowed ``alg`` and a ``kid``.
    """
    if len(token) > max_bytes:
        raise InvalidToken(f"token longer than {max_bytes} bytes")
    if not token.isascii():
        raise InvalidToken("token has non-ASCII characters")
    parts = token.split(".")
    if len(parts) == 5:
        raise InvalidToken("encrypted tokens (JWE) are not accepted")
    if len(parts) != 3:
        raise InvalidToken(f"token has {len(parts)} segments, a JWS has 3")
    h64, p64, s64 = parts
    header = _json_object(_b64decode(h64, "header"), "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise InvalidToken(f"algorithm {alg!r} is not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise InvalidToken("kid missing or malformed")
    if used := _KEY_HEADERS.intersection(header):
        raise InvalidToken(f"key-carrying header {sorted(used)} is not accepted")
    if "crit" in header:  # RFC 7515 §4.1.11: we understand no extensions, so any crit must fail
        raise InvalidToken("crit header not understood")
    if "b64" in header or "zip" in header or "enc" in header:
        raise InvalidToken("b64/zip/enc headers are not accepted")
    cty = header.get("cty")
    if cty is not None and (not isinstance(cty, str) or cty.lower() in ("jwt", "application/jwt")):
        raise InvalidToken("nested JWTs are not accepted")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
        raise InvalidToken(f"typ {typ!r} is not accepted")
    claims = _json_object(_b64decode(p64, "payload"), "payload")
    signature = _b64decode(s64, "signature")
    if not signature:
        raise InvalidToken("empty signature")
    return ParsedJWS(
        alg=alg,
        kid=kid,
        header=MappingProxyType(header),
        claims=MappingProxyType(claims),
        signing_input=f"{h64}.{p64}".encode("ascii"),
        signature=signature,
    )


def verify_signature(jws: ParsedJWS, key: PublicJWK) -> None:
    """Check the signature with ``key``.

    Raises:
        InvalidToken: the key does not fit the algorithm or the signature is wrong.
    """
    if not key.fits(jws.alg):
        raise InvalidToken(f"key {key.kid!r} ({key.kty}) does not fit {jws.alg}")
    digest = _HASHES[jws.alg[2:]]()
    try:
        if jws.alg.startswith("ES"):
            assert isinstance(key.key, ec.EllipticCurvePublicKey)
            size = _EC_CURVES[jws.alg][2]
            if len(jws.signature) != 2 * size:
                raise InvalidToken("ECDSA signature has the wrong length")
            r = int.from_bytes(jws.signature[:size], "big")
            s = int.from_bytes(jws.signature[size:], "big")
            if r == 0 or s == 0:  # CVE-2022-21449 "psychic signatures"
                raise InvalidToken("ECDSA signature with a zero component")
            key.key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(digest))
        elif jws.alg.startswith("PS"):
            assert isinstance(key.key, rsa.RSAPublicKey)
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            key.key.verify(jws.signature, jws.signing_input, pss, digest)
        else:
            assert isinstance(key.key, rsa.RSAPublicKey)
            key.key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), digest)
    except InvalidSignature as exc:
        raise InvalidToken("signature does not verify") from exc


def parse_jwks(document: object) -> dict[str, PublicJWK]:
    """Usable signing keys of a JWKS document (RFC 7517 §5), by ``kid``.

    Keys without ``kid``, meant for encryption, of unknown type or too weak are skipped,
    not fatal: one odd key must not take the issuer's other keys down with it.

    Raises:
        ValueError: the document is not a JWKS at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: dict[str, PublicJWK] = {}
    for raw in document["keys"]:
        if not isinstance(raw, dict):
            continue
        kid, kty, alg, use = raw.get("kid"), raw.get("kty"), raw.get("alg"), raw.get("use")
        if not isinstance(kid, str) or not _KID.fullmatch(kid) or kid in keys:
            continue
        if use is not None and use != "sig":
            continue
        if alg is not None and (alg not in SUPPORTED_ALGORITHMS or _KTY_FOR_ALG[alg] != kty):
            continue
        public = {k: v for k, v in raw.items() if k in ("kty", "n", "e", "crv", "x", "y", "kid")}
        try:
            if kty == "RSA":
                rsa_key = RSAKey.import_key(public).public_key
                if not isinstance(rsa_key, rsa.RSAPublicKey) or rsa_key.key_size < _MIN_RSA_BITS:
                    continue
                keys[kid] = PublicJWK(kid=kid, kty="RSA", alg=alg, key=rsa_key)
            elif kty == "EC":
                ec_key = ECKey.import_key(public).public_key
                if not isinstance(ec_key, ec.EllipticCurvePublicKey):
                    continue
                crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(ec_key.curve.name)
                keys[kid] = PublicJWK(kid=kid, kty="EC", alg=alg, key=ec_key, curve=crv)
        except (JoseError, ValueError, TypeError, KeyError):
            continue
    return keys
