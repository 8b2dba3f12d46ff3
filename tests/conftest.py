"""Fixtures shared by every test package: the throw-away PostgreSQL server (started on first use)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._postgres import PostgresServer, running_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run, on 127.0.0.1 and a free port; stopped at the end."""
    with running_postgres() as server:
        yield server
