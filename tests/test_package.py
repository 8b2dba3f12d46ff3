"""The distribution: installing the project adds the `auth` library (typed, with its CLI) and nothing else.

The example server and its tools run from the checkout (``python -m server``, as on Cloud Foundry),
so a project with its own ``server`` or ``tools`` package can install this one beside it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "auth", "server", "tools")

# find_spec locates a top-level package without importing it (the fresh venv has no dependencies).
PROBE = """
import importlib.util, json, pathlib
spec = lambda name: importlib.util.find_spec(name)
package = pathlib.Path(spec("auth").origin).parent
site = package.parent
print(json.dumps({
    "auth": spec("auth") is not None, "server": spec("server") is not None, "tools": spec("tools") is not None,
    "top_level": sorted(p.name for p in site.iterdir() if p.is_dir() and not p.name.endswith(("-info", "__pycache__"))),
    "py_typed": (package / "py.typed").is_file(),
    "in_venv": str(site).startswith(str(pathlib.Path(__import__("sys").prefix))),
}))
"""


@pytest.mark.timeout(600)
def test_installing_the_project_adds_only_the_typed_auth_package_and_its_console_script(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                    "-w", str(wheels), str(source)], check=True, timeout=300)
    (wheel,) = wheels.glob("*.whl")

    venv = tmp_path / "venv"
    # --no-deps: only what the project itself installs is under test (and nothing is downloaded).
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                    "--force-reinstall", str(wheel)], check=True, timeout=300)

    outside = tmp_path / "elsewhere"  # not the checkout: nothing importable from the working directory
    outside.mkdir()
    result = subprocess.run([str(python), "-I", "-c", PROBE], cwd=outside, capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert (found["auth"], found["server"], found["tools"]) == (True, False, False)
    assert "server" not in found["top_level"] and "tools" not in found["top_level"]
    assert found["py_typed"] and found["in_venv"]
    assert (venv / "bin" / "btp-mcp-auth").is_file()
    assert (venv / "bin" / "btp-mcp-issuer").is_file()  # the local issuer (auth.testing)

    metadata = subprocess.run([str(python), "-I", "-c",
                               "import importlib.metadata as m; d = m.distribution('btp-mcp-oauth');"
                               "print(d.metadata['License-Expression']); print(d.read_text('RECORD'))"],
                              cwd=outside, capture_output=True, text=True, check=True, timeout=120).stdout
    license_expression, record = metadata.split("\n", 1)
    assert license_expression == "Apache-2.0"
    assert "licenses/LICENSE" in record
    assert not any(line.startswith(("server/", "tools/")) for line in record.splitlines())
    assert "auth/testing/__init__.py" in record and "auth/testing/pytest_plugin.py" in record
    assert "auth/downstream/__init__.py" in record and "auth/downstream/_destination.py" in record  # onward calls
