"""Live key servers shared by the auth tests (module-scoped: one pair per test module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._idp import IdP, running_idp

from ._cases import OTHER_KEY
from ._support import idp_key


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    """The trusted issuer's discovery and JWKS, served by a real uvicorn server."""
    with running_idp(keys=[idp_key()]) as server:
        yield server


@pytest.fixture(scope="module")
def attacker() -> Iterator[IdP]:
    """A second, counting server standing in for the attacker's key endpoint."""
    with running_idp(keys=[idp_key(OTHER_KEY)]) as server:
        yield server
