"""The command line's contract with scripts: usage errors exit 1, --version, --help.

Exit code 2 means DENY (`check`), so a mistyped flag must not look like one:
every command exits 1 on a usage error and prints its own usage. Every
command's --help lists the exit codes it can return and says what each option
and argument is for.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version

import pytest

from sidecar.cli import main as cli
from sidecar.cli.exitcodes import COMMAND_EXIT_CODES, EXIT_DENY, EXIT_ERROR

STEPGUARD = [sys.executable, "-m", "sidecar.cli"]
COMMANDS = [words for words, _ in cli.subcommands(cli._parser())]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPGUARD, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_every_command_is_listed_with_its_exit_codes() -> None:
    assert set(COMMANDS) == set(COMMAND_EXIT_CODES)


@pytest.mark.parametrize("words", COMMANDS)
def test_a_bad_flag_exits_1_with_the_commands_own_usage(words: str) -> None:
    out = run(*words.split(), "--bogus")
    assert out.returncode == EXIT_ERROR != EXIT_DENY, out.stderr
    assert f"usage: stepguard {words} " in out.stderr
    assert f"stepguard {words}: error:" in out.stderr


def test_usage_errors_exit_1_in_main_too(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["check", "--bogus"], ["test", "--format", "xml"], ["nonsense"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == EXIT_ERROR, argv
    assert "usage: stepguard test" in capsys.readouterr().err


def test_version_comes_from_the_package() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"stepguard {version('stepguard')}"


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = cli._parser()
    return [("", parser), *cli.subcommands(parser)]


@pytest.mark.parametrize(("words", "parser"), _parsers(), ids=[w or "-" for w, _ in _parsers()])
def test_help_describes_every_option_and_lists_exit_codes(
    words: str, parser: argparse.ArgumentParser
) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            assert all(helps.values()), f"{words}: subcommand without help: {helps}"
            continue
        what = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"stepguard {words}: {what}"
    text = parser.format_help()
    assert "exit codes:" in text
    for code, why in COMMAND_EXIT_CODES.get(words, ()):
        assert f"  {code}  {why}" in text, (words, code)


def test_help_is_printed_with_exit_codes() -> None:
    out = run("check", "--help")
    assert out.returncode == 0
    assert "exit codes:\n  0  ALLOW\n  1  error" in out.stdout
    assert "  2  DENY" in out.stdout
