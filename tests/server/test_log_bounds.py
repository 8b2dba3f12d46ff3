"""The server's log lines stay short whatever a request holds (issue 15, item 7).

``python -m server --dev`` runs as a process; its stderr (the JSON log and the audit lines) is
read back. A 5 KB unverified ``iss`` and a 1,000,000-character tool name each reach the log cut
to a few hundred characters and marked as cut.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from .conftest import LEGACY_HEADERS, tool_call
from .test_dev_mode import DevProcess, dev_processes

pytestmark = pytest.mark.timeout(120)

BOUND = 1000  # characters of one log line
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **LEGACY_HEADERS}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    with dev_processes(tmp_path_factory.mktemp("bounds")) as (process,):
        yield process


def json_lines(process: DevProcess, needle: str, count: int) -> list[dict[str, object]]:
    """The JSON log lines of ``process`` containing ``needle``, once ``count`` of them were written;
    every line the process wrote is checked against the bound on the way."""
    deadline = time.monotonic() + 10
    while process.output().count(needle) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    output = process.output()
    longest = max(output.splitlines(), key=len)
    assert len(longest) < BOUND, longest[:300]  # no line at all (the SDK's, uvicorn's, ours) is long
    return [json.loads(line) for line in output.splitlines() if line.startswith("{") and needle in line]


def test_a_forged_token_with_a_5kb_issuer_writes_a_bounded_denial_line(dev: DevProcess) -> None:
    now = int(time.time())
    forger = RSAKey.generate_key(2048, parameters={"kid": "forged"})
    claims = {"iss": "https://" + "i" * 5000 + ".example", "sub": "x", "aud": ["x"], "iat": now, "exp": now + 600}
    token = jwt.encode({"alg": "RS256", "kid": "forged", "typ": "JWT"}, claims, forger, algorithms=["RS256"])
    response = httpx.post(dev.base_url + "/mcp", content=json.dumps(tool_call("whoami", {}, modern=False)),
                          headers=HEADERS | {"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    (line,) = json_lines(dev, "untrusted issuer", 1)
    text = json.dumps(line)
    assert "…[+" in str(line["msg"]) and len(text) < BOUND


def test_a_million_character_tool_name_writes_a_bounded_audit_line(dev: DevProcess) -> None:
    name = "t" * 1_000_000
    full = dev.token("dev-full", "dev-full-secret")
    response = httpx.post(dev.base_url + "/mcp", content=json.dumps(tool_call(name, {}, modern=False)),
                          headers=HEADERS | {"Authorization": f"Bearer {full}"}, timeout=20)
    assert response.status_code == 200  # an unknown tool: the SDK's answer, inside HTTP 200
    reply = response.json()
    assert "error" in reply or reply["result"]["isError"] is True
    (line,) = json_lines(dev, '"tool": "tttt', 1)
    assert line["logger"] == "audit" and line["client_id"] == "dev-full"
    assert str(line["tool"]).endswith(f"…[+{1_000_000 - 200} chars]")
    assert len(json.dumps(line)) < BOUND


def test_a_denied_batch_naming_a_million_character_tool_writes_a_bounded_audit_line(dev: DevProcess) -> None:
    read = dev.token("dev-read", "dev-read-secret")
    batch = [tool_call("create_note", {"title": "x"}, modern=False, id=1),
             tool_call("n" * 1_000_000, {}, modern=False, id=2)]
    response = httpx.post(dev.base_url + "/mcp", content=json.dumps(batch),
                          headers=HEADERS | {"Authorization": f"Bearer {read}"}, timeout=20)
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    (line,) = json_lines(dev, '"tool": "create_note,nnnn', 1)
    assert line["decision"] == "denied" and str(line["tool"]).endswith(" chars]")
    assert len(json.dumps(line)) < BOUND

