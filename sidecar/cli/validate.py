"""`stepguard validate`: every problem in a policy directory, with file, line, column and snippet.

sidecar/authoring/diagnose.py finds the problems and warnings; this prints
them (problems and warnings on stderr, the summary of a valid directory on
stdout, or one JSON document) and exits 0, or 4 when the sidecar would refuse
the directory (with `--strict`, also when it has warnings). Notes (after the
summary, JSON `notes`) never change the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sidecar.cli.exitcodes import EXIT_INVALID, EXIT_OK
from sidecar.core.lifecycle import describe
from sidecar.core.textsafe import escape


def register(sub: Any) -> None:
    """Add `stepguard validate` to the CLI."""
    validate = sub.add_parser("validate", help="load and strictly validate a policy directory")
    validate.add_argument(
        "directory",
        type=Path,
        nargs="?",
        default=Path("policies"),
        help="the policy directory (default: policies)",
    )
    validate.add_argument("--json", action="store_true", help="print the problems as JSON")
    validate.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (policies that can error at run time) as errors: exit 4",
    )
    validate.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Print every problem (stderr), or a one-line summary of a valid directory; 4 if invalid.

    Warnings are printed for a directory that loads; with `--strict` they
    make it invalid (exit 4) too.
    """
    from sidecar.authoring.diagnose import diagnose

    found = diagnose(args.directory)
    bundle, problems, warnings = found.bundle, found.problems, found.warnings
    strict = bool(args.strict)
    ok = found.ok(strict=strict)
    if args.json:
        out: dict[str, Any] = {
            "ok": ok,
            "problems": [p.to_json() for p in problems],
            "warnings": [w.to_json() for w in warnings],
            "strict": strict,
        }
        if bundle is not None:
            out.update(
                policies=bundle.policy_count,
                entities=len(bundle.entity_json),
                revision=bundle.revision,
                files=list(bundle.sources),
                not_read=found.not_read,
                notes=found.notes,
                lifecycle=describe(bundle.lifecycle) if bundle.lifecycle else None,
            )
        print(json.dumps(out, indent=2))
        return EXIT_OK if ok else EXIT_INVALID
    for warning in warnings:
        print(warning.render(), file=sys.stderr)
    if bundle is not None:
        if warnings:
            verdict = (
                "--strict: the policies are refused"
                if strict
                else "they can error at run time (--strict refuses them)"
            )
            print(
                f"{escape(args.directory)}: {len(warnings)} warning(s); {verdict}", file=sys.stderr
            )
        if ok:
            print(
                f"ok: {bundle.policy_count} policies, {len(bundle.entity_json)} entities, "
                f"revision {escape(bundle.revision)}"
            )
            print(_read_lines(bundle.sources, found.not_read))
            for note in found.notes:
                print(f"note: {escape(note)}")
    else:
        for problem in problems:
            print(problem.render(), file=sys.stderr)
        print(
            f"{escape(args.directory)}: {len(problems)} problem(s); "
            "the sidecar refuses these policies",
            file=sys.stderr,
        )
    return EXIT_OK if ok else EXIT_INVALID


def _read_lines(sources: Sequence[str], unread: Sequence[str]) -> str:
    """`read: <files>`, and `not read:` for JSON that is neither schema nor entities."""
    lines = [f"read: {', '.join(escape(name) for name in sources)}"]
    if unread:
        lines.append(
            f"not read: {', '.join(escape(name) for name in unread)} "
            "(entity data is entities.json or *.entities.json)"
        )
    return "\n".join(lines)
