"""`auth` is typed for its users: ``py.typed`` ships and ``mypy --strict`` is clean (CI runs it here).

Twice: on the checkout, in this environment (every extra installed, ``fastmcp`` included), and on
the installed package in an environment holding only what ``pip install <repo>`` brings plus mypy,
where ``fastmcp`` and ``fastapi`` (optional integrations) are absent (issue 16, item 8: the FastMCP
and FastAPI modules failed there with import-not-found and "subclass of Any").
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import auth
from tests._venvs import ensure_venv

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "auth")


def test_auth_ships_py_typed() -> None:
    assert (Path(auth.__file__).parent / "py.typed").is_file()


@pytest.mark.timeout(600)
def test_mypy_strict_is_clean_on_auth() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir=/dev/null", "auth"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=540,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def typing_requirements() -> tuple[str, ...]:
    """The project's required dependencies (its ranges) and the pinned mypy of the test extra (pure)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    mypy = [r for r in project["optional-dependencies"]["test"] if r.startswith("mypy==")]
    return (*project["dependencies"], *mypy)


PROBE = ("import importlib.util as u; "
         "print(u.find_spec('fastmcp') is None and u.find_spec('fastapi') is None, u.find_spec('auth').origin)")


@pytest.mark.timeout(900)
def test_mypy_strict_is_clean_on_the_installed_package_with_only_its_required_dependencies(tmp_path: Path) -> None:
    requirements = typing_requirements()
    assert not any(r.startswith(("fastmcp", "fastapi")) for r in requirements)
    venv = ensure_venv("typing", requirements)  # built once per machine (per pin set), then reused

    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                    "-w", str(wheels), str(source)], check=True, timeout=300, capture_output=True)
    (wheel,) = wheels.glob("*.whl")

    outside = tmp_path / "elsewhere"  # not the checkout: only the installed package is found
    outside.mkdir()
    python = str(venv.python)
    with open(venv.path / ".install.lock", "w") as lock:  # the venv is shared; this package is reinstalled
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                        "--disable-pip-version-check", str(wheel)], check=True, timeout=300, capture_output=True)
        check = subprocess.run([python, "-m", "pip", "check", "--disable-pip-version-check"],
                               capture_output=True, text=True, timeout=120, check=False)
        assert check.returncode == 0, check.stdout + check.stderr  # what `pip install <repo>` needs is there
        probe = subprocess.run([python, "-I", "-c", PROBE], cwd=outside, capture_output=True, text=True,
                               check=True, timeout=60).stdout.split()
        assert probe[0] == "True"  # neither fastmcp nor fastapi is installed
        assert probe[1].startswith(str(venv.path))  # the installed copy, not the checkout
        result = subprocess.run(
            [python, "-m", "mypy", "--strict", "--cache-dir", str(venv.path / ".mypy_cache"), "-p", "auth"],
            cwd=outside, capture_output=True, text=True, check=False, timeout=600,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout
