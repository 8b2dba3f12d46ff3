"""Pure tables against `match_issuer`, `check_times`, `check_claims` and `extract_permissions`.

The cases are those of attacks.md, "Claims", plus the permission mapping of every issuer profile.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import pytest

from auth import InvalidToken, IssuerConfig
from auth._claims import check_claims, check_claims_window, check_times, extract_permissions, match_issuer
from auth._jws import parse_jwks, parse_jws, verify_signature
from auth._permissions import expand_permissions

from ._cases import (
    AUDIENCE,
    CLAIM_DEFECTS,
    IAS_DOMAIN,
    IAS_ISS_DEFECTS,
    IAS_ISSUER,
    ISSUER_VARIANTS,
    KEY,
    KID,
    Ctx,
    b64,
    claim_cases,
    public_jwk,
)

NOW = 1_800_000_000
LEEWAY = 60
CTX = Ctx(issuer=IAS_ISSUER, now=NOW)
IAS = IssuerConfig(issuer=IAS_ISSUER, audiences=(AUDIENCE,), domains=(IAS_DOMAIN,))
ISSUERS = (IAS,)


def validate(claims: Mapping[str, Any], issuers: tuple[IssuerConfig, ...] = ISSUERS,
             implies: Mapping[str, frozenset[str]] | None = None):  # noqa: ANN201
    config, issuer = match_issuer(claims, issuers)
    return check_claims(claims, config, issuer, now=NOW, leeway=LEEWAY, implies=implies)


THUMBPRINT = b64(hashlib.sha256(b"certificate").digest())


def test_good_ias_claims_give_the_principal() -> None:
    token = validate(CTX.claims(cnf={"x5t#S256": THUMBPRINT}))
    assert token.issuer == IAS_ISSUER
    assert token.audience == (AUDIENCE,)
    assert token.subject == token.client_id == "consumer-client"
    assert token.tenant == "7b20408e-3fe0-4ade-aa2e-ad97baac72e8"
    assert token.permissions == {"api_read_access", "api_write_access"}
    assert token.expires_at == NOW + 3600 and token.issued_at == NOW
    assert token.certificate_thumbprint == THUMBPRINT


@pytest.mark.parametrize("x5t", [
    "abc", "", THUMBPRINT + "A", THUMBPRINT[:-1], THUMBPRINT[:-1] + "B", THUMBPRINT + "=",
    THUMBPRINT[:-2] + "+A", THUMBPRINT[:-2] + "/A", "\u00e9" * 43, "\u00e9" + THUMBPRINT[1:], "\ud800" * 43,
    THUMBPRINT[:-1] + "\n", ["x"], {"x": 1}, 1, True, None,
], ids=lambda v: repr(v)[:24])
def test_malformed_certificate_thumbprint_is_invalid_token(x5t: object) -> None:
    cnf = {"x5t#S256": x5t}
    with pytest.raises(InvalidToken):
        validate(CTX.claims(cnf=cnf))


@pytest.mark.parametrize("cnf", [
    {"jkt": THUMBPRINT},                          # DPoP (RFC 9449 §6)
    {"jkt": THUMBPRINT, "x5t#S256": THUMBPRINT},  # one checkable method does not excuse another
    {"jwk": {"kty": "EC"}}, {"kid": "k"}, {"jku": "https://x"}, {"osc": "x"}, {"x5t": "abc"},
])
def test_confirmation_method_we_cannot_check_is_invalid_token(cnf: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        validate(CTX.claims(cnf=cnf))


def test_empty_cnf_binds_to_nothing() -> None:
    assert validate(CTX.claims(cnf={})).certificate_thumbprint is None


@pytest.mark.parametrize("defect", [*CLAIM_DEFECTS.values(), *IAS_ISS_DEFECTS.values()],
                         ids=[*CLAIM_DEFECTS, *IAS_ISS_DEFECTS])
def test_claim_defect_is_rejected(defect: Any) -> None:
    with pytest.raises(InvalidToken):
        validate(defect(CTX))


@pytest.mark.parametrize("case", claim_cases(), ids=lambda c: c.name)
def test_signed_token_with_claim_defect_passes_signature_but_fails_claims(case: Any) -> None:
    jws = parse_jws(case.build(CTX), algorithms=frozenset({"RS256"}))
    verify_signature(jws, parse_jwks({"keys": [public_jwk(KEY)]})[KID])
    with pytest.raises(InvalidToken):
        validate(jws.claims)


# --- times ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("claims", [
    {},
    {"exp": None},
    {"exp": str(NOW + 3600)},
    {"exp": math.nan},
    {"exp": math.inf},
    {"exp": -math.inf},
    {"exp": True},
    {"exp": [NOW + 3600]},
    {"exp": 10**400},
    {"exp": NOW - LEEWAY - 1},
    {"exp": NOW - 3600},
    {"exp": NOW + 3600, "nbf": NOW + LEEWAY + 1},
    {"exp": NOW + 3600, "nbf": math.nan},
    {"exp": NOW + 3600, "nbf": "0"},
    {"exp": NOW + 3600, "nbf": 10**400},
    {"exp": NOW + 3600, "iat": NOW + LEEWAY + 1},
    {"exp": NOW + 3600, "iat": math.inf},
    {"exp": NOW + 3600, "iat": True},
], ids=["empty", "exp_null", "exp_string", "exp_nan", "exp_inf", "exp_minus_inf", "exp_bool", "exp_list",
        "exp_huge_int", "exp_past_beyond_leeway", "exp_an_hour_ago", "nbf_future_beyond_leeway", "nbf_nan",
        "nbf_string", "nbf_huge_int", "iat_future_beyond_leeway", "iat_inf", "iat_bool"])
def test_check_times_rejects(claims: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        check_times(claims, now=NOW, leeway=LEEWAY)


@pytest.mark.parametrize("claims", [
    {"exp": NOW + 3600},
    {"exp": NOW - LEEWAY + 1},                               # expired, but within leeway
    {"exp": NOW + 3600, "nbf": NOW + LEEWAY - 1},            # clock skew within leeway
    {"exp": NOW + 3600, "iat": NOW + LEEWAY - 1},
    {"exp": float(NOW + 3600), "nbf": NOW - 10, "iat": NOW - 10},
], ids=["valid", "exp_within_leeway", "nbf_within_leeway", "iat_within_leeway", "float_exp"])
def test_check_times_accepts_within_leeway(claims: dict[str, Any]) -> None:
    assert check_times(claims, now=NOW, leeway=LEEWAY) == int(claims["exp"])


def test_zero_leeway_rejects_a_token_at_its_expiry_second() -> None:
    with pytest.raises(InvalidToken):
        check_times({"exp": NOW}, now=NOW, leeway=0)
    assert check_times({"exp": NOW + 1}, now=NOW, leeway=0) == NOW + 1


@pytest.mark.parametrize(("times", "window"), [
    ({"exp": NOW + 3600}, (-math.inf, NOW + 3600 + LEEWAY)),
    ({"exp": NOW + 3600, "iat": NOW - 5}, (NOW - 5 - LEEWAY, NOW + 3600 + LEEWAY)),
    ({"exp": NOW + 3600, "iat": NOW - 5, "nbf": NOW + 30}, (NOW + 30 - LEEWAY, NOW + 3600 + LEEWAY)),
    ({"exp": NOW + 3600.5, "nbf": NOW - 7.25, "iat": NOW - 9}, (NOW - 7.25 - LEEWAY, NOW + 3600.5 + LEEWAY)),
], ids=["exp_only", "iat_starts", "later_nbf_starts", "float_times"])
def test_claims_window_is_exactly_the_span_the_time_claims_allow(times: dict[str, Any],
                                                                 window: tuple[float, float]) -> None:
    claims = {k: v for k, v in CTX.claims().items() if k not in ("exp", "iat", "nbf")} | times
    config, issuer = match_issuer(claims, ISSUERS)
    token, start, end = check_claims_window(claims, config, issuer, now=NOW, leeway=LEEWAY)
    assert (start, end) == window
    assert token == check_claims(claims, config, issuer, now=NOW, leeway=LEEWAY)
    assert token.expires_at == int(times["exp"])
    assert token.issued_at == (int(times["iat"]) if "iat" in times else None)
    for now in (max(start, NOW - 10**6), end - 1):  # inside the window the same claims verify again...
        check_times(claims, now=now, leeway=LEEWAY)
    for now in [end] + ([start - 1] if start > -math.inf else []):  # ...and just outside it they do not
        with pytest.raises(InvalidToken):
            check_times(claims, now=now, leeway=LEEWAY)


@pytest.mark.parametrize("value", [True, False, 2**63, -(2**63), 10**400, math.nan, math.inf, "1", None, [1]],
                         ids=["true", "false", "2_63", "minus_2_63", "huge", "nan", "inf", "string", "null", "list"])
@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_time_claim_that_is_not_a_plain_finite_number_in_range_is_refused(name: str, value: Any) -> None:
    claims = CTX.claims(**{name: value})
    if value is None and name != "exp":
        validate(claims)  # an absent (null) nbf or iat is no defect
        return
    with pytest.raises(InvalidToken):
        validate(claims)


@pytest.mark.parametrize("aud", [[], [AUDIENCE, 1], [AUDIENCE, None], (AUDIENCE,), {AUDIENCE: 1}, 7, None],
                         ids=["empty", "int_member", "null_member", "tuple", "object", "number", "null"])
def test_audience_that_is_not_a_string_or_a_non_empty_array_of_strings_is_refused(aud: Any) -> None:
    with pytest.raises(InvalidToken, match="aud"):
        validate(CTX.claims(aud=aud))


# --- issuer -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ISSUER_VARIANTS.values(), ids=ISSUER_VARIANTS.keys())
def test_untrusted_issuer_value_is_rejected(variant: Any) -> None:
    claims = CTX.claims(iss=variant(IAS_ISSUER))
    with pytest.raises(InvalidToken):
        match_issuer(claims, ISSUERS)


PRESENT_VARIANTS = {k: v for k, v in ISSUER_VARIANTS.items() if k != "missing"}  # absent ias_iss: iss counts


@pytest.mark.parametrize("variant", PRESENT_VARIANTS.values(), ids=PRESENT_VARIANTS.keys())
def test_untrusted_ias_iss_value_is_rejected_even_with_right_iss(variant: Any) -> None:
    claims = CTX.claims(ias_iss=variant(IAS_ISSUER))
    with pytest.raises(InvalidToken):
        match_issuer(claims, ISSUERS)


def test_exact_issuer_matches() -> None:
    assert match_issuer(CTX.claims(), ISSUERS) == (IAS, IAS_ISSUER)


def test_ias_iss_right_with_custom_domain_iss_is_accepted_and_keys_come_from_ias_iss() -> None:
    claims = CTX.claims(iss="https://login.customer.example", ias_iss=IAS_ISSUER)
    assert match_issuer(claims, ISSUERS) == (IAS, IAS_ISSUER)
    assert validate(claims).issuer == IAS_ISSUER


def test_ias_iss_is_not_consulted_for_other_profiles() -> None:
    generic = IssuerConfig(issuer="https://idp.example.com", audiences=(AUDIENCE,), profile="generic")
    claims = CTX.claims(iss="https://login.customer.example", ias_iss="https://idp.example.com")
    with pytest.raises(InvalidToken):
        match_issuer(claims, (generic,))


@pytest.mark.parametrize("iss", [
    f"https://other.{IAS_DOMAIN}",
    f"https://a1-b2.{IAS_DOMAIN}",
    f"https://{'x' * 63}.{IAS_DOMAIN}",
    "https://tenant.accounts.cloud.sap",
])
def test_multi_tenant_accepts_one_label_under_a_trusted_domain(iss: str) -> None:
    config = IssuerConfig(issuer=IAS_ISSUER, audiences=(AUDIENCE,),
                          domains=(IAS_DOMAIN, "accounts.cloud.sap"))
    assert match_issuer(CTX.claims(iss=iss), (config,)) == (config, iss)
    assert match_issuer(CTX.claims(iss="https://custom.example", ias_iss=iss), (config,)) == (config, iss)


@pytest.mark.parametrize("iss", [
    f"https://a.b.{IAS_DOMAIN}",
    f"https://Other.{IAS_DOMAIN}",
    f"https://OTHER.{IAS_DOMAIN.upper()}",
    f"https://other.{IAS_DOMAIN}:443",
    f"https://other.{IAS_DOMAIN}:8443",
    f"https://other.{IAS_DOMAIN}/",
    f"https://other.{IAS_DOMAIN}/path",
    f"https://other.{IAS_DOMAIN}?q",
    f"https://other.{IAS_DOMAIN}#f",
    f"https://user@other.{IAS_DOMAIN}",
    f"https://other%2E{IAS_DOMAIN}",
    f"https://%6Fther.{IAS_DOMAIN}",
    f"https://other.{IAS_DOMAIN}\n",
    f" https://other.{IAS_DOMAIN}",
    f"http://other.{IAS_DOMAIN}",
    f"https://.{IAS_DOMAIN}",
    f"https://-other.{IAS_DOMAIN}",
    f"https://other-.{IAS_DOMAIN}",
    f"https://oth_er.{IAS_DOMAIN}",
    f"https://{'x' * 64}.{IAS_DOMAIN}",
    f"https://{IAS_DOMAIN}",
    f"https://other.{IAS_DOMAIN}.evil",
    f"https://evil{IAS_DOMAIN}",
    "https://other.accounts-ondemand.com",
    "https://other.accountsxondemand.com",
    "https://other.accounts.ondemand.co",
], ids=["two_labels", "uppercase_label", "uppercase_all", "port_443", "port_8443", "trailing_slash", "path",
        "query", "fragment", "userinfo", "percent_dot", "percent_label", "newline", "leading_space", "http",
        "empty_label", "leading_hyphen", "trailing_hyphen", "underscore", "label_64", "bare_domain",
        "suffix_lookalike", "glued_lookalike", "hyphen_for_dot", "regex_dot_wildcard", "truncated_domain"])
def test_multi_tenant_rejects_anything_but_one_lower_case_label(iss: str) -> None:
    with pytest.raises(InvalidToken):
        match_issuer(CTX.claims(iss=iss), ISSUERS)
    with pytest.raises(InvalidToken):
        match_issuer(CTX.claims(iss="https://custom.example", ias_iss=iss), ISSUERS)


def test_issuer_without_domains_matches_exactly_only() -> None:
    single = IssuerConfig(issuer=IAS_ISSUER, audiences=(AUDIENCE,))
    with pytest.raises(InvalidToken):
        match_issuer(CTX.claims(iss=f"https://other.{IAS_DOMAIN}"), (single,))


def test_several_issuers_each_match_their_own_config() -> None:
    xsuaa = IssuerConfig(issuer="https://sub.authentication.eu10.hana.ondemand.com/oauth/token",
                         audiences=("sb-app",), profile="xsuaa")
    claims = CTX.claims(iss=xsuaa.issuer)
    assert match_issuer(claims, (IAS, xsuaa)) == (xsuaa, xsuaa.issuer)
    assert match_issuer(CTX.claims(), (IAS, xsuaa)) == (IAS, IAS_ISSUER)


# --- audience ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("aud", [AUDIENCE, [AUDIENCE], ["other", AUDIENCE], [AUDIENCE, "other"]])
def test_audience_naming_us_is_accepted(aud: Any) -> None:
    assert AUDIENCE in validate(CTX.claims(aud=aud)).audience


def test_audience_matches_any_configured_audience_exactly() -> None:
    config = IssuerConfig(issuer=IAS_ISSUER, audiences=(AUDIENCE, "https://mcp.example.com/mcp"))
    assert validate(CTX.claims(aud="https://mcp.example.com/mcp"), (config,)).audience == ("https://mcp.example.com/mcp",)
    with pytest.raises(InvalidToken):
        validate(CTX.claims(aud="https://mcp.example.com/mcp/"), (config,))


# --- permissions ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("apis", "expected"), [
    (["api_read_access"], {"api_read_access"}),
    (["api_read_access", "principal-propagation"], {"api_read_access"}),
    (["principal-propagation"], set()),
    ([], set()),
    ([""], set()),
], ids=["one", "with_principal_propagation", "only_principal_propagation", "empty", "empty_string"])
def test_ias_apis_map_to_permissions_without_principal_propagation(apis: list[str],
                                                                    expected: set[str]) -> None:
    assert extract_permissions({"ias_apis": apis}, IAS) == expected


def test_absent_ias_apis_means_no_permissions() -> None:
    assert extract_permissions({}, IAS) == frozenset()
    assert validate(CTX.claims(ias_apis=None)).permissions == frozenset()


@pytest.mark.parametrize("apis", ["api_read_access", "api_read_access api_write_access", [1, 2],
                                  ["api_read_access", None], {"a": 1}, 7, True],
                         ids=["string", "space_string", "numbers", "with_null", "object", "number", "bool"])
def test_ias_apis_of_the_wrong_type_is_rejected(apis: Any) -> None:
    with pytest.raises(InvalidToken):
        extract_permissions({"ias_apis": apis}, IAS)


def test_principal_propagation_never_becomes_a_permission_even_through_implication() -> None:
    implies = {"principal-propagation": frozenset({"api_read_access"})}
    token = validate(CTX.claims(ias_apis=["principal-propagation"]), implies=implies)
    assert token.permissions == frozenset()


XSUAA = IssuerConfig(issuer="https://sub.authentication.eu10.hana.ondemand.com/oauth/token",
                     audiences=("sb-mcp-server!t5874",), profile="xsuaa", xsappname="mcp-server!t5874")


@pytest.mark.parametrize("scope", [
    ["mcp-server!t5874.read", "mcp-server!t5874.write", "other!t1.admin", "uaa.resource", "openid",
     "mcp-server!t5874.", "mcp-server!t5874x.admin", "mcp-server!t587.admin", "xmcp-server!t5874.admin"],
    "mcp-server!t5874.read other!t1.admin mcp-server!t5874.write openid",
], ids=["array", "space_separated"])
def test_xsuaa_scopes_lose_the_xsappname_prefix_and_foreign_scopes_are_ignored(scope: Any) -> None:
    assert extract_permissions({"scope": scope}, XSUAA) == {"read", "write"}


@pytest.mark.parametrize("scope", [42, [1], {"read": True}], ids=["number", "numbers", "object"])
def test_xsuaa_scope_of_the_wrong_type_is_rejected(scope: Any) -> None:
    with pytest.raises(InvalidToken):
        extract_permissions({"scope": scope}, XSUAA)


def test_xsuaa_client_and_tenant_come_from_cid_and_zid() -> None:
    claims = CTX.claims(iss=XSUAA.issuer, aud=["sb-mcp-server!t5874"], azp=None, cid="sb-consumer",
                        zid="zone-1", scope=["mcp-server!t5874.read"], ias_apis=None, app_tid=None)
    token = validate(claims, (XSUAA,))
    assert (token.client_id, token.tenant, token.permissions) == ("sb-consumer", "zone-1", {"read"})


ENTRA = IssuerConfig(issuer="https://login.microsoftonline.com/tid-1/v2.0", audiences=("api://mcp",),
                     profile="entra")


@pytest.mark.parametrize(("claims", "expected"), [
    ({"scp": "notes.read notes.write", "roles": ["Notes.Admin"]},
     {"notes.read", "notes.write", "Notes.Admin"}),
    ({"roles": ["Notes.Admin"]}, {"Notes.Admin"}),
    ({"scp": "notes.read"}, {"notes.read"}),
    ({}, set()),
], ids=["scp_and_roles", "roles_only", "scp_only", "none"])
def test_entra_permissions_are_scp_plus_roles(claims: dict[str, Any], expected: set[str]) -> None:
    assert extract_permissions(claims, ENTRA) == expected


@pytest.mark.parametrize("claims", [{"roles": "Notes.Admin"}, {"roles": [1]}, {"scp": 5}],
                         ids=["roles_string", "roles_numbers", "scp_number"])
def test_entra_permission_claims_of_the_wrong_type_are_rejected(claims: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken):
        extract_permissions(claims, ENTRA)


def test_entra_client_and_tenant_come_from_azp_and_tid() -> None:
    claims = CTX.claims(iss=ENTRA.issuer, aud="api://mcp", azp="entra-app", tid="tid-1", scp="notes.read",
                        ias_apis=None, app_tid=None)
    token = validate(claims, (ENTRA,))
    assert (token.client_id, token.tenant, token.permissions) == ("entra-app", "tid-1", {"notes.read"})


GENERIC = IssuerConfig(issuer="https://idp.example.com", audiences=(AUDIENCE,), profile="generic")


@pytest.mark.parametrize(("scope", "expected"), [
    ("a b  c", {"a", "b", "c"}), (["a", "b"], {"a", "b"}), ("", set()),
])
def test_generic_scope_string_is_space_separated(scope: Any, expected: set[str]) -> None:
    assert extract_permissions({"scope": scope}, GENERIC) == expected


def test_generic_scope_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(InvalidToken):
        extract_permissions({"scope": 3}, GENERIC)


# --- implication rules -------------------------------------------------------------------------------

RULES = {
    "api_admin_access": frozenset({"api_write_access"}),
    "api_write_access": frozenset({"api_read_access"}),
}


@pytest.mark.parametrize(("granted", "expected"), [
    ({"api_write_access"}, {"api_write_access", "api_read_access"}),
    ({"api_admin_access"}, {"api_admin_access", "api_write_access", "api_read_access"}),
    ({"api_read_access"}, {"api_read_access"}),
    (set(), set()),
], ids=["write_implies_read", "transitive", "read_implies_nothing", "nothing"])
def test_implication_rules_expand_granted_permissions(granted: set[str], expected: set[str]) -> None:
    assert expand_permissions(granted, RULES) == expected
    claims = CTX.claims(ias_apis=sorted(granted))
    assert validate(claims, implies=RULES).permissions == expected


def test_implication_cycle_terminates() -> None:
    assert expand_permissions({"a"}, {"a": frozenset({"b"}), "b": frozenset({"a"})}) == {"a", "b"}
