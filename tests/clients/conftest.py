"""Fixtures for the third-party client tests: one dev server per module, tokens over HTTP.

Every client here talks to what ``python -m server --dev`` builds, served by uvicorn on
127.0.0.1; tokens come from the embedded issuer's token endpoint. Clients that run on this
project's ``mcp`` 2.x (the `mcp` SDK, FastMCP, the OpenAI Agents SDK) are installed by the test
extra and run in-process; ``langchain-mcp-adapters`` needs ``mcp<2`` and runs in its own
environment (`tests._venvs`); the Node clients come from `tests._node`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.server.conftest import ALL_TOOLS, READ_TOOLS, DevServer, dev_server
from tools import SINGLE_TENANT

__all__ = ["ALL_TOOLS", "READ_TOOLS", "REFUSAL", "leaf_errors", "titles_in_store", "unique"]

REFUSAL = "Tool create_note needs permission api_write_access, which the access token does not grant"
"""What the server says when a read-only token calls ``create_note`` (403 ``error_description``)."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups: what a user finally reads."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


def titles_in_store(srv: DevServer, marker: str) -> list[str]:
    return [n.title for n in srv.app.store.sync.search(SINGLE_TENANT, marker, limit=100)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One dev server per test module (tests use distinct note titles, never counts)."""
    with dev_server(tmp_path_factory.mktemp("notes") / "notes.db") as srv:
        yield srv
