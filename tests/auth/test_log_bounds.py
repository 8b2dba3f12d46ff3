"""Strings from a request reach the log cut short and marked as cut (issue 15, item 7).

An unverified 5 KB ``iss`` is quoted in the denial reason; a valid token can name a tool with a
million characters. Served by real uvicorn in this process, so caplog sees what the auth layer
logs; each line stays under a bound and says how much was cut.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from auth import JWTVerifier
from auth._sdk import verify_token
from auth.mcp import protect
from tests._idp import IdP
from tests._live import running_server

from ._cases import AUDIENCE
from ._guarded import error_code, forged_token
from ._support import issuer_config, settings_for
from .test_prefix import HEADERS, notes_server

pytestmark = pytest.mark.timeout(60)

READ = "api_read_access"
BOUND = 1000  # characters of one log line, whatever the request held
HUGE_ISS = "https://" + "a" * 5000 + ".example"


@pytest.fixture(scope="module")
def served(idp: IdP) -> Iterator[str]:
    def factory(base_url: str) -> Any:
        resource = base_url + "/mcp"
        settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE, resource)), resource_url=resource)
        return protect(notes_server(), settings)

    with running_server(factory=factory, lifespan="on") as base_url:
        yield base_url + "/mcp"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="auth")
    caplog.set_level(logging.INFO, logger="audit")
    return caplog


def test_a_forged_token_with_a_5kb_issuer_writes_a_bounded_denial_line(
    served: str, logs: pytest.LogCaptureFixture
) -> None:
    token = forged_token(HUGE_ISS)
    assert len(token) < 8192  # under the token size cap: it reaches the claim checks
    response = httpx.post(served, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                          headers=HEADERS | {"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"
    denials = [r.getMessage() for r in logs.records if r.name == "auth" and "auth denied" in r.getMessage()]
    assert len(denials) == 1
    assert "untrusted issuer 'https://aaaa" in denials[0]
    assert "…[+" in denials[0]  # marked as cut
    assert len(denials[0]) < BOUND


async def test_the_sdk_token_verifier_logs_a_bounded_reason(idp: IdP, logs: pytest.LogCaptureFixture) -> None:
    settings = settings_for(issuer_config(idp.issuer, audiences=(AUDIENCE,)))
    verifier = JWTVerifier(settings)
    try:
        assert await verify_token(verifier, forged_token(HUGE_ISS), resource=settings.resource_url) is None
    finally:
        await verifier.aclose()
    refusals = [r.getMessage() for r in logs.records if "verify_token refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "…[+" in refusals[0]
    assert len(refusals[0]) < BOUND


def test_a_million_character_tool_name_writes_a_bounded_audit_line(
    served: str, idp: IdP, logs: pytest.LogCaptureFixture
) -> None:
    """A read token calls a write tool and, in the same batch, a tool with a 1,000,000-character name."""
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "archive", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x" * 1_000_000, "arguments": {}}},
    ]
    response = httpx.post(served, content=json.dumps(batch), timeout=20, headers=HEADERS | {
        "Authorization": f"Bearer {idp.mint(ias_apis=[READ])}", "Content-Type": "application/json"})
    assert response.status_code == 403
    assert error_code(response) == "insufficient_scope"
    lines = [r for r in logs.records if r.name == "audit"]
    assert len(lines) == 1
    fields = lines[0].audit  # type: ignore[attr-defined]
    assert fields["decision"] == "denied" and fields["status"] == 403
    assert fields["tool"].startswith("archive,xxxx") and fields["tool"].endswith(" chars]")
    assert len(json.dumps(fields)) < BOUND
