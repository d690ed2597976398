"""The pure core stays pure: no transport, metrics, cache or I/O imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar" / "core"
PURE = ["engine.py", "model.py", "validate.py", "cedartext.py", "jsonreq.py"]
FORBIDDEN = (
    "grpc",
    "prometheus_client",
    "cachetools",
    "sidecar.serving.server",
    "sidecar.decision.decider",
    "sidecar.audit",
    "sidecar.decision.metrics",
    "socket",
    "subprocess",
    "logging",
    "time",
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_nothing_impure(module: str) -> None:
    bad = {
        name
        for name in _imports(SIDECAR / module)
        for prefix in FORBIDDEN
        if name == prefix or name.startswith(prefix + ".")
    }
    assert not bad, f"{module} imports {sorted(bad)}"


def test_engine_does_no_io() -> None:
    source = (SIDECAR / "engine.py").read_text()
    for call in ("open(", "print(", "datetime.now", "time.time"):
        assert call not in source, f"engine.py calls {call}"
