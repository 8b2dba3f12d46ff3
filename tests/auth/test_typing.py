"""`auth` is typed for its users: ``py.typed`` ships and ``mypy --strict auth`` is clean (CI runs it here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import auth

ROOT = Path(__file__).resolve().parents[2]


def test_auth_ships_py_typed() -> None:
    assert (Path(auth.__file__).parent / "py.typed").is_file()


@pytest.mark.timeout(600)
def test_mypy_strict_is_clean_on_auth() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir=/dev/null", "auth"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=540,
    )
    assert result.returncode == 0, result.stdout + result.stderr
