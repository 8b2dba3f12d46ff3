"""One source of truth for the IAS permission groups: the tools' ``@requires`` marks.

``ias-config.json``, ``mta.yaml`` and the Kyma ``ServiceInstance`` must provide exactly the groups
the tools require; a tool with a new permission fails here until the descriptors name it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mcp.server.mcpserver import MCPServer

import server.permissions as permissions
from auth.mcp import ToolPermissions, requires
from tools import SQLiteStore, register

ROOT = Path(__file__).resolve().parents[2]


def test_the_descriptors_provide_exactly_the_groups_the_tools_require() -> None:
    assert permissions.required_groups() == {"api_read_access", "api_write_access"}
    assert permissions.check() == []


def test_the_command_agrees_as_a_user_runs_it() -> None:
    result = subprocess.run([sys.executable, "-m", "server.permissions", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "agree with the tools" in result.stdout


def test_each_copy_reads_as_the_same_instance_config_in_yaml() -> None:
    config = json.loads((ROOT / "ias-config.json").read_text())
    mta = yaml.safe_load((ROOT / "mta.yaml").read_text())
    (ias,) = [r for r in mta["resources"] if r["parameters"].get("service") == "identity"]
    kyma = [d for d in yaml.safe_load_all((ROOT / "deploy/kyma/identity.yaml").read_text())
            if d["kind"] == "ServiceInstance"]
    assert ias["parameters"]["config"] == config == kyma[0]["spec"]["parameters"]
    assert {a["name"] for a in config["provided-apis"]} == permissions.required_groups()


def _groups_with_an_archive_tool(tmp_path: Path) -> frozenset[str]:
    mcp = MCPServer("with-archive")
    register(mcp, SQLiteStore(tmp_path / "notes.db"))

    @mcp.tool(name="archive")
    @requires("api_archive")
    async def archive_note(note_id: int) -> int:
        """Archive a note."""
        return note_id

    return frozenset().union(*ToolPermissions.from_server(mcp).declared().values())


@pytest.fixture
def copy_of_descriptors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    (root / "deploy" / "kyma").mkdir(parents=True)
    for name in ("ias-config.json", "mta.yaml", "deploy/kyma/identity.yaml"):
        shutil.copy2(ROOT / name, root / name)
    monkeypatch.setattr(permissions, "ROOT", root)
    monkeypatch.setattr(permissions, "IAS_CONFIG", root / "ias-config.json")
    monkeypatch.setattr(permissions, "COPIES", (root / "mta.yaml", root / "deploy/kyma/identity.yaml"))
    monkeypatch.setattr(permissions, "XSUAA", root / "xsuaa.yaml")  # not copied: its own test below
    return root


def test_a_tool_with_a_new_permission_fails_until_the_descriptors_name_and_describe_it(
        tmp_path: Path, copy_of_descriptors: Path) -> None:
    groups = _groups_with_an_archive_tool(tmp_path)
    assert "api_archive" in groups
    problems = permissions.check(groups)
    assert any("api_archive" in p and "no provided API" in p for p in problems), problems

    changed = permissions.write(groups)  # adds it with a TODO description, rewrites both copies
    assert {p.name for p in changed} == {"ias-config.json", "mta.yaml", "identity.yaml"}
    assert permissions.check(groups) == ["ias-config.json: describe 'api_archive'"]

    config_path = copy_of_descriptors / "ias-config.json"
    config = json.loads(config_path.read_text())
    for api in config["provided-apis"]:
        if api["name"] == "api_archive":
            api["description"] = "Archive notes through the MCP server"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    assert any("stale" in p for p in permissions.check(groups))  # the copies follow ias-config.json
    permissions.write(groups)
    assert permissions.check(groups) == []
    mta = yaml.safe_load((copy_of_descriptors / "mta.yaml").read_text())
    names = [a["name"] for a in mta["resources"][0]["parameters"]["config"]["provided-apis"]]
    assert names == ["api_archive", "api_read_access", "api_write_access"]


def test_a_group_no_tool_needs_and_a_hand_edited_copy_are_reported(copy_of_descriptors: Path) -> None:
    groups = permissions.required_groups()
    identity = copy_of_descriptors / "deploy/kyma/identity.yaml"
    identity.write_text(identity.read_text().replace("api_write_access", "api_write"))
    config_path = copy_of_descriptors / "ias-config.json"
    config = json.loads(config_path.read_text())
    config["provided-apis"].append({"name": "api_legacy", "description": "old"})
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    problems = permissions.check(groups)
    assert "ias-config.json: provided API 'api_legacy' is required by no tool" in problems
    assert any(p.startswith("deploy/kyma/identity.yaml") and "stale" in p for p in problems)
    permissions.write(groups)
    assert permissions.check(groups) == []
    assert "api_legacy" not in config_path.read_text()


def test_the_xsuaa_scopes_follow_the_groups_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xsuaa = tmp_path / "xsuaa.yaml"
    xsuaa.write_text((ROOT / "deploy/kyma/components/xsuaa/xsuaa.yaml").read_text())
    monkeypatch.setattr(permissions, "ROOT", tmp_path)
    monkeypatch.setattr(permissions, "XSUAA", xsuaa)
    monkeypatch.setattr(permissions, "COPIES", ())
    monkeypatch.setattr(permissions, "IAS_CONFIG", ROOT / "ias-config.json")
    groups = permissions.required_groups()
    assert permissions.check(groups) == []
    assert permissions.check(groups | {"api_archive"}) == [
        "ias-config.json: no provided API for 'api_archive' (a tool requires it): run --write, then describe it",
        "xsuaa.yaml: no scope $XSAPPNAME.api_archive"]
