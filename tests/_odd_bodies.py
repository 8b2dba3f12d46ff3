"""JSON-RPC bodies the MCP SDK's two parsers disagree on, and the outcome of a request as tests compare it.

The SDK parses a 2025-11-25 body with pydantic_core and a 2026-07-28 body with ``json.loads``:
lone surrogates (escaped or UTF-8-encoded), UTF-16/UTF-32 and BOM-prefixed bodies, NaN and
infinities, nesting deeper than pydantic_core's limit of 200 are taken by one and refused by
the other. Each variant is a byte-level edit of one well-formed ``tools/call``::

    for case, raw in odd_bodies(call).items(): ...   # call: a dict with "id": 1 and params.name
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = ["odd_bodies", "outcome", "LONE"]

LONE = "\\ud800"  # a lone surrogate's JSON escape, as it appears in the body


def odd_bodies(call: dict[str, Any]) -> dict[str, bytes]:
    """Case name -> body, for ``call`` (a ``tools/call`` with ``"id": 1`` and arguments)."""
    plain = json.dumps(call)
    name = json.dumps(call["params"]["name"])
    assert plain.count('"id": 1') == 1 and plain.count(name) == 1 and plain.count('"arguments": {') == 1
    with_x = plain.replace('"arguments": {', '"arguments": {"x": 0, ')
    return {
        "well_formed": plain.encode(),
        "surrogate_in_id": plain.replace('"id": 1', f'"id": "{LONE}"').encode(),
        "surrogate_in_method": plain.replace('"tools/call"', f'"tools/call{LONE}"').encode(),
        "surrogate_in_tool_name": plain.replace(name, f'{name[:-1]}{LONE}"').encode(),
        "utf8_encoded_surrogate_in_id": plain.encode().replace(b'"id": 1', b'"id": "\xed\xa0\x80"'),
        "utf16_body": plain.encode("utf-16"),
        "utf32_body": plain.encode("utf-32"),
        "bom_body": b"\xef\xbb\xbf" + plain.encode(),
        "nan_in_id": plain.replace('"id": 1', '"id": NaN').encode(),
        "infinity_in_id": plain.replace('"id": 1', '"id": Infinity').encode(),
        "nan_argument": with_x.replace('"x": 0', '"x": NaN').encode(),
        "infinity_argument": with_x.replace('"x": 0', '"x": -Infinity').encode(),
        "nesting_deeper_than_pydantic_core": with_x.replace('"x": 0', '"x": ' + "[" * 300 + "]" * 300).encode(),
    }


def _not_json(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def outcome(response: httpx.Response) -> tuple[int, object]:
    """HTTP status and error code: the JSON-RPC error's code, an OAuth error's code, "result" for a
    result, None for no body, "not JSON" for a body only a lenient parser reads (NaN and the like)."""
    if not response.content:
        return response.status_code, None
    try:
        body = json.loads(response.content, parse_constant=_not_json)
    except ValueError:
        return response.status_code, "not JSON"
    if not isinstance(body, dict):
        return response.status_code, type(body).__name__
    error = body.get("error")
    return response.status_code, error["code"] if isinstance(error, dict) else error or (
        "result" if "result" in body else None)
