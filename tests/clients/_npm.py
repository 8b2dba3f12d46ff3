"""The official MCP conformance suite (npm ``@modelcontextprotocol/conformance``), pinned.

Installed like the Node clients in `tests._node`: once into ``<repo>/.cache/conformance`` (or
``MCP_CONFORMANCE_DIR``), reused afterwards, ``--ignore-scripts``, an exact version. It runs with
the node `tests._node` picks (the suite needs Node >= 22: it imports ``fs.globSync``).
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
from pathlib import Path

from tests._node import REPO_ROOT, NodeToolsError, _installed_version, _npm_install, ensure_node_tools

__all__ = ["CONFORMANCE_VERSION", "conformance_cmd"]

CONFORMANCE_VERSION = "0.1.16"
_PACKAGE = "@modelcontextprotocol/conformance"
_ENTRY = "dist/index.js"


@functools.lru_cache(maxsize=1)
def conformance_cmd() -> tuple[str, ...]:
    """argv prefix for ``npx @modelcontextprotocol/conformance`` (installs on first use).

    Raises:
        NodeToolsError: npm is missing or the install failed.
    """
    node = ensure_node_tools().node
    npm = shutil.which("npm")
    if npm is None:
        raise NodeToolsError("the conformance test needs npm on PATH")
    prefix = Path(os.environ.get("MCP_CONFORMANCE_DIR") or REPO_ROOT / ".cache" / "conformance").resolve()
    prefix.mkdir(parents=True, exist_ok=True)
    entry = prefix / "node_modules" / _PACKAGE / _ENTRY
    if _installed_version(prefix, _PACKAGE) != CONFORMANCE_VERSION or not entry.is_file():
        with open(prefix / ".install.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if _installed_version(prefix, _PACKAGE) != CONFORMANCE_VERSION or not entry.is_file():
                    _npm_install(npm, prefix, {_PACKAGE: CONFORMANCE_VERSION})
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if _installed_version(prefix, _PACKAGE) != CONFORMANCE_VERSION:
            raise NodeToolsError(f"npm install in {prefix} did not leave {_PACKAGE}@{CONFORMANCE_VERSION}")
    return (node, str(entry))
