"""The audit package's shape: it leans on the core only, and no module outgrows a reader.

Issue 17: the audit room may import only sidecar.core (and itself), so that
`audit verify` / `query` and the trail's writer can be read and reused
without the command line or the server; and a module longer than about 500
lines says in its docstring why it is one piece.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AUDIT = Path(__file__).resolve().parents[2] / "sidecar" / "audit"
MODULES = sorted(p.name for p in AUDIT.glob("*.py"))
LONG = 500


def _sidecar_imports(tree: ast.Module) -> set[str]:
    """Every sidecar module named by an import, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n == "sidecar" or n.startswith("sidecar.")}


@pytest.mark.parametrize("module", MODULES)
def test_audit_imports_only_core_and_itself(module: str) -> None:
    tree = ast.parse((AUDIT / module).read_text())
    outside = {
        name
        for name in _sidecar_imports(tree)
        if not name.startswith(("sidecar.audit.", "sidecar.core."))
        and name not in ("sidecar.audit", "sidecar.core")
    }
    assert not outside, f"sidecar/audit/{module} imports {sorted(outside)}: audit uses core only"


@pytest.mark.parametrize("module", MODULES)
def test_long_audit_modules_say_why(module: str) -> None:
    source = (AUDIT / module).read_text()
    lines = source.count("\n")
    if lines <= LONG:
        return
    doc = ast.get_docstring(ast.parse(source)) or ""
    assert f"{LONG} lines" in doc, (
        f"sidecar/audit/{module} has {lines} lines: split it by responsibility, or say in its "
        f"docstring why it is one piece past {LONG} lines"
    )
