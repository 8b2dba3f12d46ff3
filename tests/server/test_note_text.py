"""Issue 15 item 5: NUL characters and lone surrogates in a title, body or search query.

PostgreSQL cannot store either (``DataError``, ``UnicodeEncodeError``: "Error executing tool" and a
traceback per call, which a read token could cause through ``search_notes``); SQLite stored NUL.
Both back ends now refuse them with the same tool error, through a real server over HTTP. A lone
surrogate only reaches a tool on 2026-07-28 framing: on 2025-11-25 the SDK's parser (which the
gate and the endpoint use for that framing, item 4) refuses the body with a JSON-RPC parse error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._postgres import PostgresServer

from .conftest import LEGACY_HEADERS, DevServer, dev_server, modern_headers, tool_call

pytestmark = pytest.mark.timeout(90)

BAD = {"nul": "before\x00after", "high surrogate": "before\ud800after", "low surrogate": "\udfff"}


@pytest.fixture(params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DevServer]:
    env = {}
    if request.param == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres")
        env["MCP_NOTES_DB"] = pg.url(pg.new_database())
    with dev_server(tmp_path / "notes.db", env=env) as srv:
        yield srv


def _post(srv: DevServer, token: str, tool: str, arguments: dict[str, Any], *, modern: bool) -> Any:
    body = json.dumps(tool_call(tool, arguments, modern=modern))  # lone surrogates leave as \ud800 escapes
    headers = modern_headers(tool) if modern else LEGACY_HEADERS
    return srv.rpc(token, None, headers, raw=body.encode("ascii"))


def _call(srv: DevServer, token: str, tool: str, arguments: dict[str, Any], *, modern: bool) -> dict[str, Any]:
    response = _post(srv, token, tool, arguments, modern=modern)
    assert response.status_code == 200, response.text
    return response.json()["result"]


@pytest.mark.parametrize("kind", list(BAD))
def test_unstorable_text_is_a_clear_tool_error_on_both_back_ends(
    served: DevServer, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = BAD[kind]
    full, read = served.token("dev-full"), served.token("dev-read")
    created = _call(served, full, "create_note", {"title": "a fine note", "body": "fine"}, modern=False)
    note_id = created["structuredContent"]["id"]
    attempts = [
        (full, "create_note", {"title": bad}, "title"),
        (full, "create_note", {"title": "t", "body": bad}, "body"),
        (full, "update_note", {"note_id": note_id, "title": bad, "body": ""}, "title"),
        (full, "update_note", {"note_id": note_id, "title": "t", "body": bad}, "body"),
        (read, "search_notes", {"query": bad}, "query"),  # a read token is enough to try
    ]
    for n, (token, tool, arguments, field) in enumerate(attempts):
        modern = n % 2 == 1 or kind != "nul"  # both protocol generations where the body parses on both
        result = _call(served, token, tool, arguments, modern=modern)
        assert result["isError"] is True, result
        assert result["content"][0]["text"] == (
            f"Error executing tool {tool}: {field} must not contain NUL characters or unpaired surrogates")
    if kind != "nul":  # 2025-11-25: the SDK's own parser refuses the body, no tool runs
        refused = _post(served, full, "create_note", {"title": bad}, modern=False)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == -32700, refused.text
    listed = _call(served, read, "list_notes", {"limit": 100}, modern=False)["structuredContent"]["notes"]
    assert [(n["id"], n["title"], n["body"]) for n in listed] == [(note_id, "a fine note", "fine")]
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
