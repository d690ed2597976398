"""The rooms of sidecar/ keep their layering, and the pure core stays pure.

docs/architecture.md draws these rooms; this file is what keeps the drawing
true as code is added. Imports are read from the source (every `import`,
including those inside functions and under TYPE_CHECKING: a type-only import
still couples two rooms).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"

# room -> the rooms it may import (itself included). Read top to bottom: the
# command line sits on everything; serving and authoring are side by side and
# never import each other; the decision path uses the trail and the core; the
# core imports nothing of the package. The client is apart from the server.
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "audit": {"audit", "core"},
    "decision": {"decision", "audit", "core"},
    "serving": {"serving", "decision", "audit", "core"},
    "authoring": {"authoring", "decision", "audit", "core"},
    "evidence": {"evidence", "audit", "core"},  # reads trails, returns data (docs/evidence.md)
    # ships trails to NATS, collects them into PostgreSQL (docs/fleet.md)
    "fleet": {"fleet", "audit", "core"},
    "client": {"client", "core"},
    "integrations": {"integrations", "client", "core"},
    "tls": {"client"},  # the compatibility path sidecar.tls re-exports the client's helper
    "cli": {
        "cli",
        "serving",
        "authoring",
        "evidence",
        "fleet",
        "decision",
        "audit",
        "core",
        "client",
    },
    "__init__": set(),
}
# The generated messages are the API's data and may be read anywhere below the
# transports; the generated gRPC stubs are transport and stay with the transports.
PROTO_MESSAGES = "sidecar._proto.stepguard.v1.authorizer_pb2"
PROTO_STUBS = "sidecar._proto.stepguard.v1.authorizer_pb2_grpc"
STUB_ROOMS = {"serving", "client", "cli"}

# Libraries that mean transport, metrics, caching or processes: never in the core.
CORE_FORBIDDEN = ("grpc", "prometheus_client", "cachetools", "socket", "subprocess", "http")
# The pure modules: (bundle, request) -> decision and the text they read. No
# logging, no clock, no threads either.
PURE = ["engine.py", "model.py", "validate.py", "cedartext.py", "jsonreq.py"]
PURE_FORBIDDEN = (*CORE_FORBIDDEN, "logging", "time", "threading")


def _modules(root: Path = SIDECAR) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if "_proto" not in path.relative_to(root).parts:
            yield path


def _dotted(path: Path, root: Path = SIDECAR) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _room(path: Path, root: Path = SIDECAR) -> str:
    first = path.relative_to(root).parts[0]
    return first.removesuffix(".py")


def _imports(path: Path, root: Path = SIDECAR) -> set[str]:
    """Absolute module names this file imports (`from a import b` also yields a.b)."""
    names: set[str] = set()
    dotted = _dotted(path, root)
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _package_modules(root: Path = SIDECAR) -> dict[str, Path]:
    return {_dotted(path, root): path for path in _modules(root)}


def _internal(names: set[str], known: dict[str, Path]) -> set[str]:
    """The package modules among `names`; `from pkg import mod` counts as mod alone."""
    found = {name for name in names if name in known and name != "sidecar"}
    return {name for name in found if not any(o.startswith(name + ".") for o in found)}


def test_every_module_is_in_a_known_room() -> None:
    """A new top-level module must be given a room (and rules) before it lands."""
    rooms = {_room(path) for path in _modules()}
    assert rooms <= set(ALLOWED), f"modules outside every room: {sorted(rooms - set(ALLOWED))}"


def _violations(root: Path) -> list[str]:
    known = _package_modules(root)
    bad = []
    for name, path in known.items():
        room = _room(path, root)
        for target in sorted(_internal(_imports(path, root), known)):
            target_room = _room(known[target], root)
            if target_room not in ALLOWED[room]:
                bad.append(f"{name} ({room}) imports {target} ({target_room})")
    return bad


def test_rooms_import_only_what_their_layer_allows() -> None:
    bad = _violations(SIDECAR)
    assert bad == [], "\n".join(bad)


def test_generated_grpc_stubs_stay_with_the_transports() -> None:
    bad = [
        _dotted(path)
        for path in _modules()
        if PROTO_STUBS in _imports(path) and _room(path) not in STUB_ROOMS
    ]
    assert bad == [], f"import the gRPC stubs outside the transports: {bad}"


def test_the_core_imports_no_transport_metrics_cache_or_processes() -> None:
    bad = {
        f"{_dotted(path)} imports {name}"
        for path in (SIDECAR / "core").rglob("*.py")
        for name in _imports(path)
        for prefix in CORE_FORBIDDEN
        if name == prefix or name.startswith(prefix + ".")
    }
    assert bad == set(), sorted(bad)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_nothing_impure(module: str) -> None:
    bad = {
        name
        for name in _imports(SIDECAR / "core" / module)
        for prefix in PURE_FORBIDDEN
        if name == prefix or name.startswith(prefix + ".")
    }
    assert not bad, f"{module} imports {sorted(bad)}"


def test_engine_does_no_io() -> None:
    source = (SIDECAR / "core" / "engine.py").read_text()
    for call in ("open(", "print(", "datetime.now", "time.time"):
        assert call not in source, f"engine.py calls {call}"


def test_no_import_circle_between_modules() -> None:
    """No two modules of the package import each other, directly or around a loop."""
    circles = _circles(_graph(SIDECAR))
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def _graph(root: Path) -> dict[str, set[str]]:
    known = _package_modules(root)
    graph = {name: _internal(_imports(path, root), known) - {name} for name, path in known.items()}
    # A package's __init__ importing its own modules is how a package hands names
    # on, not a circle of meaning: drop edges from a module up to its package.
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_rules_see_a_real_violation(tmp_path: Path) -> None:
    """The readers above are not blind: planted violations in a small tree are caught."""
    root = tmp_path / "sidecar"
    files = {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/x.py": "from sidecar.serving import server\n",
        "serving/__init__.py": "",
        "serving/server.py": "from . import loop\n",
        "serving/loop.py": "def f() -> None:\n    from sidecar.serving.server import g\n",
        "client.py": "from sidecar.serving.server import g\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert _violations(root) == [
        "sidecar.client (client) imports sidecar.serving.server (serving)",
        "sidecar.core.x (core) imports sidecar.serving.server (serving)",
    ]
    assert _circles(_graph(root)) == [["sidecar.serving.loop", "sidecar.serving.server"]]


def test_tests_mirror_the_rooms() -> None:
    """Each room has its tests in tests/<room>/, so a change and its tests sit side by side."""
    tests = SIDECAR.parent / "tests"
    rooms = {_room(path) for path in _modules()} - {"__init__", "tls"}
    missing = sorted(room for room in rooms if not any((tests / room).glob("test_*.py")))
    assert missing == [], f"rooms without tests/<room>/test_*.py: {missing}"


# Issue 17: past about 500 lines a module is more than one reader holds; one that
# stays that long says why in its module docstring, in a sentence with "500 lines".
MAX_LINES = 500


def _long_without_reason(root: Path = SIDECAR) -> dict[str, int]:
    """Modules (path under sidecar/ -> lines) past MAX_LINES whose docstring gives no reason."""
    found = {}
    for path in _modules(root):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_LINES and "500 lines" not in (ast.get_docstring(ast.parse(text)) or ""):
            found[path.relative_to(root).as_posix()] = lines
    return found


def test_long_modules_say_why_in_their_docstring() -> None:
    found = _long_without_reason()
    bad = [f"{name} ({lines} lines)" for name, lines in found.items()]
    assert bad == [], (
        f"modules past {MAX_LINES} lines without a reason in their docstring (split them, "
        f'or say why in a sentence with "500 lines"): ' + ", ".join(bad)
    )


def test_the_length_rule_sees_a_long_module(tmp_path: Path) -> None:
    """The length reader is not blind: a long module is named with its length until its
    docstring gives the reason; a comment saying it does not count."""
    root = tmp_path / "sidecar"
    (root / "core").mkdir(parents=True)
    body = "x = 1\n" * MAX_LINES
    (root / "core" / "short.py").write_text('"""Short."""\n' + "x = 1\n" * (MAX_LINES - 1))
    (root / "core" / "long.py").write_text('"""Long."""\n# 500 lines, on purpose\n' + body)
    (root / "core" / "said.py").write_text('"""Long: one piece, so past 500 lines."""\n' + body)
    (root / "_proto").mkdir()
    (root / "_proto" / "gen.py").write_text(body * 2)
    assert _long_without_reason(root) == {"core/long.py": MAX_LINES + 2}
