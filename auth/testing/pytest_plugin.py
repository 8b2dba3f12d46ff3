"""pytest fixtures for the local issuer; enable them in a ``conftest.py``::

    pytest_plugins = ["auth.testing.pytest_plugin"]

    @pytest.fixture(scope="session")
    def local_issuer_options():                       # optional: how the issuer is built
        return {"audiences": ["my-api"], "clients": [RegisteredClient("agent", "pw", ("api_read_access",))]}

    def test_read_only_token_cannot_write(local_issuer):
        token = local_issuer.mint("dev-read")
        ...

``local_issuer`` is an `Issuer` served on 127.0.0.1 (a free port) for the whole session, with a
fresh key; ``local_issuer_options`` holds `LocalIssuer`'s keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ._issuer import Issuer
from ._server import LocalIssuer

__all__ = ["local_issuer", "local_issuer_options"]


@pytest.fixture(scope="session")
def local_issuer_options() -> dict[str, Any]:
    """Keyword arguments for `LocalIssuer`; override this fixture to configure the issuer."""
    return {}


@pytest.fixture(scope="session")
def local_issuer(local_issuer_options: dict[str, Any]) -> Iterator[Issuer]:
    """A running local issuer for the session (``.mint()``, ``.settings()``, ``.token_endpoint``)."""
    with LocalIssuer(**local_issuer_options) as issuer:
        yield issuer
