"""The bad tokens of ``attacks.md``, built by hand so each defect is exactly the one named.

Tokens are assembled from raw segments and signed with ``cryptography`` or ``hmac``
directly (not with our code, and not with a JOSE library that would refuse to build
them). Every case is a builder taking a `Ctx` (the issuer and the time to mint for), so
the same table serves the pure tests (`test_jws`, `test_claims`), the verifier against
a live IdP (`test_verifier`) and the HTTP tests (`test_http`).

Each case names the *layer* that must refuse it:

- ``parse``: `parse_jws` itself raises;
- ``signature``: parsing succeeds and `verify_signature` with the published key raises;
- ``kid``: parsing succeeds but no published key has that ``kid`` (the key cache refuses);
- ``claims``: the signature is fine and `match_issuer` / `check_claims` refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

KID = "key-1"
AUDIENCE = "mcp-client"
IAS_ISSUER = "https://tenant.accounts.ondemand.com"
IAS_DOMAIN = "accounts.ondemand.com"

# Generated once per test process; never written anywhere.
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())

_HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HMAC = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str = KID,
               **extra: Any) -> dict[str, Any]:
    """The public JWK (RFC 7517) of ``key``, with ``kid`` and any extra members."""
    if isinstance(key, rsa.RSAPrivateKey):
        nums = key.public_key().public_numbers()
        jwk: dict[str, Any] = {"kty": "RSA", "n": _uint(nums.n), "e": _uint(nums.e)}
    else:
        pub = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        jwk = {"kty": "EC", "crv": crv,
               "x": b64(pub.x.to_bytes(size, "big")), "y": b64(pub.y.to_bytes(size, "big"))}
    return jwk | {"kid": kid} | extra


def sign(alg: str, data: bytes, key: Any) -> bytes:
    """Sign ``data`` for ``alg``; ``key`` is a private key, or bytes for HS*."""
    bits = alg[2:]
    if alg.startswith("HS"):
        return hmac.new(key, data, _HMAC[bits]).digest()
    if alg.startswith("RS"):
        return key.sign(data, padding.PKCS1v15(), _HASH[bits]())
    if alg.startswith("PS"):
        h = _HASH[bits]()
        return key.sign(data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    if alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(_HASH[bits]())))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise ValueError(alg)


def segment(value: Any) -> str:
    """A base64url segment: dicts/lists as compact JSON, ``str`` as raw JSON text, bytes as is."""
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, str):
        return b64(value.encode("utf-8"))
    return b64(json.dumps(value, separators=(",", ":")).encode())


def compact(header: Any, claims: Any, *, key: Any = KEY, alg: str | None = None,
            signature: bytes | None = None) -> str:
    """Assemble ``header.payload.signature``; signs with ``alg`` (default: the header's, else RS256)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    if signature is None:
        if alg is None:
            alg = header.get("alg") if isinstance(header, dict) else "RS256"
        signature = sign(alg, signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64(signature)}"


@dataclass(frozen=True)
class Ctx:
    """What a case needs: the trusted issuer, the time to mint for, and an attacker URL for ``jku``."""

    issuer: str
    now: int
    attacker_url: str = "https://attacker.example/jwks.json"
    audience: str = AUDIENCE

    def header(self, **overrides: Any) -> dict[str, Any]:
        base = {"alg": "RS256", "kid": KID, "typ": "JWT"} | overrides
        return {k: v for k, v in base.items() if v is not None}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """IAS client-credentials claims (ias.md); ``None`` removes a claim."""
        base: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "consumer-client",
            "azp": "consumer-client",
            "aud": [self.audience],
            "sap_id_type": "app",
            "app_tid": "7b20408e-3fe0-4ade-aa2e-ad97baac72e8",
            "iat": self.now,
            "exp": self.now + 3600,
            "jti": "0f0e0d0c",
            "ias_apis": ["api_read_access", "api_write_access"],
        } | overrides
        return {k: v for k, v in base.items() if v is not None}

    def raw_claims(self, keep: bool = False, **replacements: str) -> str:
        """The claims as JSON text with members set to raw JSON text (``NaN``, ``1e400``...).

        With ``keep`` the original members stay too, which makes duplicate keys.
        """
        claims = self.claims()
        if not keep:
            claims = {k: v for k, v in claims.items() if k not in replacements}
        text = json.dumps(claims, separators=(",", ":"))
        extra = ",".join(f'"{k}":{v}' for k, v in replacements.items())
        return text[:-1] + "," + extra + "}"

    def token(self, header: Any = None, claims: Any = None, **kw: Any) -> str:
        header = self.header() if header is None else header
        return compact(header, self.claims() if claims is None else claims, **kw)

    def good(self) -> str:
        return self.token()


Builder = Callable[[Ctx], str]


@dataclass(frozen=True)
class Case:
    name: str
    layer: str  # parse | signature | kid | claims
    build: Builder


def _none(alg: str) -> Builder:
    return lambda c: f"{segment(c.header(alg=alg))}.{segment(c.claims())}."


def _hmac_confusion(alg: str, secret: str) -> Builder:
    def build(c: Ctx) -> str:
        key = public_pem(KEY) if secret == "pem" else json.dumps(public_jwk(KEY, alg="RS256")).encode()
        return c.token(c.header(alg=alg), key=key)
    return build


def _split(token: str) -> list[str]:
    return token.split(".")


def _altered_payload(c: Ctx) -> str:
    h, _, s = _split(c.good())
    return f"{h}.{segment(c.claims(ias_apis=['api_read_access', 'api_write_access', 'admin']))}.{s}"


def _altered_header(c: Ctx) -> str:
    _, p, s = _split(c.good())
    return f"{segment(c.header(typ='at+jwt'))}.{p}.{s}"


def _swapped_signature(c: Ctx) -> str:
    h, p, _ = _split(c.good())
    other = _split(c.token(claims=c.claims(sub="someone-else")))[2]
    return f"{h}.{p}.{other}"


def _with_segment(index: int, transform: Callable[[str], str]) -> Builder:
    def build(c: Ctx) -> str:
        parts = _split(c.good())
        parts[index] = transform(parts[index])
        return ".".join(parts)
    return build


def _std_base64_signature(c: Ctx) -> str:
    h, p, _ = _split(c.good())
    sig = sign("RS256", f"{h}.{p}".encode(), KEY)
    return f"{h}.{p}." + base64.b64encode(sig).decode()  # '+', '/' and '=' padding


def _raw(header: Any = None, claims: Any = None, sig: str = "c2ln") -> Builder:
    def build(c: Ctx) -> str:
        h = c.header() if header is None else header
        return f"{segment(h)}.{segment(c.claims() if claims is None else claims)}.{sig}"
    return build


def _signed_raw_header(text: Callable[[Ctx], str]) -> Builder:
    return lambda c: compact(text(c), c.claims(), alg="RS256")


def _signed_raw_claims(text: Callable[[Ctx], str]) -> Builder:
    return lambda c: compact(c.header(), text(c), alg="RS256")


def _jwe(c: Ctx) -> str:
    hdr = segment({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": KID})
    return ".".join([hdr, b64(b"k" * 256), b64(b"i" * 12), b64(b"ciphertext"), b64(b"t" * 16)])


def _embedded_jwk(c: Ctx) -> str:
    return c.token(c.header(jwk=public_jwk(OTHER_KEY, alg="RS256")), key=OTHER_KEY)


HEADER_CASES: list[Case] = [
    *(Case(f"alg_{n}", "parse", _none(a)) for n, a in
      [("none", "none"), ("None", "None"), ("NONE", "NONE"), ("nOnE", "nOnE")]),
    Case("alg_none_with_real_signature", "parse",
         lambda c: _split(_none("none")(c))[0] + "." + ".".join(_split(c.good())[1:])),
    Case("alg_missing", "parse", lambda c: c.token(c.header(alg=None), alg="RS256")),
    Case("alg_not_a_string", "parse", lambda c: c.token(c.header(alg=["RS256"]), alg="RS256")),
    Case("empty_signature", "parse", lambda c: ".".join(_split(c.good())[:2]) + "."),
    *(Case(f"{alg.lower()}_with_rsa_public_{secret}_as_secret", "parse", _hmac_confusion(alg, secret))
      for alg in ("HS256", "HS384", "HS512") for secret in ("pem", "jwk")),
    Case("ps256_outside_allow_list", "parse", lambda c: c.token(c.header(alg="PS256"))),
    Case("es256_outside_allow_list", "parse", lambda c: c.token(c.header(alg="ES256"), key=EC_KEY)),
    Case("rs384_outside_allow_list", "parse", lambda c: c.token(c.header(alg="RS384"))),
    Case("kid_missing", "parse", lambda c: c.token(c.header(kid=None))),
    Case("kid_empty", "parse", lambda c: c.token(c.header(kid=""))),
    Case("kid_not_a_string", "parse", lambda c: c.token(c.header(kid=1))),
    Case("kid_sql_injection", "parse", lambda c: c.token(c.header(kid="1' OR '1'='1"))),
    Case("kid_sql_comment", "parse", lambda c: c.token(c.header(kid="key-1';--"))),
    Case("kid_too_long", "parse", lambda c: c.token(c.header(kid="k" * 129))),
    Case("kid_with_newline", "parse", lambda c: c.token(c.header(kid="key-1\n"))),
    Case("jku_header", "parse", lambda c: c.token(c.header(jku=c.attacker_url), key=OTHER_KEY)),
    Case("x5u_header", "parse", lambda c: c.token(c.header(x5u=c.attacker_url), key=OTHER_KEY)),
    Case("jwk_header", "parse", _embedded_jwk),
    Case("x5c_header", "parse",
         lambda c: c.token(c.header(x5c=[base64.b64encode(b"not-really-a-cert").decode()]), key=OTHER_KEY)),
    Case("crit_unknown", "parse", lambda c: c.token(c.header(crit=["x-unknown"], **{"x-unknown": True}))),
    Case("crit_empty", "parse", lambda c: c.token(c.header(crit=[]))),
    Case("b64_false", "parse", lambda c: c.token(c.header(b64=False, crit=["b64"]))),
    Case("b64_false_without_crit", "parse", lambda c: c.token(c.header(b64=False))),
    Case("zip_deflate", "parse", lambda c: c.token(c.header(zip="DEF"))),
    Case("enc_in_jws", "parse", lambda c: c.token(c.header(enc="A256GCM"))),
    Case("jwe_five_segments", "parse", _jwe),
    Case("cty_JWT_nested", "parse", lambda c: c.token(c.header(cty="JWT"))),
    Case("cty_jwt_nested_lower", "parse", lambda c: c.token(c.header(cty="jwt"))),
    Case("cty_application_jwt", "parse", lambda c: c.token(c.header(cty="application/jwt"))),
    Case("typ_foreign", "parse", lambda c: c.token(c.header(typ="secevent+jwt"))),
    Case("typ_not_a_string", "parse", lambda c: c.token(c.header(typ=1))),
]

MALFORMED_CASES: list[Case] = [
    Case("empty_token", "parse", lambda c: ""),
    Case("one_segment", "parse", lambda c: _split(c.good())[0]),
    Case("two_segments", "parse", lambda c: ".".join(_split(c.good())[:2])),
    Case("four_segments", "parse", lambda c: c.good() + ".AAAA"),
    Case("dots_only", "parse", lambda c: ".."),
    Case("header_with_padding", "parse", _with_segment(0, lambda s: s + "=" * (-len(s) % 4 or 4))),
    Case("payload_with_padding", "parse", _with_segment(1, lambda s: s + "==")),
    Case("signature_standard_base64", "parse", _std_base64_signature),
    Case("payload_with_plus", "parse", _with_segment(1, lambda s: "+" + s[1:])),
    Case("payload_with_slash", "parse", _with_segment(1, lambda s: s[:-1] + "/")),
    Case("space_inside_payload", "parse", _with_segment(1, lambda s: s[:8] + " " + s[8:])),
    Case("tab_inside_payload", "parse", _with_segment(1, lambda s: s[:8] + "\t" + s[8:])),
    Case("newline_inside_payload", "parse", _with_segment(1, lambda s: s[:8] + "\n" + s[8:])),
    Case("leading_space", "parse", lambda c: " " + c.good()),
    Case("trailing_newline", "parse", lambda c: c.good() + "\n"),
    Case("segment_length_mod4_is_1", "parse", _with_segment(1, lambda s: s + "A" * ((1 - len(s)) % 4))),
    Case("header_not_json", "parse", _raw(header=b"not json")),
    Case("header_array", "parse", _raw(header=["RS256"])),
    Case("header_string", "parse", _raw(header='"RS256"')),
    Case("header_number", "parse", _raw(header="1")),
    Case("header_null", "parse", _raw(header="null")),
    Case("header_invalid_utf8", "parse", _raw(header=b'{"alg":"RS256","kid":"\xff\xfe"}')),
    Case("payload_not_json", "parse", _signed_raw_claims(lambda c: "not json")),
    Case("payload_array", "parse", _signed_raw_claims(lambda c: json.dumps([c.claims()]))),
    Case("payload_string", "parse", _signed_raw_claims(lambda c: '"claims"')),
    Case("payload_null", "parse", _signed_raw_claims(lambda c: "null")),
    Case("payload_invalid_utf8", "parse", lambda c: compact(c.header(), b'{"iss":"\xff"}')),
    Case("payload_deeply_nested", "parse", _signed_raw_claims(lambda c: "[" * 2000 + "]" * 2000)),
    Case("header_duplicate_alg", "parse",
         _signed_raw_header(lambda c: f'{{"alg":"none","alg":"RS256","kid":"{KID}","typ":"JWT"}}')),
    Case("header_duplicate_kid", "parse",
         _signed_raw_header(lambda c: f'{{"alg":"RS256","kid":"other","kid":"{KID}"}}')),
    Case("payload_duplicate_iss", "parse",
         _signed_raw_claims(lambda c: '{"iss":"https://evil.example",' + json.dumps(c.claims())[1:])),
    Case("payload_duplicate_aud", "parse",
         _signed_raw_claims(lambda c: c.raw_claims(keep=True, aud='"someone-else"'))),
    Case("exp_NaN_literal", "parse", _signed_raw_claims(lambda c: c.raw_claims(exp="NaN"))),
    Case("exp_Infinity_literal", "parse", _signed_raw_claims(lambda c: c.raw_claims(exp="Infinity"))),
    Case("nbf_minus_Infinity_literal", "parse", _signed_raw_claims(lambda c: c.raw_claims(nbf="-Infinity"))),
    Case("oversized_token", "parse", lambda c: c.token(claims=c.claims(padding="x" * 9000))),
    Case("non_ascii_in_signature", "parse", _with_segment(2, lambda s: s[:-1] + "\u00e9")),
    Case("non_ascii_digit_in_header", "parse", _with_segment(0, lambda s: s[:-1] + "\u0663")),
    Case("fullwidth_dot_separator", "parse", lambda c: c.good().replace(".", "\uff0e", 1)),
]

SIGNATURE_CASES: list[Case] = [
    Case("signature_of_other_key", "signature", lambda c: c.token(key=OTHER_KEY)),
    Case("payload_altered_after_signing", "signature", _altered_payload),
    Case("header_altered_after_signing", "signature", _altered_header),
    Case("signature_of_other_token", "signature", _swapped_signature),
    Case("signature_truncated", "signature", _with_segment(2, lambda s: s[:-4])),
    Case("signature_bit_flipped", "signature",
         _with_segment(2, lambda s: ("B" if s[0] == "A" else "A") + s[1:])),
]

KID_CASES: list[Case] = [
    Case("kid_unknown", "kid", lambda c: c.token(c.header(kid="key-2"))),
    Case("kid_path_traversal", "kid", lambda c: c.token(c.header(kid="../../../../dev/null"))),
    Case("kid_absolute_path", "kid", lambda c: c.token(c.header(kid="/etc/passwd"))),
    Case("kid_url", "kid", lambda c: c.token(c.header(kid="https://attacker.example/key"))),
    Case("kid_sql_like_without_quotes", "kid", lambda c: c.token(c.header(kid="1+OR+1=1"))),
]


def _exp_past(c: Ctx) -> dict[str, Any]:
    return c.claims(exp=c.now - 61, iat=c.now - 3700)


# Claim defects: builders return the claims dict (signed by the right key when used as a token).
CLAIM_DEFECTS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "exp_missing": lambda c: c.claims(exp=None),
    "exp_string": lambda c: c.claims(exp=str(c.now + 3600)),
    "exp_bool": lambda c: c.claims(exp=True),
    "exp_list": lambda c: c.claims(exp=[c.now + 3600]),
    "exp_object": lambda c: c.claims(exp={"t": c.now + 3600}),
    "exp_huge_integer": lambda c: c.claims(exp=10**400),
    "exp_past_beyond_leeway": _exp_past,
    "nbf_future_beyond_leeway": lambda c: c.claims(nbf=c.now + 61),
    "nbf_string": lambda c: c.claims(nbf=str(c.now)),
    "nbf_huge_integer": lambda c: c.claims(nbf=10**400),
    "iat_future_beyond_leeway": lambda c: c.claims(iat=c.now + 61),
    "iat_bool": lambda c: c.claims(iat=False),
    "aud_missing": lambda c: c.claims(aud=None),
    "aud_wrong": lambda c: c.claims(aud="other-client"),
    "aud_array_without_us": lambda c: c.claims(aud=["other-client", "third-client"]),
    "aud_dot_suffix": lambda c: c.claims(aud=f"{c.audience}.evil"),
    "aud_dot_suffix_in_array": lambda c: c.claims(aud=[f"{c.audience}.evil"]),
    "aud_prefix": lambda c: c.claims(aud=c.audience[:-1]),
    "aud_case_changed": lambda c: c.claims(aud=c.audience.upper()),
    "aud_number": lambda c: c.claims(aud=123),
    "aud_number_in_array": lambda c: c.claims(aud=[123]),
    "aud_object": lambda c: c.claims(aud={c.audience: True}),
    "aud_empty_array": lambda c: c.claims(aud=[]),
    "aud_empty_string": lambda c: c.claims(aud=""),
    "aud_another_resource": lambda c: c.claims(aud="https://other.example.com/mcp"),
    "sub_missing": lambda c: c.claims(sub=None),
    "sub_not_a_string": lambda c: c.claims(sub=42),
    "ias_apis_string": lambda c: c.claims(ias_apis="api_read_access"),
    "ias_apis_numbers": lambda c: c.claims(ias_apis=[1, 2]),
    "ias_apis_mixed": lambda c: c.claims(ias_apis=["api_read_access", 7]),
    "ias_apis_object": lambda c: c.claims(ias_apis={"api_read_access": True}),
    "cnf_not_an_object": lambda c: c.claims(cnf="thumbprint"),
    "cnf_x5t_not_a_string": lambda c: c.claims(cnf={"x5t#S256": 1}),
}


def _host_swap(issuer: str, new_host: Callable[[str], str]) -> str:
    scheme, rest = issuer.split("://", 1)
    host, slash, path = rest.partition("/")
    return f"{scheme}://{new_host(host)}{slash}{path}"


def _with_port(issuer: str) -> str:
    def change(host: str) -> str:
        name, colon, port = host.partition(":")
        return f"{name}:{int(port) + 1}" if colon else f"{name}:443"
    return _host_swap(issuer, change)


def _percent(issuer: str) -> str:
    return _host_swap(issuer, lambda h: f"%{ord(h[0]):02X}" + h[1:])


def _other_scheme(issuer: str) -> str:
    return "https://" + issuer[7:] if issuer.startswith("http://") else "http://" + issuer[8:]


def _uppercase(issuer: str) -> str:
    upper = _host_swap(issuer, str.upper)
    return upper if upper != issuer else issuer.upper()  # an IP literal has no case: upper-case the path


def _label(host: str) -> tuple[str, str]:
    name, colon, port = host.partition(":")
    return name, colon + port


# Issuer values a token may carry that are not the trusted issuer; applied to ``iss``.
ISSUER_VARIANTS: dict[str, Callable[[str], Any]] = {
    "wrong": lambda i: "https://evil.example.com",
    "other_scheme": _other_scheme,
    "ftp_scheme": lambda i: "ftp://" + i.split("://", 1)[1],
    "extra_path": lambda i: i + "/x",
    "trailing_slash": lambda i: i + "/",
    "query": lambda i: i + "?tenant=evil",
    "fragment": lambda i: i + "#frag",
    "userinfo": lambda i: _host_swap(i, lambda h: "user@" + h),
    "port": _with_port,
    "percent_encoded_host": _percent,
    "percent_encoded_path_char": lambda i: i + "%2F",
    "leading_space": lambda i: " " + i,
    "trailing_space": lambda i: i + " ",
    "tab_inside": lambda i: i.replace("://", "://\t"),
    "nul_char": lambda i: i + "\x00",
    "newline": lambda i: i + "\n",
    "carriage_return_newline": lambda i: i + "\r\n",
    "lookalike_suffix": lambda i: _host_swap(i, lambda h: _label(h)[0] + ".evil" + _label(h)[1]),
    "subdomain_of_trusted_host": lambda i: _host_swap(i, lambda h: "evil." + h),
    "ias_lookalike_suffix": lambda i: f"https://tenant.{IAS_DOMAIN}.evil",
    "ias_lookalike_glued": lambda i: f"https://evil{IAS_DOMAIN}",
    "uppercase": _uppercase,
    "empty": lambda i: "",
    "number": lambda i: 1,
    "list": lambda i: [i],
    "missing": lambda i: None,
}

IAS_ISS_DEFECTS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "ias_iss_wrong_while_iss_right": lambda c: c.claims(ias_iss="https://evil.accounts.ondemand.com.evil"),
    "ias_iss_other_tenant_while_iss_right": lambda c: c.claims(ias_iss="https://evil.example.com"),
    "ias_iss_empty": lambda c: c.claims(ias_iss=""),
    "ias_iss_not_a_string": lambda c: c.claims(ias_iss=["x"]),
}


def claim_cases() -> list[Case]:
    """Every claim defect as a correctly signed token."""
    def signed(defect: Callable[[Ctx], dict[str, Any]]) -> Builder:
        return lambda c: c.token(claims=defect(c))

    def with_iss(variant: Callable[[str], Any]) -> Builder:
        return lambda c: c.token(claims=c.claims(iss=variant(c.issuer)))

    cases = [Case(name, "claims", signed(f)) for name, f in {**CLAIM_DEFECTS, **IAS_ISS_DEFECTS}.items()]
    cases += [Case(f"iss_{name}", "claims", with_iss(f)) for name, f in ISSUER_VARIANTS.items()]
    # JSON numbers the parser turns into inf: only the claim checks can catch these.
    cases.append(Case("exp_1e400_literal", "claims", _signed_raw_claims(lambda c: c.raw_claims(exp="1e400"))))
    cases.append(Case("iat_minus_1e400_literal", "claims",
                      _signed_raw_claims(lambda c: c.raw_claims(iat="-1e400"))))
    return cases


TOKEN_CASES: list[Case] = [*HEADER_CASES, *MALFORMED_CASES, *SIGNATURE_CASES, *KID_CASES, *claim_cases()]
"""Every bad token; all must end in `InvalidToken` (401 ``invalid_token``)."""


def sendable(token: str) -> bool:
    """Whether an HTTP client can put ``token`` into an Authorization header unchanged.

    Control characters cannot travel in a header, and leading/trailing whitespace (so also
    an empty token after ``Bearer ``) is optional whitespace that HTTP strips (RFC 9110 §5.5).
    """
    return bool(token) and token == token.strip() and not any(ch in token for ch in "\r\n\x00")


assert len({c.name for c in TOKEN_CASES}) == len(TOKEN_CASES), "case names must be unique"
