"""Fixtures for the third-party client tests: one dev server per module, tokens over HTTP.

Every client here talks to what ``python -m server --dev`` builds, served by uvicorn on
127.0.0.1; tokens come from the embedded issuer's token endpoint. The clients that need their own
Python environment run in a child process (`tests._venvs`), the Node ones through `tests._node`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.server.conftest import READ_TOOLS, DevServer, dev_server

__all__ = ["READ_TOOLS", "unique"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One dev server per test module (tests use distinct note titles, never counts)."""
    with dev_server(tmp_path_factory.mktemp("notes") / "notes.db") as srv:
        yield srv
