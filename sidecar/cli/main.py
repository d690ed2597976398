"""`stepguard` command line: serve, check, validate, and the policy authors' tools.

Exit codes (sidecar/cli/exitcodes.py), the same in every command: 0 success
(check: ALLOW), 1 error (bad input, flags, usage or files), 2 check: DENY, 3 a check
found problems (test failures, fmt --check, replay --fail-on-change), 4 the
policies are invalid, 5 no tests ran (--fail-on-empty), 6 coverage below the
minimum. `check` and `validate` reuse
the server's loader, validation and engine, so what they say is what the
sidecar would do.

Each command group is a module beside this one (serve, check, validate, audit,
fmt, replay, healthcheck) with `register(subparsers)`: it adds its parser and
sets its handler as `run`. This module lists them, parses, runs the handler and
turns the typed errors into exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sidecar.cli.exitcodes import EXIT_ERROR, EXIT_INVALID, epilog
from sidecar.core.errors import BundleError, StepguardError
from sidecar.core.textsafe import escape

# The engine, bundle loader and tools are imported by the commands that use them:
# `stepguard healthcheck` runs as a Kubernetes probe every few seconds and needs none.


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(probe_only=words[:1] == ["healthcheck"])
    args = parser.parse_args(words)
    try:
        code: int = args.run(args)
    except BundleError as exc:  # any command: the policies do not load
        print(f"stepguard: error: {escape(exc)}", file=sys.stderr)
        return EXIT_INVALID
    except StepguardError as exc:
        print(f"stepguard: error: {escape(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`stepguard test | head`): stop quietly, like other CLIs.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    return code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1 (EXIT_ERROR): 2 means DENY to scripts.

    Subcommand parsers are of this class too (add_subparsers uses the
    parent's class), so each prints its own usage.
    """

    def error(self, message: str) -> Any:  # argparse declares NoReturn
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {escape(message)}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """A command (a parser without subcommands) reports its own unknown flags."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual; keeps the exit-code table of the epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stepguard")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _parser(*, probe_only: bool = False) -> argparse.ArgumentParser:
    """Every command; with `probe_only`, just `healthcheck` (light to import, for probes)."""
    parser = _Parser(
        prog="stepguard",
        description=__doc__.splitlines()[0],
        formatter_class=_HelpFormatter,
        epilog=_general_epilog(),
    )
    parser.add_argument(
        "--version", action="version", version=f"stepguard {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for register in [_probe()] if probe_only else _commands():
        register(sub)
    _add_exit_codes(parser)
    return parser


def _general_epilog() -> str:
    from sidecar.cli import exitcodes

    body = exitcodes.__doc__.split("\n\n")[2] if exitcodes.__doc__ else ""
    return "exit codes:\n" + body


def subcommands(
    parser: argparse.ArgumentParser, path: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (command words, parser) under `parser`, depth first (for help and its test)."""
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words = f"{path} {name}".strip()
                found.append((words, child))
                found.extend(subcommands(child, words))
    return found


def _add_exit_codes(parser: argparse.ArgumentParser) -> None:
    """Each command's --help ends with the exit codes it can return (sidecar/cli/exitcodes.py)."""
    for words, child in subcommands(parser):
        child.epilog = epilog(words) or child.epilog
        child.formatter_class = _HelpFormatter


def _probe() -> Callable[[Any], None]:
    """Just `healthcheck`: a Kubernetes probe runs it every few seconds, so it imports little."""
    from sidecar.cli import healthcheck

    return healthcheck.register


def _commands() -> list[Callable[[Any], None]]:
    """Every command group's `register(subparsers)`, in the order `--help` lists them.

    Each module adds its parser and sets `run` (its handler) with `set_defaults`.
    """
    from sidecar.cli import (
        audit,
        check,
        collect,
        evidence,
        fleet,
        fmt,
        healthcheck,
        plan,
        replay,
        serve,
        ship,
        test,
        validate,
    )

    return [
        serve.register,
        check.register,
        plan.register,
        validate.register,
        audit.register,
        test.register,
        fmt.register,
        replay.register,
        evidence.register,
        ship.register,
        collect.register,
        fleet.register,
        healthcheck.register,
    ]


if __name__ == "__main__":
    raise SystemExit(main())
