"""Pure tables against `parse_jws`, `verify_signature` and `parse_jwks`.

The cases are those of attacks.md, "Signature and header" and "Malformed".
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth import InvalidToken
from auth._jws import parse_jwks, parse_jws, verify_signature

from ._cases import (
    EC_KEY,
    HEADER_CASES,
    KEY,
    KID,
    KID_CASES,
    MALFORMED_CASES,
    OTHER_KEY,
    SIGNATURE_CASES,
    Case,
    Ctx,
    b64,
    compact,
    public_jwk,
    public_pem,
)

NOW = 1_800_000_000
CTX = Ctx(issuer="https://tenant.accounts.ondemand.com", now=NOW)
RS256 = frozenset({"RS256"})
PUBLISHED = parse_jwks({"keys": [public_jwk(KEY, use="sig", alg="RS256")]})


def _ids(case: Case) -> str:
    return case.name


def test_well_formed_token_parses_and_verifies() -> None:
    jws = parse_jws(CTX.good(), algorithms=RS256)
    verify_signature(jws, PUBLISHED[KID])
    assert (jws.alg, jws.kid, jws.claims["iss"]) == ("RS256", KID, CTX.issuer)


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/at+jwt", None])
def test_accepted_typ_values_parse(typ: str | None) -> None:
    assert parse_jws(CTX.token(CTX.header(typ=typ)), algorithms=RS256).kid == KID


@pytest.mark.parametrize("case", [c for c in HEADER_CASES + MALFORMED_CASES if c.layer == "parse"], ids=_ids)
def test_parse_jws_rejects_forbidden_or_malformed_token(case: Case) -> None:
    with pytest.raises(InvalidToken):
        parse_jws(case.build(CTX), algorithms=RS256)


@pytest.mark.parametrize("case", SIGNATURE_CASES, ids=_ids)
def test_tampered_or_foreign_signature_is_refused(case: Case) -> None:
    # A truncated signature usually ends in a non-canonical character and is then refused by
    # the parser already; either way it never verifies.
    with pytest.raises(InvalidToken):
        jws = parse_jws(case.build(CTX), algorithms=RS256)
        verify_signature(jws, PUBLISHED[jws.kid])


def test_canonical_but_truncated_signature_parses_and_fails_verification() -> None:
    h, p, s = CTX.good().split(".")
    truncated = s[:-5] + "A"  # same length class as the original, last character canonical
    jws = parse_jws(f"{h}.{p}.{truncated}", algorithms=RS256)
    with pytest.raises(InvalidToken):
        verify_signature(jws, PUBLISHED[jws.kid])


@pytest.mark.parametrize("case", KID_CASES, ids=_ids)
def test_odd_kid_is_only_a_lookup_key_that_names_no_published_key(case: Case) -> None:
    jws = parse_jws(case.build(CTX), algorithms=RS256)
    assert jws.kid not in PUBLISHED


def test_token_longer_than_the_cap_is_rejected_before_decoding() -> None:
    token = CTX.good()
    with pytest.raises(InvalidToken):
        parse_jws(token, algorithms=RS256, max_bytes=len(token) - 1)
    assert parse_jws(token, algorithms=RS256, max_bytes=len(token)).kid == KID


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("secret", ["pem", "jwk"])
def test_hmac_token_keyed_with_rsa_public_key_fails_even_if_hs_were_allowed(alg: str, secret: str) -> None:
    # Defence in depth: even a misconfigured allow-list cannot turn the RSA key into an HMAC secret.
    key = public_pem(KEY) if secret == "pem" else json.dumps(public_jwk(KEY, alg="RS256")).encode()
    jws = parse_jws(CTX.token(CTX.header(alg=alg), key=key), algorithms=frozenset({alg}))
    with pytest.raises(InvalidToken):
        verify_signature(jws, PUBLISHED[KID])


EC_JWKS = parse_jwks({"keys": [
    public_jwk(EC_KEY, kid="ec-1", use="sig", alg="ES256"),
    public_jwk(ec.generate_private_key(ec.SECP384R1()), kid="ec-384"),
    public_jwk(KEY, kid="rsa-384", alg="RS384"),
    public_jwk(KEY, kid="rsa-any"),
]})
ALL_ALGS = frozenset({"RS256", "RS384", "PS256", "ES256"})


@pytest.mark.parametrize(("kid", "usable"), [
    ("ec-1", {"ES256"}),
    ("ec-384", {"ES384"}),
    ("rsa-384", {"RS384"}),
    ("rsa-any", {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
], ids=["ec_p256_es256", "ec_p384_no_alg", "rsa_rs384", "rsa_no_alg"])
def test_each_key_may_verify_exactly_the_algorithms_its_type_curve_and_alg_allow(kid: str, usable: set[str]) -> None:
    key = EC_JWKS[kid]
    assert key.usable == usable
    assert {alg for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                            "HS256", "none", "EdDSA") if key.fits(alg)} == usable


@pytest.mark.parametrize(("alg", "kid", "signer"), [
    ("RS256", "ec-1", KEY),          # EC key cannot verify RSA
    ("ES256", "rsa-any", EC_KEY),    # RSA key cannot verify ECDSA
    ("ES256", "ec-384", EC_KEY),     # P-384 key cannot verify ES256 (P-256)
    ("RS256", "rsa-384", KEY),       # key pinned to RS384 cannot verify RS256
    ("PS256", "rsa-384", KEY),
], ids=["rs256_with_ec_key", "es256_with_rsa_key", "es256_with_p384_key", "rs256_with_rs384_key",
        "ps256_with_rs384_key"])
def test_key_whose_type_or_alg_does_not_fit_the_token_is_refused(alg: str, kid: str, signer: Any) -> None:
    jws = parse_jws(CTX.token(CTX.header(alg=alg, kid=kid), key=signer), algorithms=ALL_ALGS)
    with pytest.raises(InvalidToken):
        verify_signature(jws, EC_JWKS[kid])


def test_ecdsa_token_with_allowed_es256_and_ec_key_verifies() -> None:
    token = CTX.token(CTX.header(alg="ES256", kid="ec-1"), key=EC_KEY)
    jws = parse_jws(token, algorithms=frozenset({"ES256"}))
    verify_signature(jws, EC_JWKS["ec-1"])
    assert jws.alg == "ES256"


@pytest.mark.parametrize("signature", [
    bytes(64),                                   # r = s = 0: CVE-2022-21449 "psychic signature"
    bytes(32) + (1).to_bytes(32, "big"),         # r = 0
    (1).to_bytes(32, "big") + bytes(32),         # s = 0
    bytes(63),                                   # wrong length
    bytes(72),
    ec.SECP256R1().key_size.to_bytes(32, "big") * 2,
], ids=["r_s_zero", "r_zero", "s_zero", "short", "long", "small_values"])
def test_ecdsa_degenerate_signature_is_rejected(signature: bytes) -> None:
    token = compact(CTX.header(alg="ES256", kid="ec-1"), CTX.claims(), signature=signature)
    jws = parse_jws(token, algorithms=frozenset({"ES256"}))
    with pytest.raises(InvalidToken):
        verify_signature(jws, EC_JWKS["ec-1"])


# --- parse_jwks: a JWK whose kty/alg/use does not fit is skipped, the good keys stay ---------------

WEAK = rsa.generate_private_key(public_exponent=65537, key_size=1024)
BAD_JWKS: dict[str, dict[str, Any]] = {
    "use_enc": public_jwk(OTHER_KEY, kid="bad", use="enc"),
    "alg_hs256": public_jwk(OTHER_KEY, kid="bad", alg="HS256"),
    "alg_none": public_jwk(OTHER_KEY, kid="bad", alg="none"),
    "alg_es256_on_rsa_key": public_jwk(OTHER_KEY, kid="bad", alg="ES256"),
    "alg_rs256_on_ec_key": public_jwk(EC_KEY, kid="bad", alg="RS256"),
    "kty_oct": {"kty": "oct", "k": b64(b"secret"), "kid": "bad", "alg": "HS256"},
    "kty_unknown": public_jwk(OTHER_KEY, kid="bad") | {"kty": "OKP"},
    "kty_missing": {k: v for k, v in public_jwk(OTHER_KEY, kid="bad").items() if k != "kty"},
    "rsa_1024_bits": public_jwk(WEAK, kid="bad"),
    "rsa_modulus_garbage": public_jwk(OTHER_KEY, kid="bad") | {"n": "!!!"},
    "kid_missing": {k: v for k, v in public_jwk(OTHER_KEY, kid="bad").items() if k != "kid"},
    "kid_number": public_jwk(OTHER_KEY, kid="bad") | {"kid": 7},
    "kid_with_spaces": public_jwk(OTHER_KEY, kid="bad kid"),
}


@pytest.mark.filterwarnings("ignore:Key size should be")
@pytest.mark.parametrize("bad", BAD_JWKS.values(), ids=BAD_JWKS.keys())
def test_unfit_jwk_is_skipped_and_good_keys_survive(bad: dict[str, Any]) -> None:
    keys = parse_jwks({"keys": [bad, public_jwk(KEY, use="sig", alg="RS256"), "not-a-key", None]})
    assert set(keys) == {KID}


def test_duplicate_kid_keeps_the_first_key_only() -> None:
    keys = parse_jwks({"keys": [public_jwk(KEY), public_jwk(OTHER_KEY)]})
    jws = parse_jws(CTX.token(key=OTHER_KEY), algorithms=RS256)
    with pytest.raises(InvalidToken):
        verify_signature(jws, keys[KID])


@pytest.mark.parametrize("document", [None, [], "keys", {"keys": {}}, {"keys": "x"}, {"key": []}],
                         ids=["null", "array", "string", "keys_object", "keys_string", "no_keys"])
def test_document_that_is_not_a_jwks_raises_value_error(document: object) -> None:
    with pytest.raises(ValueError):
        parse_jwks(document)


# --- one token, one spelling (canonical base64url, RFC 4648 §3.5) --------------------------------

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def other_spellings(segment: str) -> list[str]:
    """Every other spelling of ``segment`` that a lenient decoder maps to the same bytes."""
    unused_bits = {2: 4, 3: 2}[len(segment) % 4]
    base = ALPHABET.index(segment[-1]) & ~((1 << unused_bits) - 1)
    return [segment[:-1] + ALPHABET[base + i] for i in range(1 << unused_bits) if ALPHABET[base + i] != segment[-1]]


def token_with_loose_ends() -> str:
    """A signed token none of whose segments is a multiple of 4 characters long."""
    for pad in range(12):
        token = CTX.token(CTX.header(x="y" * pad), CTX.claims(pad="z" * pad))
        if all(len(s) % 4 for s in token.split(".")):
            return token
    raise AssertionError("no padding gives loose ends")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["header", "payload", "signature"])
def test_non_canonical_spelling_of_any_segment_is_refused(index: int) -> None:
    token = token_with_loose_ends()
    verify_signature(parse_jws(token, algorithms=RS256), PUBLISHED[KID])  # the canonical one is fine
    parts = token.split(".")
    spellings = other_spellings(parts[index])
    assert len(spellings) in (3, 15)
    for spelling in spellings:
        same = base64.urlsafe_b64decode(spelling + "==")
        assert same == base64.urlsafe_b64decode(parts[index] + "==")  # a lenient decoder sees no difference
        with pytest.raises(InvalidToken, match="canonical"):
            parse_jws(".".join([*parts[:index], spelling, *parts[index + 1:]]), algorithms=RS256)


@pytest.mark.parametrize("segment", ["YQ==", "YQ=", "Y Q", "YQ\n", "+w", "/w", "Y", "YQ.", "\u00e9Q"],
                         ids=["padded", "half_padded", "space", "newline", "plus", "slash", "one_char", "dot",
                              "non_ascii"])
def test_signature_segment_outside_canonical_base64url_is_refused(segment: str) -> None:
    h, p, _ = CTX.good().split(".")
    with pytest.raises(InvalidToken):
        parse_jws(f"{h}.{p}.{segment}", algorithms=RS256)


def test_b64url_decode_round_trips_every_length() -> None:
    from auth._jws import b64url_decode

    for n in range(0, 70):
        data = bytes(range(n))
        assert b64url_decode(b64(data).encode()) == data


# --- payload JSON: one parse in C for compact text, repeated names refused however they are written -----

@pytest.mark.parametrize("text", [
    '{"a":1,"a":2}',                                  # compact: the C parse alone would keep the last
    '{"a":1,"b":2,"a":1}',
    '{"":1,"":1}',
    '{"a":1, "a":2}',                                 # whitespace between members
    '{"a" :1,"a":2}',                                 # whitespace between a name and its colon
    '{"a":1,"a"\n:2}',
    '{"a":{"b":1,"b":2}}',                            # repeated inside a nested object
    '{"a":[{"b":1,"b":2}]}',                          # ...inside an array
    '{"a":{"b":1},"a":{"b":1}}',
    '{"a":":","a":2}',                                # a value that starts with a colon
    '{"x":"\\":","x":1}',                           # an escaped quote before a colon
    '{"a\\u0022":1,"a\\u0022":2}',                 # the same name spelled with an escape
    '{"a":1,"\\u0061":2}',                           # ...or with and without one
], ids=["compact", "three_members", "empty_name", "space_between_members", "space_before_colon",
        "newline_before_colon", "nested_object", "object_in_array", "repeated_objects", "colon_value",
        "escaped_quote", "escaped_names", "escaped_and_plain_name"])
def test_payload_with_a_member_name_twice_is_refused_however_written(text: str) -> None:
    with pytest.raises(InvalidToken, match="duplicate"):
        parse_jws(compact(CTX.header(), text), algorithms=RS256)


@pytest.mark.parametrize(("text", "claims"), [
    ('{"a":1,"b":"x"}', {"a": 1, "b": "x"}),
    ('{"a":":","b":"\\":"}', {"a": ":", "b": '":'}),   # colons and quotes in values are no members
    ('{"a":{"b":1},"c":[{"b":2}]}', {"a": {"b": 1}, "c": [{"b": 2}]}),  # same name in different objects
    ('{ "a" : 1 , "b" : [ 1 , 2 ] }', {"a": 1, "b": [1, 2]}),
    ('\n{"a":"x y"}\t', {"a": "x y"}),
    ('{"a":{},"b":[]}', {"a": {}, "b": []}),
], ids=["compact", "colons_in_values", "nested_same_name", "spaced", "surrounding_space", "empty_nested"])
def test_payload_with_distinct_names_parses_to_the_same_claims_however_written(
        text: str, claims: dict[str, Any]) -> None:
    parsed = parse_jws(compact(CTX.header(), text), algorithms=RS256)
    assert dict(parsed.claims) == claims
    assert list(parsed.claims) == list(claims)


# --- a verifier's header memo changes no verdict ---------------------------------------------------


def test_header_memo_gives_the_same_parse_and_remembers_only_accepted_headers() -> None:
    from auth._jws import HeaderMemo

    memo: HeaderMemo = {}
    token = CTX.good()
    first = parse_jws(token, algorithms=RS256, header_memo=memo)
    again = parse_jws(token, algorithms=RS256, header_memo=memo)
    assert first == again == parse_jws(token, algorithms=RS256)
    assert list(memo) == [token.split(".")[0].encode()]
    with pytest.raises(InvalidToken):
        parse_jws(CTX.token(CTX.header(crit=["exp"])), algorithms=RS256, header_memo=memo)
    assert len(memo) == 1


def test_header_memo_rechecks_the_algorithm_policy() -> None:
    memo: dict[bytes, Any] = {}
    token = CTX.good()
    parse_jws(token, algorithms=RS256, header_memo=memo)
    with pytest.raises(InvalidToken):
        parse_jws(token, algorithms=frozenset({"ES256"}), header_memo=memo)


@pytest.mark.parametrize("case", [c for c in HEADER_CASES + MALFORMED_CASES if c.layer == "parse"], ids=_ids)
def test_bad_tokens_are_refused_with_a_warm_header_memo(case: Case) -> None:
    memo: dict[bytes, Any] = {}
    parse_jws(CTX.good(), algorithms=RS256, header_memo=memo)
    with pytest.raises(InvalidToken):
        parse_jws(case.build(CTX), algorithms=RS256, header_memo=memo)


def test_header_memo_stays_bounded_under_ever_new_headers() -> None:
    memo: dict[bytes, Any] = {}
    for i in range(150):
        parse_jws(CTX.token(CTX.header(kid=f"forged-{i}")), algorithms=RS256, header_memo=memo)
        assert len(memo) <= 64
