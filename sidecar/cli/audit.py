"""`stepguard audit verify` and `stepguard audit query`, registered by sidecar/cli/main.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sidecar.audit.chain import load_key
from sidecar.audit.chains import chains_to_verify, set_findings, verify_chain, verify_set
from sidecar.audit.query import (
    EntityFilter,
    Query,
    csv_text,
    parse_time,
    row,
    run_query,
    table,
)
from sidecar.audit.verify import EXIT_ERROR, EXIT_OK, Report
from sidecar.audit.workers import TrailSet, collect_sets
from sidecar.cli.fromstore import add_store_flags, trail_paths
from sidecar.cli.progress import Progress
from sidecar.core.errors import StepguardError
from sidecar.core.event import KINDS
from sidecar.core.textsafe import escape, json_text


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="check and search the audit trail")
    sub = audit.add_subparsers(required=True, metavar="COMMAND")

    v = sub.add_parser(
        "verify",
        help="check the hash chain of a whole trail",
        description="Exit codes: 0 intact, 1 cannot verify (nothing to verify, unreadable "
        "or missing files, missing head anchor, missing key), 3 modified (also: a key was "
        "given and the trail claims no key or another one), 4 deleted, 5 inserted (also: a "
        "worker chain its manifest does not list), 6 reordered, 7 truncated (also: the trail "
        "ends before a checkpoint), 8 missing (a trail of many workers: a chain its manifest "
        "lists is not on disk, or the manifest is gone). PATH is a trail's file or directory; "
        "the chains of many workers (DIR/audit.w<i>.jsonl) are verified as one trail.",
    )
    v.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="trail file or directory")
    add_store_flags(v)
    v.add_argument("--key-file", type=Path, help="the HMAC key file the sidecar used")
    v.add_argument(
        "--partial",
        action="store_true",
        help="the first segments were archived on purpose: start at the first one given",
    )
    _trust_flags(v)
    v.add_argument("--json", action="store_true", help="print one JSON report per trail")
    v.set_defaults(run=_verify)

    q = sub.add_parser("query", help="find decisions: who was allowed what, why and when")
    q.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="trail file or directory")
    add_store_flags(q)
    q.add_argument("--principal", action="append", default=[], help='Type::"id" or id pattern')
    q.add_argument("--action", action="append", default=[], help="action id (pattern) or uid")
    q.add_argument("--resource", action="append", default=[], help='Type::"id" or id pattern')
    q.add_argument("--workflow", help="workflow_id")
    q.add_argument("--run", dest="run_id", help="run_id")
    q.add_argument("--step", help="step_id")
    q.add_argument(
        "--decision", choices=("ALLOW", "DENY"), type=str.upper, help="only ALLOW or only DENY"
    )
    q.add_argument("--since", help="RFC 3339 time (inclusive)")
    q.add_argument("--until", help="RFC 3339 time (exclusive)")
    q.add_argument("--id", action="append", default=[], help="decision id")
    q.add_argument(
        "--requester",
        action="append",
        default=[],
        help='context.requester: Type::"id" or id pattern',
    )
    q.add_argument(
        "--approver",
        action="append",
        default=[],
        help='context.approval.approver: Type::"id" or id pattern',
    )
    q.add_argument(
        "--ticket", action="append", default=[], help="context.approval.ticket (pattern)"
    )
    q.add_argument(
        "--type",
        dest="kinds",
        action="append",
        default=[],
        choices=KINDS,
        help="record kind (repeatable; default: decision, or decision and outcome with "
        "--decision-id, outcome with --violation)",
    )
    q.add_argument(
        "--decision-id",
        action="append",
        default=[],
        help="a decision and the outcomes reported for it",
    )
    q.add_argument(
        "--violation",
        action="store_true",
        help="only outcomes flagged as violations (a step that ran without a decision in force)",
    )
    q.add_argument(
        "--all-kinds",
        action="store_true",
        help="also show outcome, segment, recovery, outage and shutdown records",
    )
    q.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table (default; data escaped for the terminal), json (one record a line, "
        "exact) or csv (RFC 4180, escaped like the table, formulas made inert)",
    )
    q.add_argument(
        "--csv", dest="format", action="store_const", const="csv", help="same as --format csv"
    )
    q.add_argument("--verify", action="store_true", help="refuse to answer from a broken trail")
    q.add_argument("--key-file", type=Path, help="HMAC key for --verify")
    _trust_flags(q)
    q.set_defaults(run=_query)


def _trust_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints",
        type=Path,
        metavar="FILE",
        help="the sidecar's --audit-checkpoints file: every checkpointed record must be "
        "in the trail (catches a trail cut and rolled back with its head anchor)",
    )
    parser.add_argument(
        "--accept-missing-anchor",
        action="store_true",
        help="verify a trail whose head anchor is missing (a trail from stdout, or a copy): "
        "a cut at the end then goes unnoticed, and the report says so",
    )


def _verify(args: argparse.Namespace) -> int:
    with trail_paths(args) as paths:
        args.paths = paths
        return _verify_paths(args)


def _verify_paths(args: argparse.Namespace) -> int:
    key = load_key(args.key_file) if args.key_file else None
    code = EXIT_OK
    sets = collect_sets(args.paths)
    if not sets:
        where = ", ".join(str(p) for p in args.paths)
        _cannot_verify(args, where, f"nothing to verify: no trail in {where}")
        return EXIT_ERROR
    for trails in sets:
        reports = set_findings(trails)  # a chain or the manifest missing (many workers)
        for report in reports:
            _print_report(args, report)
        for chain in chains_to_verify(trails):
            try:
                with Progress(f"verify {chain.name}", unit="records") as progress:  # terminal
                    report = verify_chain(
                        trails,
                        chain,
                        key,
                        partial=args.partial,
                        accept_missing_anchor=args.accept_missing_anchor,
                        checkpoints=args.checkpoints,
                        progress=progress,
                    )
            except StepguardError as exc:
                _cannot_verify(args, chain.name, str(exc))
                code = code or EXIT_ERROR
                continue
            _print_report(args, report)
            reports.append(report)
        if trails.multi and not args.json:
            print(_render_set(trails, reports))
        for report in reports:
            if report.problem is not None and code == EXIT_OK:
                code = report.problem.exit_code
    return code


def _print_report(args: argparse.Namespace, report: Report) -> None:
    print(json.dumps(report.to_json(), sort_keys=True) if args.json else _render(report))


def _render_set(trails: TrailSet, reports: list[Report]) -> str:
    """The line under a trail of many chains: one verdict for the trail as a whole."""
    failed = [r for r in reports if r.problem is not None]
    chains = len(trails.chains)
    if not failed:
        records = sum(r.records for r in reports)
        decisions = sum(r.decisions for r in reports)
        line = (
            f"ok: {trails.name}: one trail of {chains} chain(s), {records} records "
            f"({decisions} decisions), every chain the manifest lists is intact"
        )
    else:
        names = ", ".join(Path(r.trail).name for r in failed)
        line = f"FAILED: {trails.name}: one trail of {chains} chain(s); broken or missing: {names}"
    return escape(line)


def _cannot_verify(args: argparse.Namespace, trail: str, error: str) -> None:
    """A trail that could not be verified at all (exit 1), in the output format asked for."""
    if args.json:
        out = {"trail": trail, "ok": False, "exit": EXIT_ERROR, "error": error}
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"stepguard: error: {error}", file=sys.stderr)


def _render(report: Report) -> str:
    """The text report; paths and messages may quote the trail, so escaped (textsafe)."""
    lines = []
    if report.problem is None:
        lines.append(
            f"ok: {report.trail}: {report.records} records ({report.decisions} decisions) in "
            f"{len(report.files)} file(s), chain {report.algorithm}, last seq {report.last_seq}"
        )
    else:
        lines.append(f"FAILED: {report.trail}: {report.problem}")
        lines.append(f"  {report.records} records verified before it")
    lines.extend(f"  note: {n}" for n in report.notes)
    lines.extend(f"  not checked: {n}" for n in report.unchecked)
    return "\n".join(escape(line) for line in lines)


def _kinds(args: argparse.Namespace) -> tuple[str, ...]:
    """The record kinds to show (empty: all)."""
    if args.all_kinds:
        return ()
    if args.kinds:
        return tuple(args.kinds)
    if args.violation:
        return ("outcome",)
    return ("decision", "outcome") if args.decision_id else ("decision",)


def _query(args: argparse.Namespace) -> int:
    with trail_paths(args) as paths:
        args.paths = paths
        return _query_paths(args)


def _query_paths(args: argparse.Namespace) -> int:
    trails = collect_sets(args.paths)
    if args.verify:
        key = load_key(args.key_file) if args.key_file else None
        for one in trails:
            for report in verify_set(
                one,
                key,
                accept_missing_anchor=args.accept_missing_anchor,
                checkpoints=args.checkpoints,
            ):
                if report.problem is not None:
                    problem = escape(report.problem)
                    print(f"stepguard: refusing to query: {problem}", file=sys.stderr)
                    return report.problem.exit_code
    query = Query(
        principals=tuple(EntityFilter.parse(p) for p in args.principal),
        actions=tuple(args.action),
        resources=tuple(EntityFilter.parse(r) for r in args.resource),
        workflow=args.workflow,
        run=args.run_id,
        step=args.step,
        decision=args.decision,
        since=parse_time(args.since, "--since") if args.since else None,
        until=parse_time(args.until, "--until") if args.until else None,
        ids=tuple(args.id),
        kinds=_kinds(args),
        decision_ids=tuple(args.decision_id),
        violations_only=args.violation,
        requesters=tuple(EntityFilter.parse(r) for r in args.requester),
        approvers=tuple(EntityFilter.parse(a) for a in args.approver),
        tickets=tuple(args.ticket),
    )
    found = run_query(trails, query)
    if args.format == "csv":
        for chunk in csv_text(found):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        return EXIT_OK
    if args.format == "json":
        for event in found:
            event.pop("_at", None)
            # ensure_ascii=False leaves C1 controls and bidi overrides raw: escape them too.
            print(json_text(json.dumps(event, sort_keys=True, ensure_ascii=False)))
        return EXIT_OK
    rows = [row(e) for e in found]
    print(table(rows) if rows else "no matching records")
    return EXIT_OK
