"""Write requirements.txt (what the Cloud Foundry buildpack reads) from pyproject.toml's [tool.deploy] pins.

pyproject.toml declares version ranges (the `auth` package is installed beside other code); the
deployment installs exact versions, listed once in [tool.deploy].pins. tests/test_deploy.py checks
that every pin satisfies its range and that every runtime dependency is pinned.
"""

import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = "# Generated from pyproject.toml [tool.deploy].pins by `python .ci/gen_requirements.py`; do not edit.\n"


def pins() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["deploy"]["pins"])


def render() -> str:
    return HEADER + "".join(f"{pin}\n" for pin in pins())


if __name__ == "__main__":
    target = ROOT / "requirements.txt"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())
