"""Write requirements.txt (what the Cloud Foundry buildpack reads) from pyproject.toml's pins."""

import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = "# Generated from pyproject.toml by `python .ci/gen_requirements.py`; do not edit.\n"


def render() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return HEADER + "".join(f"{d}\n" for d in deps)


if __name__ == "__main__":
    target = ROOT / "requirements.txt"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())
