"""`stepguard replay`: re-decide recorded audit events against candidate policies.

sidecar/authoring/replay.py reads the trail and decides again; this command
loads the policies, counts lines read on a terminal (sidecar/cli/progress.py),
prints the report as text or JSON and exits 0, 3 (`--fail-on-change`: some
decision would change) or 4 (the candidate or baseline policies do not load).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sidecar.authoring.replay import (
    ALLOW_TO_DENY,
    DENY_TO_ALLOW,
    ReplayReport,
    replay,
    trail_lines,
    trail_sources,
)
from sidecar.cli.exitcodes import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from sidecar.cli.progress import Progress
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.errors import BundleError
from sidecar.core.model import Decision, PolicyErrors
from sidecar.core.progress import counting
from sidecar.core.textsafe import escape, escape_lines


def register(sub: Any) -> None:
    """Add `stepguard replay` to the CLI."""
    cmd = sub.add_parser(
        "replay",
        help="re-decide recorded audit events against candidate policies; report changes",
        description="Replay the decisions of audit trails against candidate policies. "
        "Exit codes: 0 done, 3 with --fail-on-change: some decision would change, "
        "4 the candidate (or baseline) policies do not load.",
    )
    cmd.add_argument(
        "audit_files",
        nargs="+",
        metavar="AUDIT",
        help="a trail's directory or its active file (every rotated segment is read, oldest "
        "first; the chains of many workers as one trail, by time), or JSON lines files "
        "(- stdin, *.gz)",
    )
    cmd.add_argument("--policies", type=Path, required=True, help="the candidate policy directory")
    cmd.add_argument(
        "--baseline",
        type=Path,
        help="compare with this policy directory's decisions instead of the recorded ones",
    )
    cmd.add_argument("--format", choices=("text", "json"), default="text", help="report format")
    cmd.add_argument("--show", type=int, default=20, help="changes to list in text (-1: all)")
    cmd.add_argument("--fail-on-change", action="store_true", help="exit 3 if any decision changes")
    cmd.add_argument(
        "--policy-errors",
        choices=["recorded", *(m.value for m in PolicyErrors)],
        default="recorded",
        help="what a policy that errors does when deciding again: as each event was decided "
        "(recorded, the default; events from before the setting: cedar), or deny / cedar for all",
    )
    cmd.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.policies)
        baseline = load_bundle(args.baseline) if args.baseline else None
    except BundleError as exc:
        print(f"stepguard: invalid policies: {escape_lines(str(exc))}", file=sys.stderr)
        return EXIT_INVALID
    sources = trail_sources(list(args.audit_files))  # StepguardError: exit 1 with the message
    files = [f for chains in sources for chain in chains for f in chain]
    progress = Progress("replay", unit="lines read")  # drawn on a terminal only
    report = replay(
        bundle,
        counting(trail_lines(sources), progress),
        files=files,
        label=str(args.policies),
        baseline=baseline,
        baseline_label=str(args.baseline) if args.baseline else "recorded",
        policy_errors=None
        if args.policy_errors == "recorded"
        else PolicyErrors(args.policy_errors),
    )
    progress.close()
    if args.format == "json":
        print(render_json(report, bundle))
    else:
        print(render_text(report, bundle, args.show))
    return EXIT_FAILED if args.fail_on_change and report.changes else EXIT_OK


def _direction_text(before: Decision, after: Decision) -> str:
    return f"{before.value} -> {after.value}"


def render_text(report: ReplayReport, bundle: Bundle, show: int) -> str:
    """The text report; recorded ids, times and messages come from the trail, so each is
    escaped (sidecar/core/textsafe.py) and cannot forge a line."""
    counts = report.counts()
    lines = [
        f"replayed {report.decisions} decisions from {len(report.files)} file(s) against "
        f"{escape(report.policies)} (revision {escape(report.revision[:12])}), "
        f"compared with {escape(report.baseline)}",
        f"  unchanged: {report.unchanged}",
        f"  changed:   {len(report.changes)} "
        f"(allow->deny {counts[ALLOW_TO_DENY]}, deny->allow {counts[DENY_TO_ALLOW]})",
    ]
    for reason, n in sorted(report.skipped.items()):
        lines.append(f"  skipped:   {n} {escape(reason)}")
    for name in report.files:
        lines.append(f"  read:      {report.read_from[name]} decisions from {escape(name)}")
    if report.redacted:
        lines.append(
            f"  note: {report.redacted} recorded request(s) hold redacted values; "
            "they were replayed with the redacted text"
        )
    if not report.changes:
        lines.append("no decision would change")
        return escape_lines("\n".join(lines))
    for title, key in (("by policy", "policy"), ("by action", "action")):
        lines.append("")
        lines.append(f"{title}:")
        lines.append(f"  {'allow->deny':>11}  {'deny->allow':>11}  {key}")
        for name, c in report.grouped(bundle, key):
            lines.append(f"  {c[ALLOW_TO_DENY]:>11}  {c[DENY_TO_ALLOW]:>11}  {escape(name)}")
    lines.append("")
    shown = report.changes[:show] if show >= 0 else report.changes
    more = len(report.changes) - len(shown)
    lines.append(
        "changes"
        + (f" (first {len(shown)} of {len(report.changes)}; --show N for more)" if more else "")
        + ":"
    )
    for ch in shown:
        r = ch.recorded
        lines.append(
            f"  {escape(r.time)}  {_direction_text(ch.before, ch.after.decision)}  "
            f"{escape(r.request.principal)} {escape(r.request.action)} "
            f"{escape(r.request.resource)}"
        )
        now = escape(ch.invalid or ch.after.summary())
        lines.append(f"      now: {now}   [{escape(r.source)} id {escape(r.id)}]")
        if r.redacted:
            lines.append("      note: the recorded request holds redacted values")
        if r.errors and report.baseline == "recorded":
            lines.append(f"      recorded with server errors: {escape('; '.join(r.errors))}")
    return escape_lines("\n".join(lines))


def render_json(report: ReplayReport, bundle: Bundle) -> str:
    def rows(key: str) -> list[dict[str, Any]]:
        return [
            {key: name, "allow_to_deny": c[ALLOW_TO_DENY], "deny_to_allow": c[DENY_TO_ALLOW]}
            for name, c in report.grouped(bundle, key)
        ]

    counts = report.counts()
    return json.dumps(
        {
            "policies": report.policies,
            "revision": report.revision,
            "compared_with": report.baseline,
            "files": report.files,
            "read_from": [{"file": f, "decisions": report.read_from[f]} for f in report.files],
            "decisions": report.decisions,
            "unchanged": report.unchanged,
            "changed": len(report.changes),
            "allow_to_deny": counts[ALLOW_TO_DENY],
            "deny_to_allow": counts[DENY_TO_ALLOW],
            "skipped": dict(sorted(report.skipped.items())),
            "redacted": report.redacted,
            "by_policy": rows("policy"),
            "by_action": rows("action"),
            "changes": [
                {
                    "id": ch.recorded.id,
                    "time": ch.recorded.time,
                    "source": ch.recorded.source,
                    "principal": str(ch.recorded.request.principal),
                    "action": str(ch.recorded.request.action),
                    "resource": str(ch.recorded.request.resource),
                    "direction": ch.direction,
                    "before": {"decision": ch.before.value, "policies": list(ch.before_reasons)},
                    "after": {
                        "decision": ch.after.decision.value,
                        "policies": [r.id for r in ch.after.reasons],
                        "errors": [e.message for e in ch.after.errors],
                        "reason": ch.invalid or ch.after.summary(),
                    },
                    "attributed_to": ch.policies(bundle),
                    "recorded_revision": ch.recorded.revision,
                    "redacted": ch.recorded.redacted,
                }
                for ch in report.changes
            ],
        },
        indent=2,
    )
