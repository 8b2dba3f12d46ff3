"""Separate Python environments for clients that cannot share this project's (``mcp<2`` ones).

    venv = ensure_venv("langchain", LANGCHAIN_REQUIREMENTS)    # once per machine, then reused
    proc = venv.run(script, args, env={"PYTHONPATH": str(REPO_ROOT)}, timeout=120)

An environment lives in ``<repo>/.cache/venvs/<name>-<hash>`` (``MCP_TEST_VENVS_DIR`` moves
it), the hash covering the requirement pins and the Python version, so changing a pin builds a
new one. It is made with this interpreter's ``venv`` module and filled by ``pip`` from the
package index pip is configured for; a ``.complete`` marker is written last, so an interrupted
install is redone. A failed install raises `VenvError`; nothing here skips a test.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["LANGCHAIN_REQUIREMENTS", "REPO_ROOT", "Venv", "VenvError", "ensure_venv"]

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 900.0

LANGCHAIN_REQUIREMENTS = (
    "langchain-mcp-adapters==0.3.2",  # needs mcp<2; 0.3.2 is the newest (pip picks 0.3.1 beside mcp 2.x)
    "langchain-core==1.8.1",
    "mcp==1.30.0",
    # what `auth` (imported from the repo through PYTHONPATH) needs besides mcp
    "httpx==0.28.1",
    "httpx2==2.16.2",
    "joserfc==1.8.0",
    "cryptography==50.0.2",
    "starlette==1.10.0",
)


class VenvError(RuntimeError):
    """The environment could not be created or its packages not installed."""


@dataclasses.dataclass(frozen=True)
class Venv:
    """A ready environment: its folder and its interpreter."""

    path: Path
    python: Path

    def run(
        self, script: str | os.PathLike[str], args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with this interpreter (text output captured; no stdin)."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        full_env.update(env or {})
        return subprocess.run(
            [str(self.python), str(script), *args], capture_output=True, text=True, timeout=timeout,
            env=full_env, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
        )  # fmt: skip


def _pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise VenvError(f"`{' '.join(cmd)}` did not finish in {INSTALL_TIMEOUT:.0f}s") from exc
    if out.returncode != 0:
        tail = "\n".join((out.stdout + "\n" + out.stderr).strip().splitlines()[-30:])
        raise VenvError(f"`{' '.join(cmd)}` failed with exit code {out.returncode}:\n{tail}")


@functools.cache
def ensure_venv(name: str, requirements: tuple[str, ...]) -> Venv:
    """Create (first call on a machine) or reuse the environment ``name`` with exactly ``requirements``.

    Raises:
        VenvError: the environment could not be built.
    """
    key = json.dumps({"python": sys.version_info[:2], "requirements": sorted(requirements)})
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(os.environ.get("MCP_TEST_VENVS_DIR") or REPO_ROOT / ".cache" / "venvs").resolve()
    path = root / f"{name}-{digest}"
    python = path / "bin" / "python"
    marker = path / ".complete"
    root.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        with open(root / f".{name}.lock", "w") as lock:  # one installer at a time per machine
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not marker.is_file():
                    shutil.rmtree(path, ignore_errors=True)
                    made = subprocess.run([sys.executable, "-m", "venv", str(path)], capture_output=True, text=True,
                                          timeout=300, stdin=subprocess.DEVNULL)
                    if made.returncode != 0:
                        raise VenvError(f"python -m venv {path} failed: {made.stderr.strip()}")
                    _pip(python, "install", "--quiet", *requirements)
                    marker.write_text(key + "\n")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return Venv(path, python)
