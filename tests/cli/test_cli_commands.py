"""One module per command group: each registers itself, main.py only lists them.

The authoring tools return data and the command modules print it and choose the
exit code; that nothing below the command line imports it is a layering rule
(tests/project/test_layering.py).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from sidecar.cli import main as cli

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"
# Each command module and the commands (words after `stepguard`) it registers.
COMMAND_MODULES = {
    "serve": {"serve"},
    "check": {"check"},
    "plan": {"plan"},
    "validate": {"validate"},
    "audit": {"audit", "audit verify", "audit query"},
    "fmt": {"fmt"},
    "replay": {"replay"},
    "evidence": {
        "evidence",
        "evidence inventory",
        "evidence access",
        "evidence open-grants",
        "evidence leavers",
        "evidence exceptions",
        "evidence report",
    },
    "healthcheck": {"healthcheck"},
    "ship": {"ship"},
    "collect": {"collect"},
    "fleet": {"fleet", "fleet status"},
    "test": {"test"},
}


@pytest.mark.parametrize("name", sorted(COMMAND_MODULES))
def test_each_command_group_registers_itself(name: str) -> None:
    """`register(subparsers)` adds the module's commands, each run by a handler of its own."""
    module = importlib.import_module(f"sidecar.cli.{name}")
    parser = cli._Parser(prog="stepguard")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    assert module.register(sub) is None
    found = dict(cli.subcommands(parser))
    assert set(found) == COMMAND_MODULES[name]
    for words, child in found.items():
        if any(w2.startswith(words + " ") for w2 in found):
            continue  # a group (`audit`): its subcommands run
        run = child.get_default("run")
        assert callable(run), words
        assert run.__module__ == module.__name__, (words, run.__module__)


def test_main_lists_command_modules_and_declares_no_command_flags() -> None:
    """main.py holds the skeleton (`--version`, help, dispatch); flags live with their command."""
    tree = ast.parse((SIDECAR / "cli" / "main.py").read_text())
    flags = [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]
    assert flags == ["--version"]
    assert not [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_parser"
    ]
    words = {w for w, _ in cli.subcommands(cli._parser())}
    assert set().union(*COMMAND_MODULES.values()) == words
