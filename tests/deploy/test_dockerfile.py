"""The Dockerfile and .dockerignore as text: what holds even where the image cannot be built (no root)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_default_base_is_the_python_runtime_txt_names() -> None:
    base = re.search(r"^ARG BASE_IMAGE=python:(\d+\.\d+)-slim", DOCKERFILE, re.MULTILINE)
    runtime = (ROOT / "runtime.txt").read_text().strip()  # python-3.11.x
    assert base and runtime.startswith(f"python-{base.group(1)}.")


def test_two_stages_and_the_final_one_runs_as_a_numeric_non_root_user() -> None:
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", DOCKERFILE, re.MULTILINE)
    assert stages == [("${BASE_IMAGE}", "build"), ("${BASE_IMAGE}", "")]
    final = DOCKERFILE.split("\nFROM ${BASE_IMAGE}\n", 1)[1]
    assert "pip install" not in final and "apt-get" not in final  # nothing is built in the final stage
    user = re.search(r"^USER (\d+):(\d+)$", final, re.MULTILINE)
    assert user and int(user.group(1)) > 0 and int(user.group(2)) > 0
    assert re.search(r'^ENTRYPOINT \["/opt/venv/bin/python", "-m", "server"\]$', final, re.MULTILINE)
    assert "--only-binary=:all:" in DOCKERFILE  # wheels only: no compiler needed anywhere


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*"

    def sent(path: str) -> bool:
        keep = False
        for rule in rules:
            negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or fnmatch.fnmatch(
                    path.split("/")[-1], pattern.removeprefix("**/")):
                keep = negate
        return keep

    assert all(sent(p) for p in ("requirements.txt", "auth/_settings.py", "server/__main__.py", "tools/notes.py"))
    assert not any(sent(p) for p in (".venv/bin/python", "tests/test_deploy.py", "data/notes.db", ".git/config",
                                     "server/__pycache__/x.pyc", "bench/bench_server.py"))
    copied = re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE, re.MULTILINE)
    assert all(sent(c.rstrip("/") + ("/x.py" if c.endswith("/") else "")) for c in copied)
