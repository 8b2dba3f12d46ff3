"""The package's public surface is deliberate, and `auth/` stays independent of the app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import auth

AUTH_DIR = Path(auth.__file__).parent
APP_PACKAGES = {"server", "tools"}


def test_auth_exports_are_deliberate() -> None:
    assert sorted(n for n in vars(auth) if not n.startswith("_")) == sorted(auth.__all__)


def test_every_exported_name_exists() -> None:
    assert all(hasattr(auth, name) for name in auth.__all__)
    assert len(set(auth.__all__)) == len(auth.__all__)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, relative level) of every import in ``path``."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "import_module", "__import__"):
            found += [(arg.value, 0) for arg in node.args[:1] if isinstance(arg, ast.Constant)
                      and isinstance(arg.value, str)]
    return found


def test_auth_imports_nothing_from_server_or_tools() -> None:
    sources = sorted(AUTH_DIR.glob("*.py"))
    assert AUTH_DIR / "_verifier.py" in sources
    offending = [
        (path.name, module, level)
        for path in sources
        for module, level in _imports(path)
        if (level == 0 and module.split(".")[0] in APP_PACKAGES) or level > 1  # level 2+ leaves the package
    ]
    assert offending == []


def test_import_scanner_would_notice_an_app_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import server.app\nfrom tools import notes\nfrom ..server import x\n", encoding="utf-8")
    assert _imports(probe) == [("server.app", 0), ("tools", 0), ("server", 2)]


def test_importing_auth_does_not_import_fastmcp() -> None:
    """FastMCP support is optional: ``auth`` imports ``fastmcp`` only when its adapter is called."""
    probe = "import sys, auth; assert 'fastmcp' not in sys.modules, 'fastmcp imported'"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_public_api_offers_the_sdk_and_fastmcp_fit() -> None:
    assert {"protect", "ToolPermissions", "requires", "fastmcp_auth", "permission_check"} <= set(auth.__all__)
    assert not {"REGISTRY", "PermissionRegistry", "set_permission_aliases"} & set(auth.__all__)
    assert callable(getattr(auth.JWTVerifier, "verify_token", None))
