"""The bounded load test (bench/load.py) at CI size: 100 clients, 1500 requests, with and without a restart.

Each run starts ``python -m server`` in production mode against a local IAS look-alike, stops
by itself at its time limit, and must end with no wrong decision, no 5xx and no lost write.
Speed is printed by the script, never asserted here.
"""

from __future__ import annotations

import httpx
import pytest

from bench.load import (
    ALLOW,
    BARE,
    INVALID,
    SCOPE,
    Call,
    LoadConfig,
    LoadReport,
    _judge,
    _Run,
    expected_decision,
    observed_decision,
    render,
    run,
)

CI_SIZE = LoadConfig(clients=100, requests=1500, time_limit_s=60.0)
TOKEN_KINDS = {"full", "read", "none", "expired", "missing", "forged:other-key", "forged:unknown-kid",
               "forged:wrong-issuer", "forged:wrong-audience", "forged:tampered", "forged:alg-none"}


def assert_clean(report: LoadReport, config: LoadConfig) -> None:
    text = render(report)
    assert report.wrong_decisions == 0, text
    assert report.server_errors == 0, text
    assert report.tool_errors == 0, text
    assert report.missing_writes == 0, text
    assert report.denied_writes_applied == 0, text
    assert report.server_log_errors == 0, text
    assert report.tokens_in_log == 0, text
    assert report.final_exit_code == 0, text
    # Generous: a loaded machine may not get through every request before the time limit.
    assert report.served >= report.requests // 2, text
    assert report.acked_creates > 0 and report.acked_updates > 0, text
    assert {key.split(" ")[0] for key in report.decisions} == TOKEN_KINDS, text
    assert report.load_seconds <= config.time_limit_s + 5, text  # it stopped by itself


@pytest.mark.timeout(240)
def test_load_run_makes_no_wrong_decision_no_5xx_and_loses_no_write() -> None:
    report = run(CI_SIZE)
    assert_clean(report, CI_SIZE)
    # Nothing restarts here: a dropped connection is at most HTTP/1.1's keep-alive race (RFC 9112 §9.3.1).
    assert report.connection_errors <= report.requests // 20 and report.timeouts == 0, render(report)


@pytest.mark.timeout(240)
def test_load_run_with_sigterm_restart_midway_loses_no_acknowledged_write() -> None:
    config = LoadConfig(clients=100, requests=1500, time_limit_s=90.0, restart=True)  # a restart costs seconds
    report = run(config)
    assert_clean(report, config)
    assert report.restart_exit_code == 0, render(report)
    assert report.restart_gap_s is not None and report.answered_after_restart, render(report)


# --- the classifier itself: it must be able to fail -------------------------------------------


@pytest.mark.parametrize(("persona", "tool", "decision"), [
    ("full", "create_note", ALLOW), ("full", "get_note", ALLOW),
    ("read", "search_notes", ALLOW), ("read", "update_note", SCOPE), ("read", "whoami", ALLOW),
    ("none", "list_notes", SCOPE), ("none", "create_note", SCOPE), ("none", "whoami", ALLOW),
    ("expired", "whoami", INVALID), ("forged", "list_notes", INVALID), ("missing", "get_note", BARE),
])
def test_expected_decision_follows_the_permission_matrix(persona: str, tool: str, decision: str) -> None:
    assert expected_decision(persona, tool) == decision


def test_observed_decision_tells_a_bare_challenge_from_invalid_token() -> None:
    meta = 'resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource/mcp"'
    assert observed_decision(401, f"Bearer {meta}") == BARE
    assert observed_decision(401, f'Bearer error="invalid_token", {meta}') == INVALID
    assert observed_decision(403, f'Bearer error="insufficient_scope", scope="api_write_access", {meta}') == SCOPE
    assert observed_decision(401, None) == "401 (no Bearer challenge)"
    assert observed_decision(401, f'Bearer {meta}, x_error="invalid_token"') == BARE
    assert observed_decision(503, None) == "503"


def _judged(persona: str, call: Call, response: httpx.Response) -> LoadReport:
    state = _Run(CI_SIZE, "http://127.0.0.1:1", None, [])  # type: ignore[arg-type]
    expect = expected_decision(persona, call.tool)
    seen = observed_decision(response.status_code, response.headers.get("www-authenticate"))
    _judge(state, persona, call, expect, seen, response, [])
    return state.report


def test_read_only_token_allowed_to_write_counts_as_a_wrong_decision() -> None:
    ok = httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": {
        "content": [], "structuredContent": {"id": 1}, "isError": False}})
    report = _judged("read", Call("create_note", {"title": "t", "body": ""}), ok)
    assert report.wrong_decisions == 1 and report.acked_creates == 0


def test_5xx_and_tool_errors_are_counted_apart_from_wrong_decisions() -> None:
    assert _judged("full", Call("list_notes", {}), httpx.Response(503)).server_errors == 1
    failed = httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": True}})
    report = _judged("full", Call("list_notes", {}), failed)
    assert report.tool_errors == 1 and report.wrong_decisions == 0


def test_whoami_naming_another_client_counts_as_a_wrong_decision() -> None:
    other = httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": False,
        "structuredContent": {"client_id": "load-full", "permissions": ["api_read_access", "api_write_access"]}}})
    assert _judged("read", Call("whoami", {}), other).wrong_decisions == 1
    assert _judged("full", Call("whoami", {}), other).wrong_decisions == 0

