"""``langchain-mcp-adapters`` against the dev server, in its own environment (it requires ``mcp<2``).

The environment is built once per machine by `tests._venvs` (about a minute the first time) and
reused. The client script `_langchain_client.py` runs there; the server runs here. What a
LangChain user sees, recorded below: a refused call surfaces as httpx's bare
``Client error '403 Forbidden'`` (the ``mcp`` 1.x transport raises on any 4xx before reading the
body, and the session ends), a bad token as ``Client error '401 Unauthorized'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests._venvs import LANGCHAIN_REQUIREMENTS, REPO_ROOT, Venv, ensure_venv
from tests.server.conftest import DevServer

from .conftest import ALL_TOOLS, READ_TOOLS, titles_in_store, unique

pytestmark = pytest.mark.timeout(120, func_only=True)  # the first install runs in a fixture, outside it

SCRIPT = Path(__file__).with_name("_langchain_client.py")


@pytest.fixture(scope="module")
def venv() -> Venv:
    return ensure_venv("langchain", LANGCHAIN_REQUIREMENTS)


@pytest.fixture(scope="module")
def observed(venv: Venv, served: DevServer) -> dict[str, Any]:
    title = unique("langchain")
    proc = venv.run(SCRIPT, [served.mcp_url, served.issuer.token_endpoint, title],
                    env={"PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"title": title, **json.loads(proc.stdout)}


def test_environment_really_has_mcp_1_and_the_newest_adapters(venv: Venv) -> None:
    proc = venv.run("-c", ["from importlib.metadata import version as v; print(v('mcp'), v('langchain-mcp-adapters'))"])
    assert proc.stdout.split() == ["1.30.0", "0.3.2"], proc.stderr


def test_langchain_read_token_lists_only_read_tools_and_calls_one(observed: dict[str, Any]) -> None:
    assert set(observed["read_tools"]) == READ_TOOLS
    assert isinstance(json.loads(observed["read_call"][0]["text"])["notes"], list)


def test_langchain_refused_write_reads_as_a_bare_403_and_writes_nothing(
    observed: dict[str, Any], served: DevServer
) -> None:
    assert [e["type"] for e in observed["refusal"]] == ["httpx.HTTPStatusError"]
    assert observed["refusal"][0]["message"].startswith("Client error '403 Forbidden' for url")
    assert titles_in_store(served, observed["title"]) == [observed["title"] + "-full"]


def test_langchain_with_the_providers_httpx_auth_writes(observed: dict[str, Any], served: DevServer) -> None:
    assert set(observed["full_tools"]) == ALL_TOOLS
    note = json.loads(observed["full_call"][0]["text"])
    assert note["title"] == observed["title"] + "-full" and note["created_by"] == "dev-full"


def test_langchain_bad_token_reads_as_a_bare_401(observed: dict[str, Any]) -> None:
    assert [e["type"] for e in observed["bad_token"]] == ["httpx.HTTPStatusError"]
    assert observed["bad_token"][0]["message"].startswith("Client error '401 Unauthorized' for url")
