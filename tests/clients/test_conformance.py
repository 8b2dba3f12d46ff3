"""The official MCP conformance suite's server scenarios that apply to a tools-only server.

The suite's client cannot send a bearer token, so the server under test is the dev app behind a
thin ASGI shim that adds ``Authorization: Bearer <dev-full token>`` to each request: the token
is real (from the dev issuer) and goes through the whole auth layer. Scenarios left out need
resources, prompts, completions or the suite's own test tools (``test_simple_text`` ...), which
a notes server does not have.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._live import running_server
from tests.server.conftest import DevServer, build_dev_app

from ._npm import conformance_cmd

TOOLS_ONLY = ("server-initialize", "ping", "tools-list", "logging-set-level", "dns-rebinding-protection")

pytestmark = pytest.mark.timeout(120, func_only=True)


@pytest.fixture(scope="module")
def suite() -> tuple[str, ...]:
    return conformance_cmd()


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    built: list[DevServer] = []
    token: list[bytes] = []

    def factory(base_url: str) -> Any:
        built.append(build_dev_app(base_url, tmp_path_factory.mktemp("notes") / "notes.db"))

        async def with_token(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and token and scope["path"].startswith("/mcp"):
                scope = dict(scope, headers=[*scope["headers"], (b"authorization", b"Bearer " + token[0])])
            await built[0].app(scope, receive, send)

        return with_token

    with running_server(factory=factory, lifespan="on") as base_url:
        token.append(built[0].token("dev-full").encode())
        yield base_url + "/mcp"


@pytest.mark.parametrize("scenario", TOOLS_ONLY)
def test_conformance_scenario_passes(suite: tuple[str, ...], mcp_url: str, scenario: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*suite, "server", "--url", mcp_url, "--scenario", scenario, "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert " 0 failed" in report, report
    assert "Passed: 0/" not in report, report
