"""`stepguard plan`: pre-flight a run's planned steps locally, as the sidecar would.

The plan file (JSON or YAML; docs/api.md, "Plans") is validated as
`AuthorizePlan` validates it and each step answered ALLOW, DENY (whatever the
unknowns turn out to be) or DEPENDS with the conditions still open, as a
table or JSON. Exit 0 when no step is certainly denied, 2 when one is. Nothing
is recorded; a plan never replaces the decisions made when the steps run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.cli.exitcodes import EXIT_DENY, EXIT_OK
from sidecar.core.errors import StepguardError
from sidecar.core.model import PolicyErrors
from sidecar.core.textsafe import escape

if TYPE_CHECKING:
    from sidecar.decision.plans import Planned


def register(sub: Any) -> None:
    """Add `stepguard plan` to the CLI."""
    from sidecar.cli.exitcodes import epilog

    plan = sub.add_parser(
        "plan",
        help="pre-flight a run's planned steps: ALLOW, DENY or DEPENDS per step",
        epilog=epilog("plan"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("file", type=Path, help="the plan, JSON or YAML (- for stdin, JSON)")
    plan.add_argument(
        "--policies",
        type=Path,
        default=Path("policies"),
        help="policy directory (default: policies)",
    )
    plan.add_argument("--json", action="store_true", help="print the answer as JSON")
    plan.add_argument(
        "--policy-errors",
        choices=[m.value for m in PolicyErrors],
        default=PolicyErrors.DENY.value,
        help="what a policy that errors does: deny (default, as the server) or cedar",
    )
    plan.add_argument(
        "--cedar", action="store_true", help="table: also print each residual as Cedar"
    )
    plan.set_defaults(run=_plan)


def read_plan(path: Path) -> Any:
    """A plan file's data: JSON (`.json`, or stdin) or YAML (aliases refused)."""
    from sidecar.core import safeyaml

    if str(path) == "-":
        text = sys.stdin.read()
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StepguardError(f"plan: invalid JSON on stdin: {exc}") from exc
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StepguardError(f"plan: cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StepguardError(f"plan: {path}: invalid JSON: {exc}") from exc
    try:
        return safeyaml.loads(text)
    except Exception as exc:  # any YAML refusal is bad input
        raise StepguardError(f"plan: {path}: invalid YAML: {exc}") from exc


def _plan(args: argparse.Namespace) -> int:
    from sidecar.core.bundle import load_bundle
    from sidecar.core.event import CallMeta
    from sidecar.core.planreq import plan_from_json, plan_from_proto
    from sidecar.core.validate import Limits
    from sidecar.decision.plans import PlanRecorder, plan_json

    bundle = load_bundle(args.policies)
    data = read_plan(args.file)
    plan = plan_from_proto(plan_from_json(data), bundle, Limits())
    recorder = PlanRecorder(None, _no_clock, policy_errors=PolicyErrors(args.policy_errors))
    planned = recorder.plan(bundle, plan, CallMeta())
    if args.json:
        print(json.dumps(plan_json(planned), indent=2))
    else:
        print(render_plan(planned, cedar=bool(args.cedar)))
    denied = any(v.verdict.value == "DENY" for v in planned.verdicts)
    return EXIT_DENY if denied else EXIT_OK


def _no_clock() -> Any:  # pragma: no cover - nothing is recorded
    raise AssertionError("a local plan is not recorded")


def render_plan(planned: Planned, *, cedar: bool = False) -> str:
    """The table: one line per step, then what each DENY and DEPENDS step hangs on.

    Step ids, policy ids and words come from files, so everything is escaped.
    """
    rows: list[tuple[str, ...]] = [("step", "verdict", "action", "resource", "unknown")]
    for step, verdict in zip(planned.plan.steps, planned.verdicts, strict=True):
        rows.append(
            (
                verdict.step_id,
                verdict.verdict.value,
                step.request.action.id,
                str(step.request.resource),
                ", ".join(verdict.unknown) or "-",
            )
        )
    rows = [tuple(escape(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for verdict in planned.verdicts:
        if verdict.verdict.value == "ALLOW":
            continue
        lines.append("")
        lines.append(f"{escape(verdict.step_id)}: {escape(verdict.reason)}")
        for ref in verdict.determining:
            lines.append(f"  policy {escape(ref.id)} ({escape(ref.source)})")
        for r in verdict.residuals:
            lines.append(f"  open: {r.effect} {escape(r.id)} ({escape(r.source)})")
            if r.description:
                lines.append(f"    {escape(r.description)}")
            if cedar:
                lines.extend(f"    {escape(line)}" for line in r.cedar.splitlines())
    counts = {v: 0 for v in ("ALLOW", "DENY", "DEPENDS")}
    for verdict in planned.verdicts:
        counts[verdict.verdict.value] += 1
    lines.append("")
    lines.append(
        f"{len(planned.verdicts)} step{'' if len(planned.verdicts) == 1 else 's'}: "
        + ", ".join(f"{k} {n}" for k, n in counts.items())
        + f"; revision {escape(planned.revision[:12])}; policy errors: "
        + planned.policy_errors.value
    )
    lines.append("a plan never replaces the decisions: every step is still decided when it runs")
    return "\n".join(lines)
