"""Strict JWS compact parsing and signature verification (RFC 7515, RFC 7519, RFC 8725).

Parsing is pure and refuses anything a resource server has no business accepting: other
serialisations, encrypted or nested tokens, unknown critical headers, key-carrying headers,
duplicate JSON members and non-finite numbers. Verification binds the key type to the
algorithm, so an RSA public key can never become an HMAC secret (RFC 8725 §3.1).
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from ._errors import BadSignature, MalformedToken

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "HeaderMemo",
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
_KID = re.compile(r"[A-Za-z0-9_.~+/=:-]{1,128}")
# Headers that name or carry a key: using them lets the token choose its own verifier.
_KEY_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})


class ParsedJWS(NamedTuple):
    """A syntactically valid JWS whose signature is not yet checked (immutable, cheap to build)."""

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
    usable: frozenset[str] = field(init=False, repr=False, compare=False)
    """The algorithms this key may verify, decided once from its type, curve and ``alg``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "usable", frozenset(a for a in SUPPORTED_ALGORITHMS if self._decide(a)))

    def _decide(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        if _KTY_FOR_ALG.get(alg) != self.kty:
            return False
        return self.kty != "EC" or _EC_CURVES[alg][0] == self.curve

    def fits(self, alg: str) -> bool:
        """Whether this key may verify ``alg`` (RFC 8725 §3.1: the key decides, not the token)."""
        return alg in self.usable


# RFC 7515 §2 base64url without padding, decoded by translating to the standard alphabet for
# binascii's strict C decoder. '+', '/' and '=' are mapped to a byte strict mode refuses, so only
# the URL-safe alphabet gets through; whitespace and anything else is refused by strict mode too.
_TO_STANDARD = bytes.maketrans(b"-_+/=", b"+/!!!")
# Canonical form (one token, one spelling): the unused low bits of the last character must be
# zero, i.e. a 2-character tail ends in a multiple of 16, a 3-character tail in a multiple of 4.
# By length modulo 4: the padding to add and the last characters allowed (one character left over
# cannot be base64 at all).
_TAILS: tuple[tuple[bytes, frozenset[int]] | None, ...] = (
    (b"", frozenset()),
    None,
    (b"==", frozenset(b"AQgw")),
    (b"=", frozenset(b"AEIMQUYcgkosw048")),
)
_a2b = binascii.a2b_base64


def b64url_decode(segment: bytes, what: str = "segment") -> bytes:
    """Decode canonical unpadded base64url (RFC 7515 §2, RFC 4648 §5 and §3.5).

    Raises:
        InvalidToken: padding, characters outside the URL-safe alphabet, an impossible length,
            or non-zero trailing bits (a second spelling of the same bytes).
    """
    tail = _TAILS[len(segment) & 3]
    if tail is None:
        raise MalformedToken(f"{what} is not base64url")
    pad, last = tail
    if pad and segment[-1] not in last:
        raise MalformedToken(f"{what} is not canonical base64url")
    try:
        return _a2b(segment.translate(_TO_STANDARD) + pad, strict_mode=True)
    except binascii.Error as exc:
        raise MalformedToken(f"{what} is not base64url") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # dict() runs in C; a length mismatch means some name came twice (RFC 7515 §4, RFC 8725 §3.5).
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


# Built once: json.loads with hooks would construct a decoder per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
_scan: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\n\r"


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
        start = 0 if text[:1] == "{" else len(text) - len(text.lstrip(_JSON_SPACE))
        value, end = _scan(text, start)
        if end != len(text) and text[end:].strip(_JSON_SPACE):
            raise ValueError("extra data after the JSON value")
    except StopIteration:
        raise MalformedToken(f"{what} is not valid JSON") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedToken(f"{what} is not valid JSON: {exc}") from exc
    if type(value) is not dict:
        raise MalformedToken(f"{what} is not a JSON object")
    return value


_PLAIN_HEADER = frozenset({"alg", "kid", "typ"})


def _check_header(header: dict[str, Any], algorithms: frozenset[str]) -> tuple[str, str]:
    alg = header.get("alg")
    if type(alg) is not str or alg not in algorithms:
        raise MalformedToken(f"algorithm {alg!r} is not allowed")
    kid = header.get("kid")
    if type(kid) is not str or not _KID.fullmatch(kid):
        raise MalformedToken("kid missing or malformed")
    typ = header.get("typ")
    if typ is not None and (type(typ) is not str or typ.lower() not in _ACCEPTED_TYP):
        raise MalformedToken(f"typ {typ!r} is not accepted")
    if header.keys() <= _PLAIN_HEADER:
        return alg, kid  # the usual IAS header: nothing else to refuse
    if used := _KEY_HEADERS.intersection(header):
        raise MalformedToken(f"key-carrying header {sorted(used)} is not accepted")
    if "crit" in header:  # RFC 7515 §4.1.11: we understand no extensions, so any crit must fail
        raise MalformedToken("crit header not understood")
    if "b64" in header or "zip" in header or "enc" in header:
        raise MalformedToken("b64/zip/enc headers are not accepted")
    cty = header.get("cty")
    if cty is not None and (type(cty) is not str or cty.lower() in ("jwt", "application/jwt")):
        raise MalformedToken("nested JWTs are not accepted")
    return alg, kid


HeaderMemo = dict[bytes, tuple[str, str, Mapping[str, Any]]]
"""Decoded, policy-checked headers by their exact base64url segment (owned by one verifier)."""
_MAX_HEADER_MEMO = 64


def parse_jws(
    token: str, *, algorithms: frozenset[str], max_bytes: int = 8192, header_memo: HeaderMemo | None = None
) -> ParsedJWS:
    """Split and decode a compact JWS in one pass per segment, enforcing the header policy.

    An issuer signs every token with one of a few identical headers, so a verifier may pass a
    ``header_memo`` it owns: a header segment already decoded and accepted under the same
    ``algorithms`` is not decoded again. Only accepted headers are remembered, at most 64.

    Raises:
        InvalidToken: for anything but a three-part JWS with an allowed ``alg`` and a ``kid``,
            in canonical base64url, whose header and payload are JSON objects.
    """
    if len(token) > max_bytes:
        raise MalformedToken(f"token longer than {max_bytes} bytes")
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedToken("token has non-ASCII characters") from None
    parts = raw.split(b".")
    if len(parts) != 3:
        if len(parts) == 5:
            raise MalformedToken("encrypted tokens (JWE) are not accepted")
        raise MalformedToken(f"token has {len(parts)} segments, a JWS has 3")
    h64, p64, s64 = parts
    known = header_memo.get(h64) if header_memo is not None else None
    if known is not None and known[0] in algorithms:
        alg, kid, header = known
    else:
        decoded = _json_object(b64url_decode(h64, "header"), "header")
        alg, kid = _check_header(decoded, algorithms)
        header = MappingProxyType(decoded)
        if header_memo is not None:
            if len(header_memo) >= _MAX_HEADER_MEMO:
                header_memo.clear()  # forged headers can only cost the memo, never a verdict
            header_memo[h64] = (alg, kid, header)
    claims = _json_object(b64url_decode(p64, "payload"), "payload")
    signature = b64url_decode(s64, "signature")
    if not signature:
        raise MalformedToken("empty signature")
    frozen: Mapping[str, Any] = MappingProxyType(claims)
    # tuple.__new__ builds the named tuple in C (the generated __new__ is a Python frame).
    return tuple.__new__(ParsedJWS, (alg, kid, header, frozen, raw[: len(h64) + 1 + len(p64)], signature))


# Padding and hash objects are immutable descriptors: build them once per algorithm, not per token.
_RSA_SCHEMES: dict[str, tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]] = {}
for _bits, _hash in _HASHES.items():
    _digest = _hash()
    _RSA_SCHEMES["RS" + _bits] = (padding.PKCS1v15(), _digest)
    _RSA_SCHEMES["PS" + _bits] = (padding.PSS(mgf=padding.MGF1(_digest), salt_length=_digest.digest_size), _digest)
_ECDSA = {alg: (ec.ECDSA(_HASHES[alg[2:]]()), size) for alg, (_, _, size) in _EC_CURVES.items()}


def verify_signature(jws: ParsedJWS, key: PublicJWK) -> None:
    """Check the signature with ``key``.

    Raises:
        InvalidToken: the key does not fit the algorithm or the signature is wrong.
    """
    alg = jws.alg
    if alg not in key.usable:
        raise BadSignature(f"key {key.kid!r} ({key.kty}) does not fit {alg}")
    try:
        scheme = _RSA_SCHEMES.get(alg)
        if scheme is not None:
            rsa_key: Any = key.key  # an RSA key: `usable` bound the key type to the algorithm
            rsa_key.verify(jws.signature, jws.signing_input, scheme[0], scheme[1])
            return
        public = cast(ec.EllipticCurvePublicKey, key.key)
        ecdsa, size = _ECDSA[alg]
        if len(jws.signature) != 2 * size:
            raise BadSignature("ECDSA signature has the wrong length")
        r = int.from_bytes(jws.signature[:size], "big")
        s = int.from_bytes(jws.signature[size:], "big")
        if r == 0 or s == 0:  # CVE-2022-21449 "psychic signatures"
            raise BadSignature("ECDSA signature with a zero component")
        public.verify(encode_dss_signature(r, s), jws.signing_input, ecdsa)
    except InvalidSignature as exc:
        raise BadSignature("signature does not verify") from exc


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
