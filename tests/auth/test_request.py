"""The pure readings of a request (``auth._request``): route path, CORS preflight, log clipping."""

from __future__ import annotations

import pytest
from starlette._utils import get_route_path

from auth._request import CLIP, clip, is_preflight, route_path


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/mcp", "", "/mcp"),
        ("/notes/mcp", "/notes", "/mcp"),
        ("/notes/mcp/", "/notes", "/mcp/"),
        ("/notes", "/notes", ""),
        ("/notes/", "/notes", "/"),
        ("/notesmcp", "/notes", "/notesmcp"),  # not under the prefix: the whole path, as Starlette
        ("/other/mcp", "/notes", "/other/mcp"),
        ("/a/b/mcp", "/a/b", "/mcp"),
        ("/a/b/mcp", "/a", "/b/mcp"),
        ("/mcp", "/mcp", ""),
        ("/notes//mcp", "/notes", "//mcp"),
    ],
)
def test_route_path_is_what_starlette_routes_on(path: str, root_path: str, expected: str) -> None:
    scope = {"type": "http", "path": path, "root_path": root_path}
    assert route_path(scope) == expected == get_route_path(scope)  # type: ignore[arg-type]


def test_route_path_without_root_path_key() -> None:
    assert route_path({"type": "http", "path": "/mcp"}) == "/mcp"


PREFLIGHT = [(b"origin", b"https://app.example"), (b"access-control-request-method", b"POST")]


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("OPTIONS", PREFLIGHT, True),
        ("OPTIONS", [*PREFLIGHT, (b"content-length", b"0")], True),
        ("OPTIONS", [*PREFLIGHT, (b"access-control-request-headers", b"authorization")], True),
        ("OPTIONS", [], False),  # a bare OPTIONS is an ordinary request
        ("OPTIONS", PREFLIGHT[:1], False),  # Origin alone
        ("OPTIONS", PREFLIGHT[1:], False),  # no Origin
        ("OPTIONS", [*PREFLIGHT, (b"content-length", b"5")], False),  # a body
        ("OPTIONS", [*PREFLIGHT, (b"content-length", b"00")], False),  # only exactly 0 is no body
        ("OPTIONS", [*PREFLIGHT, (b"content-length", b"0"), (b"content-length", b"7")], False),
        ("OPTIONS", [*PREFLIGHT, (b"transfer-encoding", b"chunked")], False),
        ("POST", PREFLIGHT, False),
        ("GET", PREFLIGHT, False),
    ],
)
def test_only_a_real_cors_preflight_is_one(method: str, headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert is_preflight({"type": "http", "method": method, "headers": headers}) is expected


def test_a_websocket_is_never_a_preflight() -> None:
    assert not is_preflight({"type": "websocket", "headers": PREFLIGHT})


@pytest.mark.parametrize("text", ["", "short", "x" * CLIP])
def test_clip_leaves_a_short_string_alone(text: str) -> None:
    assert clip(text) is text


@pytest.mark.parametrize(("length", "limit"), [(CLIP + 1, CLIP), (5000, CLIP), (1_000_000, CLIP), (50, 10)])
def test_clip_cuts_a_long_string_and_says_so(length: int, limit: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(length))
    clipped = clip(text, limit)
    assert clipped == text[:limit] + f"…[+{length - limit} chars]"
    assert len(clipped) < limit + 30


def test_clip_default_is_a_few_hundred_characters() -> None:
    assert 100 <= CLIP <= 500
    assert len(clip("é" * 10_000)) < 2 * CLIP

