"""`stepguard evidence`: who got access, why, and when it was removed (docs/evidence.md).

The trails are verified as `audit verify` does, loaded into SQLite and
replayed (sidecar/evidence/); this command parses flags, loads the bundle's
lifecycle when `--policies` is given, and prints one answer as a table, JSON
or CSV, or writes the HTML report. Exit codes: 0 done on an intact trail, 1
bad input, 3 the trail does not verify (the answer is still printed and says
so), 4 the policies do not load.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sidecar.audit.chain import load_key
from sidecar.audit.query import spreadsheet_safe
from sidecar.cli.exitcodes import EXIT_ERROR, EXIT_FAILED, EXIT_INVALID, EXIT_OK
from sidecar.cli.fromstore import add_store_flags, trail_paths
from sidecar.cli.progress import Progress
from sidecar.core.errors import BundleError, StepguardError
from sidecar.core.textsafe import escape, escape_lines
from sidecar.evidence import answers, offboarding
from sidecar.evidence.ingest import parse_time
from sidecar.evidence.options import Deadlines, Options
from sidecar.evidence.report import DEFAULT_ROWS, render_html
from sidecar.evidence.store import Store, open_store

# The answers, by subcommand: (help, function of the store and the parsed flags).
ANSWERS: dict[str, tuple[str, Callable[[Store, argparse.Namespace], answers.Answer]]] = {
    "inventory": (
        "every identity-changing workflow seen: owner, actions, whether it needs approval",
        lambda store, args: answers.inventory(store),
    ),
    "access": (
        "who holds what now according to the evidence, since when, granted by whom",
        lambda store, args: answers.access(store, args.identity or "", args.target or ""),
    ),
    "open-grants": (
        "access granted and never removed, its age and how late its removal is",
        lambda store, args: answers.open_grants(store),
    ),
    "leavers": (
        "leavers not fully deprovisioned, removals that missed their deadline, "
        "credentials past expiry never revoked",
        lambda store, args: offboarding.leavers(store, everything=args.all),
    ),
    "exceptions": (
        "violations, break-glass decisions, denied steps that ran, failed revocations, retries",
        lambda store, args: answers.exceptions(store),
    ),
}


def register(subparsers: Any) -> None:
    """Add `stepguard evidence` and its answers to the CLI."""
    evidence = subparsers.add_parser(
        "evidence",
        help="answer who got access, why, and when it was removed, from audit trails",
        description="Verify audit trails (as `audit verify` does), load their decisions and "
        "outcomes into an embedded SQLite store, and answer an auditor's questions. "
        "docs/evidence.md explains every answer.",
    )
    sub = evidence.add_subparsers(required=True, metavar="ANSWER")
    for name, (text, _) in ANSWERS.items():
        cmd = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _common(cmd)
        out = cmd.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="print the answer as one JSON object")
        out.add_argument("--csv", action="store_true", help="print the answer as RFC 4180 CSV")
        if name == "access":
            cmd.add_argument("--identity", help='only this identity: Type::"id" or the bare id')
            cmd.add_argument("--target", help="only this target system")
        if name == "leavers":
            cmd.add_argument(
                "--all", action="store_true", help="also list the accesses removed in time"
            )
        cmd.set_defaults(run=_answer, answer=name)
    report = sub.add_parser(
        "report",
        help="write one self-contained HTML report for an auditor",
        description="Write the evidence as one HTML file that loads nothing from elsewhere: "
        "revocation confidence, time to revoke per target, open grants, leavers, violations.",
    )
    _common(report)
    report.add_argument(
        "--html", type=Path, required=True, metavar="OUT", help="the HTML file to write"
    )
    shown = report.add_mutually_exclusive_group()
    shown.add_argument(
        "--rows",
        type=_positive,
        default=DEFAULT_ROWS,
        metavar="N",
        help=f"at most N rows per table (default {DEFAULT_ROWS}); the figures count them all",
    )
    shown.add_argument(
        "--all-rows",
        action="store_true",
        help="every row in every table (a large trail's "
        "report then takes a browser minutes to open)",
    )
    report.set_defaults(run=_report)


def _positive(text: str) -> int:
    """A count of at least 1 (argparse names the flag when it is not)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1 (--all-rows: every row)")
    return value


def _common(cmd: argparse.ArgumentParser) -> None:
    add_store_flags(cmd)
    cmd.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="a trail's directory or file (every rotated segment; the chains of many workers "
        "as one trail); several sidecars' trails at once",
    )
    cmd.add_argument(
        "--policies",
        type=Path,
        help="the policy bundle whose lifecycle.yaml says which actions create and remove "
        "access and which leaver workflows there are",
    )
    cmd.add_argument(
        "--leaver-workflow",
        action="append",
        default=[],
        metavar="ID",
        help="a workflow id whose runs are leaver runs (default: the bundle's, else leaver)",
    )
    cmd.add_argument(
        "--deadline",
        action="append",
        default=[],
        metavar="NAME=DURATION",
        help="how long a removal may take after the access ended, per target or sensitivity "
        "(high=PT24H, github=PT1H) or * for the rest; default: the grant's @revoke_within",
    )
    cmd.add_argument("--now", help="RFC 3339 time to answer at (default: now)")
    cmd.add_argument("--key-file", type=Path, help="the HMAC key file the sidecar used")
    cmd.add_argument(
        "--checkpoints", type=Path, metavar="FILE", help="the sidecar's --audit-checkpoints file"
    )
    cmd.add_argument(
        "--accept-missing-anchor",
        action="store_true",
        help="verify a trail whose head anchor is missing (a copy, or a trail from stdout)",
    )
    cmd.add_argument(
        "--db",
        metavar="FILE",
        default=":memory:",
        help="keep the SQLite store in this (new) file instead of in memory",
    )


def _load(args: argparse.Namespace) -> Store:
    """The store the flags describe; BundleError, StepguardError to the caller."""
    lifecycle = None
    if args.policies is not None:
        from sidecar.core.bundle import load_bundle

        lifecycle = load_bundle(args.policies).lifecycle
    now = parse_time(args.now) if args.now else datetime.now(UTC)
    options = Options(
        now=now,
        lifecycle=lifecycle,
        deadlines=Deadlines.parse(args.deadline),
        leaver_workflows=frozenset(args.leaver_workflow),
    )
    if args.db != ":memory:" and Path(args.db).exists():
        raise StepguardError(f"--db {args.db}: the file exists; give a new one")
    key = load_key(args.key_file) if args.key_file else None
    # A large trail's load takes minutes: on a terminal, stderr says what it is doing
    # (erased before the answer is printed).
    with Progress("evidence", stage="reading the trails") as progress:
        return open_store(
            args.paths,
            options,
            key=key,
            accept_missing_anchor=args.accept_missing_anchor,
            checkpoints=args.checkpoints,
            database=args.db,
            progress=progress.show,
        )


def _guarded(args: argparse.Namespace, then: Callable[[Store], int]) -> int:
    with trail_paths(args) as paths:
        args.paths = paths
        return _guarded_paths(args, then)


def _guarded_paths(args: argparse.Namespace, then: Callable[[Store], int]) -> int:
    try:
        store = _load(args)
    except BundleError as exc:
        print(f"stepguard: invalid policies: {escape_lines(str(exc))}", file=sys.stderr)
        return EXIT_INVALID
    except (StepguardError, ValueError) as exc:
        print(f"stepguard: error: {escape(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    try:
        code = then(store)
    finally:
        store.close()
    if code == EXIT_OK and not store.verification.ok:
        print(f"stepguard: {escape(store.verification.summary())}", file=sys.stderr)
        return EXIT_FAILED
    return code


def _answer(args: argparse.Namespace) -> int:
    def show(store: Store) -> int:
        answer = ANSWERS[args.answer][1](store, args)
        if args.json:
            print(json.dumps(answer.to_json(), sort_keys=True, default=str))
        elif args.csv:
            sys.stdout.write(csv_text(answer))
        else:
            print(text(answer))
        return EXIT_OK

    return _guarded(args, show)


def _report(args: argparse.Namespace) -> int:
    def write(store: Store) -> int:
        html = render_html(store, rows=None if args.all_rows else args.rows)
        try:
            args.html.write_text(html, encoding="utf-8")
        except OSError as exc:
            print(f"stepguard: error: cannot write {args.html}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"wrote {escape(str(args.html))}: {escape(store.verification.summary())}")
        return EXIT_OK

    return _guarded(args, write)


def cell(value: Any) -> str:
    """One value as table or CSV text: lists joined by spaces, None as nothing."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# How many items of a long list (`Answer.lists`) a table cell shows; --json and --csv
# carry every one.
TABLE_LIST_ITEMS = 5


def text(answer: answers.Answer) -> str:
    """The verification line, the table, and the summary; every cell escaped (trail data)."""
    head = [*answer.columns, "evidence"]
    body = [
        [escape(_capped(cell(r.get(c))) if c in answer.lists else cell(r.get(c))) for c in head]
        for r in answer.rows
    ]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(head)]
    lines = [escape(answer.verification.summary())]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    for r in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    summary = ", ".join(f"{k}: {cell(v)}" for k, v in answer.summary.items())
    lines.append(f"{len(body)} row(s)" + (f"; {escape(summary)}" if summary else ""))
    return "\n".join(lines)


def _capped(joined: str) -> str:
    """A list's first TABLE_LIST_ITEMS items, and how many more there are."""
    items = joined.split(answers.LIST_SEP)
    if len(items) <= TABLE_LIST_ITEMS:
        return joined
    more = len(items) - TABLE_LIST_ITEMS
    shown = answers.LIST_SEP.join(items[:TABLE_LIST_ITEMS])
    return f"{shown}{answers.LIST_SEP}... and {more:,} more (--json or --csv: all)"


def csv_text(answer: answers.Answer) -> str:
    """RFC 4180 CSV; the `verified` column carries the trail's verification on every row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    head = [*answer.columns, "evidence"]
    writer.writerow([*head, "verified"])
    verified = "ok" if answer.verification.ok else "BROKEN"
    for r in answer.rows:
        writer.writerow([*(spreadsheet_safe(cell(r.get(c))) for c in head), verified])
    return buffer.getvalue()
