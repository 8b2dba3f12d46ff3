"""The package's public surface is deliberate, and `auth/` stays independent of the app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import auth
import auth.client
import auth.downstream
import auth.mcp
import auth.testing

AUTH_DIR = Path(auth.__file__).parent
APP_PACKAGES = {"server", "tools"}
PARTS = [auth, auth.mcp, auth.client, auth.downstream, auth.testing]
"""The resource-server core, the MCP integration, the calling side, onward calls, the local issuer: one short
public API each."""
PUBLIC_MODULES = {Path("testing/pytest_plugin.py")}
"""Named by users (``pytest_plugins = ["auth.testing.pytest_plugin"]``), so not private."""


def _public(package: ModuleType) -> list[str]:
    """Public names of ``package``, its own sub-packages (attributes once imported) left out."""
    return sorted(
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and not (isinstance(value, ModuleType) and value.__name__.startswith(package.__name__ + "."))
    )


@pytest.mark.parametrize("package", PARTS, ids=lambda p: p.__name__)
def test_each_part_exports_a_deliberate_short_list(package: ModuleType) -> None:
    assert _public(package) == sorted(package.__all__)
    assert len(set(package.__all__)) == len(package.__all__)
    assert 6 <= len(package.__all__) <= 17  # a surface a newcomer can hold in mind


def test_no_name_is_exported_by_two_parts() -> None:
    names = [name for package in PARTS for name in package.__all__]
    assert len(names) == len(set(names))


def test_the_tree_shows_the_parts() -> None:
    assert (AUTH_DIR / "mcp" / "__init__.py").is_file()
    assert (AUTH_DIR / "client" / "__init__.py").is_file()
    assert (AUTH_DIR / "downstream" / "__init__.py").is_file()
    assert (AUTH_DIR / "testing" / "__init__.py").is_file()
    assert all(p.name.startswith("_") or p.relative_to(AUTH_DIR) in PUBLIC_MODULES for p in AUTH_DIR.rglob("*.py")), (
        "implementation lives in private modules")


def test_the_testing_part_needs_no_pytest_and_the_core_never_imports_it() -> None:
    """``auth.testing`` imports without pytest; only its pytest plugin module imports pytest."""
    probe = ("import sys; sys.modules['pytest'] = None; import auth, auth.testing, auth.mcp, auth.client; "
             "assert 'auth.testing.pytest_plugin' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    core = sorted(p for p in AUTH_DIR.rglob("*.py") if "testing" not in p.relative_to(AUTH_DIR).parts)
    assert [p for p in core for module, _ in _imports(p) if "testing" in module] == []


def test_the_core_does_not_depend_on_the_calling_side_or_the_mcp_integration() -> None:
    core = sorted(p for p in AUTH_DIR.glob("_*.py") if not p.name.startswith("__"))
    offending = [
        (path.name, module)
        for path in core
        for module, level in _imports(path)
        if (level == 1 and module.split(".")[0] in ("mcp", "client", "downstream"))
        or module.startswith(("auth.mcp", "auth.client", "auth.downstream"))
    ]
    assert offending == []


def test_the_calling_side_does_not_depend_on_onward_calls() -> None:
    sources = sorted((AUTH_DIR / "client").glob("*.py"))
    offending = [(p.name, m) for p in sources for m, level in _imports(p)
                 if m.startswith("auth.downstream") or (level == 2 and m.split(".")[0] == "downstream")]
    assert offending == []


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
    sources = sorted(AUTH_DIR.rglob("*.py"))
    assert AUTH_DIR / "_verifier.py" in sources and AUTH_DIR / "mcp" / "_gate.py" in sources
    offending = [
        (str(path.relative_to(AUTH_DIR)), module, level)
        for path in sources
        for module, level in _imports(path)
        # level 2+ leaves the package from its top level; from a sub-package, level 3+ does
        if (level == 0 and module.split(".")[0] in APP_PACKAGES) or level > len(path.relative_to(AUTH_DIR).parts)
    ]
    assert offending == []


def test_import_scanner_would_notice_an_app_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import server.app\nfrom tools import notes\nfrom ..server import x\n", encoding="utf-8")
    assert _imports(probe) == [("server.app", 0), ("tools", 0), ("server", 2)]


def test_importing_auth_does_not_import_fastmcp() -> None:
    """FastMCP support is optional: ``auth`` imports ``fastmcp`` only when its adapter is called."""
    probe = "import sys, auth, auth.mcp; assert 'fastmcp' not in sys.modules, 'fastmcp imported'"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_importing_auth_does_not_import_fastapi() -> None:
    """FastAPI support is the optional ``fastapi`` extra: only ``auth.fastapi`` imports it."""
    probe = "import sys, auth, auth.mcp, auth.client; assert 'fastapi' not in sys.modules, 'fastapi imported'"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_fastapi_integration_is_its_own_short_deliberate_list() -> None:
    import auth.fastapi

    assert (AUTH_DIR / "fastapi" / "__init__.py").is_file()
    assert _public(auth.fastapi) == sorted(auth.fastapi.__all__)
    assert "BearerAuth" in auth.fastapi.__all__ and len(auth.fastapi.__all__) <= 6
    assert not set(auth.fastapi.__all__) & {name for package in PARTS for name in package.__all__}


def test_public_api_offers_the_sdk_and_fastmcp_fit() -> None:
    assert {"protect", "ToolPermissions", "requires", "fastmcp_auth", "permission_check"} <= set(auth.mcp.__all__)
    assert not {"REGISTRY", "PermissionRegistry", "set_permission_aliases"} & {n for p in PARTS for n in p.__all__}
    assert callable(getattr(auth.JWTVerifier, "verify_token", None))


def test_onward_calls_offer_one_call_for_tools_and_the_destination_service() -> None:
    assert {"Downstreams", "DownstreamError", "load_downstreams", "DestinationService"} <= set(auth.downstream.__all__)
    assert "ExchangeTarget" in auth.client.__all__ and callable(auth.client.TokenProvider.exchange)
