"""`stepguard test`: run policy test suites and Cedar's JSON tests, with coverage.

The suites, the runner and the reports are the authoring tools'
(sidecar/authoring/testing/, docs/policy-testing.md); this module is the
command: its flags, the progress line on a terminal, where the report goes,
the exit code (sidecar/cli/exitcodes.py) and the `--watch` loop.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sidecar.authoring.testing import (
    Report,
    Runner,
    discover,
    render_json,
    render_junit,
    render_text,
    summary_line,
)
from sidecar.cli.exitcodes import EXIT_COVERAGE, EXIT_EMPTY, EXIT_FAILED, EXIT_INVALID, EXIT_OK
from sidecar.cli.progress import Progress
from sidecar.core.bundlefiles import fingerprint
from sidecar.core.errors import StepguardError
from sidecar.core.model import PolicyErrors


def register(sub: Any) -> None:
    """Add `stepguard test` to the CLI."""
    cmd = sub.add_parser(
        "test",
        help="run policy test suites (YAML, and Cedar's JSON tests) with coverage",
        description="Run test suites against policies. Exit codes: 0 all passed, "
        "3 a case failed or a suite could not run, 4 policies do not load, "
        "5 no tests found (with --fail-on-empty), 6 coverage below --coverage-min.",
    )
    cmd.add_argument("paths", nargs="*", type=Path, help="suite files or directories (policies)")
    cmd.add_argument(
        "--policies", type=Path, help="run every YAML suite against this directory instead"
    )
    cmd.add_argument(
        "--format", choices=("text", "json", "junit"), default="text", help="report format"
    )
    cmd.add_argument("--output", "-o", type=Path, help="write the report here (default stdout)")
    cmd.add_argument("--filter", help="only cases whose 'suite-file: case name' matches this regex")
    cmd.add_argument("--fail-on-empty", action="store_true", help="exit 5 when no case ran")
    cmd.add_argument("--coverage", action="store_true", help="report coverage per file and line")
    cmd.add_argument(
        "--coverage-min",
        type=float,
        metavar="N",
        help="exit 6 when policy coverage of any policy directory is below N percent",
    )
    cmd.add_argument(
        "--clause-coverage-min",
        type=float,
        metavar="N",
        help="exit 6 when when/unless clause coverage is below N percent",
    )
    cmd.add_argument(
        "--policy-errors",
        choices=[m.value for m in PolicyErrors],
        default=PolicyErrors.DENY.value,
        help="what a policy that errors does: deny (default, as the server: any error "
        "of a policy that could apply makes the case a DENY) or cedar (Cedar's "
        "semantics: the erroring policy is skipped)",
    )
    cmd.add_argument("-v", "--verbose", action="store_true", help="list every suite and case")
    cmd.add_argument(
        "--watch",
        action="store_true",
        help="run again whenever the policies, entities or suites change (Ctrl-C stops: exit 0)",
    )
    cmd.add_argument(
        "--watch-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="--watch: poll period in seconds (default 1)",
    )
    cmd.add_argument(
        "--watch-rounds",
        type=int,
        metavar="N",
        help="--watch: stop after N runs with the last run's exit code (for scripts and tests)",
    )
    cmd.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    if getattr(args, "watch", False):
        return watch_command(args)
    return _run_once(args)[0]


def watch_command(args: argparse.Namespace) -> int:
    """Run, then run again each time the watched files change; Ctrl-C ends it with 0.

    Watched: the directories of the given paths (suites and their fixtures) and
    every policy directory a suite ran against, fingerprinted as the sidecar's
    hot reload does (`bundlefiles.fingerprint`: names and contents, through symlinks).
    Like hot reload, a change is acted on once it has held still for one
    interval, so a half-saved file is not run.
    """
    interval = max(0.01, float(args.watch_interval))
    rounds: int | None = args.watch_rounds
    runs = 0

    def snapshot(directories: Sequence[Path]) -> dict[Path, str]:
        return {d: fingerprint(d) for d in directories}

    directories = _watched(args, None)
    try:
        while True:
            # Taken before the run, so a change made while it runs is seen afterwards.
            before = snapshot(directories)
            code, runner = _run_once(args)
            runs += 1
            directories = _watched(args, runner)
            seen = {d: before.get(d) or fingerprint(d) for d in directories}
            if rounds is not None and runs >= rounds:
                return code
            print(
                f"watching {len(directories)} director{'y' if len(directories) == 1 else 'ies'} "
                "for changes (Ctrl-C stops)",
                file=sys.stderr,
                flush=True,
            )
            while True:
                time.sleep(interval)
                changed = snapshot(directories)
                if changed == seen:
                    continue
                time.sleep(interval)
                if snapshot(directories) == changed:  # held still: run it
                    break
            print("\nchanged: running the suites again\n", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        return EXIT_OK


def _watched(args: argparse.Namespace, runner: Runner | None) -> list[Path]:
    """The given paths' directories, and the policy directories the suites ran against."""
    paths: list[Path] = list(args.paths or [Path("policies")])
    found = {(p if p.is_dir() else p.parent).resolve() for p in paths}
    if runner is not None:
        found.update(runner.directories())
    if args.policies is not None:
        found.add(args.policies.resolve())
    return sorted(found)


def _run_once(args: argparse.Namespace) -> tuple[int, Runner]:
    pattern = None
    if args.filter:
        try:
            pattern = re.compile(args.filter, re.IGNORECASE)
        except re.error as exc:
            raise StepguardError(f"--filter: not a regular expression: {exc}") from exc
    wants_coverage = bool(
        args.coverage or args.coverage_min is not None or args.clause_coverage_min is not None
    )
    runner = Runner(
        policies_override=args.policies,
        case_filter=pattern,
        coverage=wants_coverage,
        policy_errors=PolicyErrors(args.policy_errors),
    )
    found = list(discover(args.paths or [Path("policies")]))
    with Progress("test", total=len(found), unit="suites") as progress:  # a terminal only
        report = runner.run_files(found, on_suite=progress.advance)
    if args.format == "json":
        text = render_json(report)
    elif args.format == "junit":
        text = render_junit(report)
    else:
        text = render_text(
            report, verbose=args.verbose, coverage=wants_coverage, coverage_detail=args.coverage
        )
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
        print(summary_line(report), file=sys.stderr)
    else:
        print(text, flush=True)
    code = exit_code(report, args.fail_on_empty, args.coverage_min, args.clause_coverage_min)
    return code, runner


def exit_code(
    report: Report,
    fail_on_empty: bool,
    coverage_min: float | None = None,
    clause_coverage_min: float | None = None,
) -> int:
    """The first that applies: 4 invalid policies, 3 failures, 5 empty, 6 low coverage, 0."""
    if any(s.invalid_policies for s in report.suites):
        return EXIT_INVALID
    if not all(s.ok for s in report.suites):
        return EXIT_FAILED
    if fail_on_empty and report.cases == 0:
        return EXIT_EMPTY
    if coverage_min is not None and _below(
        (c.policy_percent for c in report.coverage), coverage_min
    ):
        return EXIT_COVERAGE
    if clause_coverage_min is not None and _below(
        (c.clause_percent for c in report.coverage), clause_coverage_min
    ):
        return EXIT_COVERAGE
    return EXIT_OK


def _below(values: Iterable[float], minimum: float) -> bool:
    found = list(values)
    return not found or min(found) + 1e-9 < minimum
