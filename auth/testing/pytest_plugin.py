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

import importlib
from collections.abc import Iterator
from typing import Any

from ._issuer import Issuer
from ._server import LocalIssuer

__all__ = ["local_issuer", "local_issuer_options"]

# Imported by name: pytest is not a dependency of ``auth``, and ``mypy --strict auth`` must pass
# without it; this module is only ever imported by pytest itself.
_pytest: Any = importlib.import_module("pytest")


def _local_issuer_options() -> dict[str, Any]:
    """Keyword arguments for `LocalIssuer`; override this fixture to configure the issuer."""
    return {}


def _local_issuer(local_issuer_options: dict[str, Any]) -> Iterator[Issuer]:
    """A running local issuer for the session (``.mint()``, ``.settings()``, ``.token_endpoint``)."""
    with LocalIssuer(**local_issuer_options) as issuer:
        yield issuer


local_issuer_options: Any = _pytest.fixture(scope="session", name="local_issuer_options")(_local_issuer_options)
local_issuer: Any = _pytest.fixture(scope="session", name="local_issuer")(_local_issuer)
