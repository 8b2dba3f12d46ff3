"""``python -m server.permissions [--check | --write]``: one source of truth for the IAS permission groups.

The names are the ``@requires`` marks of the server's tools, read from the tools as the server
registers them. ``ias-config.json`` (the identity instance's parameters: ``cf create-service
identity application notes-mcp-ias -c ias-config.json``) must provide exactly those groups, each
with a description; ``mta.yaml`` and ``deploy/kyma/identity.yaml`` carry a copy of that file
between ``# BEGIN generated`` and ``# END generated``.

The XSUAA component's scopes (``deploy/kyma/components/xsuaa/xsuaa.yaml``, ``$XSAPPNAME.<group>``)
are checked too, and edited by hand.

``--check`` (the default) exits 1 naming every difference; ``--write`` adds the missing groups to
``ias-config.json`` (with a ``TODO`` description that ``--check`` refuses until it is written),
drops the ones no tool needs, and rewrites both copies. Exit status 0 means all three descriptors
match the code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

from auth.mcp import ToolPermissions
from tools import SQLiteStore, register

__all__ = ["required_groups", "render_copy", "check", "write", "main"]

ROOT = Path(__file__).resolve().parent.parent
IAS_CONFIG = ROOT / "ias-config.json"
COPIES = (ROOT / "mta.yaml", ROOT / "deploy" / "kyma" / "identity.yaml")
XSUAA = ROOT / "deploy" / "kyma" / "components" / "xsuaa" / "xsuaa.yaml"  # scopes: checked, edited by hand
_SCOPE = re.compile(r"^\s*- name: \$XSAPPNAME\.([A-Za-z0-9_.-]+)\s*$", re.MULTILINE)
BEGIN = "# BEGIN generated from ias-config.json by python -m server.permissions --write"
END = "# END generated"
TODO = "TODO: describe "


def required_groups() -> frozenset[str]:
    """Every permission group some tool of the server requires (its ``@requires`` marks)."""
    mcp = MCPServer("permissions")
    with tempfile.TemporaryDirectory() as tmp:
        register(mcp, SQLiteStore(Path(tmp) / "notes.db"))  # the store is never called: only marks are read
    return frozenset().union(*ToolPermissions.from_server(mcp).declared().values())


def _provided(config: dict[str, Any]) -> dict[str, str]:
    apis = config.get("provided-apis", [])
    return {a["name"]: a.get("description", "") for a in apis if isinstance(a, dict) and isinstance(a.get("name"), str)}


def render_copy(config: dict[str, Any], key: str, indent: str) -> str:
    """The generated block: ``<indent><key>: <config as JSON>`` (YAML reads JSON flow collections)."""
    body = json.dumps(config, indent=2, ensure_ascii=False).replace("\n", "\n" + indent + "  ")
    return f"{indent}{BEGIN}\n{indent}{key}: {body}\n{indent}{END}\n"


def _region(text: str, path: Path) -> tuple[int, int, str, str]:
    """(start, end, indent, key) of the generated block in ``text``."""
    start = text.find(BEGIN)
    end = text.find(END, start)
    if start < 0 or end < 0:
        raise ValueError(f"{path.name}: no '{BEGIN}' ... '{END}' block")
    line_start = text.rfind("\n", 0, start) + 1
    indent = text[line_start:start]
    key_line = text[start + len(BEGIN) :].lstrip("\n").split("\n", 1)[0]
    key = key_line.strip().split(":", 1)[0]
    return line_start, text.find("\n", end) + 1, indent, key


def check(groups: frozenset[str] | None = None) -> list[str]:
    """Every difference between the code's groups and the descriptors (empty: all agree)."""
    groups = required_groups() if groups is None else groups
    config = json.loads(IAS_CONFIG.read_text())
    provided = _provided(config)
    problems = [f"ias-config.json: no provided API for '{g}' (a tool requires it): run --write, then describe it"
                for g in sorted(groups - provided.keys())]
    problems += [f"ias-config.json: provided API '{g}' is required by no tool"
                 for g in sorted(provided.keys() - groups)]
    problems += [f"ias-config.json: describe '{g}'" for g, d in sorted(provided.items())
                 if g in groups and (not d.strip() or d.startswith(TODO))]
    # ias.md: IAS takes at most 50 provided APIs, each name at most 50 characters.
    problems += [f"ias-config.json: '{g[:60]}' is longer than 50 characters" for g in sorted(provided) if len(g) > 50]
    if len(provided) > 50:
        problems.append(f"ias-config.json: {len(provided)} provided APIs; IAS takes at most 50")
    if XSUAA.exists():
        scopes = set(_SCOPE.findall(XSUAA.read_text()))
        where = XSUAA.relative_to(ROOT)
        problems += [f"{where}: no scope $XSAPPNAME.{g}" for g in sorted(groups - scopes)]
        problems += [f"{where}: scope $XSAPPNAME.{g} is required by no tool" for g in sorted(scopes - groups)]
    for path in COPIES:
        text = path.read_text()
        try:
            start, end, indent, key = _region(text, path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if text[start:end] != render_copy(config, key, indent):
            problems.append(f"{path.relative_to(ROOT)}: its copy of ias-config.json is stale: run --write")
    return problems


def write(groups: frozenset[str] | None = None) -> list[Path]:
    """Bring ``ias-config.json`` to the code's groups and rewrite the copies; returns the files changed."""
    groups = required_groups() if groups is None else groups
    config = json.loads(IAS_CONFIG.read_text())
    provided = _provided(config)
    config["provided-apis"] = [{"name": g, "description": provided.get(g) or f"{TODO}{g}"} for g in sorted(groups)]
    changed = []
    new = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    if IAS_CONFIG.read_text() != new:
        IAS_CONFIG.write_text(new)
        changed.append(IAS_CONFIG)
    for path in COPIES:
        text = path.read_text()
        start, end, indent, key = _region(text, path)
        updated = text[:start] + render_copy(config, key, indent) + text[end:]
        if updated != text:
            path.write_text(updated)
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m server.permissions", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 when a descriptor differs from the code (default)")
    group.add_argument("--write", action="store_true", help="update ias-config.json and its copies from the code")
    args = parser.parse_args(argv)
    groups = required_groups()
    if args.write:
        for path in write(groups):
            print(f"wrote {path.relative_to(ROOT)}")
    problems = check(groups)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"permission groups {', '.join(sorted(groups))}: ias-config.json, mta.yaml and "
              "deploy/kyma/identity.yaml agree with the tools")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
