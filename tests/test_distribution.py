"""The tool's distribution ships the tool alone: the stand-ins are their own (`sandbox/`, stripe-sf-sandbox), and the
tool imports them only inside the commands that need them (`demo`, `sandbox`)."""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _packages(root: Path, include: list[str]) -> set[str]:
    """The packages setuptools' `packages.find` selects under `root` (directories with an __init__.py)."""
    found = {".".join(p.parent.relative_to(root).parts) for p in root.rglob("__init__.py")
             if ".venv" not in str(p) and "site-packages" not in str(p)}
    return {name for name in found if any(fnmatch.fnmatch(name, pattern) for pattern in include)}


def test_the_tools_wheel_does_not_ship_the_sandbox():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = _packages(ROOT, config["tool"]["setuptools"]["packages"]["find"]["include"])
    assert "stripe_sf_sync" in packages and "stripe_sf_sync.pipeline" in packages
    assert not [p for p in packages if not p.startswith("stripe_sf_sync") or "sandbox" in p], packages
    assert "trustme" not in " ".join(config["project"]["dependencies"])


def test_the_sandbox_is_a_distribution_of_its_own_that_depends_on_the_tool():
    config = tomllib.loads((ROOT / "sandbox" / "pyproject.toml").read_text())
    assert config["project"]["name"] == "stripe-sf-sandbox"
    assert "stripe-sf-sync" in config["project"]["dependencies"]
    packages = _packages(ROOT / "sandbox", config["tool"]["setuptools"]["packages"]["find"]["include"])
    assert packages and all(p.startswith("stripe_sf_sandbox") for p in packages), packages


def test_the_tool_imports_the_sandbox_only_inside_the_commands_that_need_it():
    for path in (ROOT / "stripe_sf_sync").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: an import inside a function runs when that command does
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith("stripe_sf_sandbox")], f"{path}: imports the sandbox"
