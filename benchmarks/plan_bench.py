"""Plan latency (issue 21): pre-flighting plans of 10 and 100 steps, against deciding them.

    python -m benchmarks.plan_bench [--rounds 8] [--write]

In one process, on the example bundle (policies/): a plan of N steps is the
steps of a joiner, a leaver and a weekend-prone run repeated to N (a third
certain ALLOW, some certain DENY, the critical-target steps DEPENDS on the
time), with `now` unknown as in a real pre-flight. Each round times, one
after the other on the same steps:

- plan: `planreq.plan_from_proto` (validation, each unknown checked against
  the schema) and `plan.plan_steps` (Cedar's partial evaluation, residuals
  simplified and put in words): what `AuthorizePlan` does before its trail
  write;
- baseline: the same N requests decided one by one as a miss is (validation
  and `engine.evaluate`, at one fixed time), which is what running the steps
  costs the sidecar's core.

The ratio plan / baseline is taken round by round (the machine's drift
cancels within a round) and reported as the median with a 95% bootstrap
interval (benchmarks/stats.py). No gRPC, no trail: both sides are the core's
work only. `--write` records the block in benchmarks/RESULTS.md and the raw
figures in benchmarks/data/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.results import save_data, table, write_block
from benchmarks.stats import paired_ratio
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.jsonreq import request_from_json
from sidecar.core.plan import plan_steps
from sidecar.core.planreq import plan_from_json, plan_from_proto
from sidecar.core.validate import Limits, request_from_proto

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
PROVISIONER = {"type": "Workload", "id": "spiffe://example.org/ns/identity/sa/provisioner"}
DEPROVISIONER = {"type": "Workload", "id": "spiffe://example.org/ns/identity/sa/deprovisioner"}
NOTIFIER = {"type": "Workload", "id": "spiffe://example.org/ns/comms/sa/notifier"}
ONBOARDING = {
    "requester": {"type": "User", "id": "maria"},
    "workflow_id": "onboarding",
    "approval": {
        "approver": {"type": "User", "id": "ines"},
        "approved_at": "2026-11-25T09:00:00Z",
        "ticket": "CHG-1",
    },
    "attributes": {"workflow": {"__entity": {"type": "Workflow", "id": "onboarding"}}},
}
LEAVER = {
    "requester": {"type": "User", "id": "maria"},
    "workflow_id": "leaver",
    "attributes": {"workflow": {"__entity": {"type": "Workflow", "id": "leaver"}}},
}
# (principal, action, target, context): a joiner run, a leaver run, critical targets.
TEMPLATE = [
    (PROVISIONER, "create_account", "jira", ONBOARDING),
    (PROVISIONER, "grant_access", "github", ONBOARDING),
    (PROVISIONER, "issue_credential", "aws-prod", ONBOARDING),
    (NOTIFIER, "notify", "slack", ONBOARDING),
    (DEPROVISIONER, "revoke_access", "okta", LEAVER),
    (PROVISIONER, "revoke_access", "okta", LEAVER),
    (DEPROVISIONER, "disable_credential", "aws-prod", LEAVER),
    (PROVISIONER, "grant_access", "okta", ONBOARDING),
    (PROVISIONER, "change_access", "google-workspace", ONBOARDING),
    (PROVISIONER, "lookup_identity", "okta", ONBOARDING),
]


def plan_of(n: int) -> dict[str, Any]:
    steps = []
    for i in range(n):
        principal, action, target, context = TEMPLATE[i % len(TEMPLATE)]
        ctx = copy.deepcopy(context) | {"run_id": "bench-run", "step_id": f"s{i}"}
        steps.append(
            {
                "step_id": f"s{i}",
                "principal": principal,
                "action": {"type": "Action", "id": action},
                "resource": {"type": "TargetSystem", "id": target},
                "context": ctx,
            }
        )
    return {"run_id": "bench-run", "workflow_id": "bench", "steps": steps}


def time_plan(bundle: Bundle, plan: dict[str, Any]) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    planned = plan_from_proto(plan_from_json(plan), bundle, Limits())
    verdicts = plan_steps(bundle, planned.steps)
    elapsed = time.perf_counter() - started
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict.value] = counts.get(v.verdict.value, 0) + 1
    return elapsed, counts


def time_decisions(bundle: Bundle, plan: dict[str, Any]) -> float:
    keys = ("principal", "action", "resource", "context")
    requests = [{k: s[k] for k in keys} for s in plan["steps"]]
    started = time.perf_counter()
    for request in requests:
        model = request_from_proto(request_from_json(request), bundle, Limits(), now=WEDNESDAY_10)
        evaluate(bundle, model)
    return time.perf_counter() - started


def measure(bundle: Bundle, sizes: list[int], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    plans = {n: plan_of(n) for n in sizes}
    for n in sizes:  # warm-up: the probe cache, cedarpy's first calls
        time_plan(bundle, plans[n])
        time_decisions(bundle, plans[n])
    for n in sizes:
        plan_s: list[float] = []
        base_s: list[float] = []
        counts: dict[str, int] = {}
        for r in range(rounds):
            if r % 2:  # alternate which side goes first
                base_s.append(time_decisions(bundle, plans[n]))
                elapsed, counts = time_plan(bundle, plans[n])
                plan_s.append(elapsed)
            else:
                elapsed, counts = time_plan(bundle, plans[n])
                plan_s.append(elapsed)
                base_s.append(time_decisions(bundle, plans[n]))
        ratio = paired_ratio(plan_s, base_s)
        out[str(n)] = {
            "steps": n,
            "plan_s": plan_s,
            "decide_one_by_one_s": base_s,
            "verdicts": counts,
            "ratio": {"median": ratio.median, "low": ratio.low, "high": ratio.high},
        }
    return out


def render(record: dict[str, Any], data: Path) -> str:
    m = record["machine"]
    rows = []
    for entry in record["sizes"].values():
        plan_ms = statistics.median(entry["plan_s"]) * 1000
        base_ms = statistics.median(entry["decide_one_by_one_s"]) * 1000
        ratio = entry["ratio"]
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(entry["verdicts"].items()))
        rows.append(
            [
                str(entry["steps"]),
                f"{plan_ms:,.1f} ms",
                f"{plan_ms * 1000 / entry['steps']:,.0f} us",
                f"{base_ms:,.1f} ms",
                f"{ratio['median']:.2f}x ({ratio['low']:.2f} to {ratio['high']:.2f})",
                verdicts,
            ]
        )
    return "\n".join(
        [
            "## Plan latency (issue 21)",
            "",
            f"Command: `{record['command']}`, run {record['started']} on commit "
            f"{record['commit']}; data: `{data.relative_to(ROOT)}`. Machine: {m['nproc']} CPUs, "
            f"{m['cpu']}, Python {m['python']}, cedarpy {m['cedarpy']}; load average "
            f"{record['load_average'][0]} at the start, {record['load_average'][1]} at the end. "
            f"{record['rounds']} interleaved rounds per size; medians, and the paired ratio's "
            "95% bootstrap interval.",
            "",
            "In one process, on the example bundle: *plan* validates the plan (each unknown "
            "checked against the schema) and pre-flights every step with `now` unknown "
            "(`plan_from_proto` + `plan_steps`: Cedar's partial evaluation, residuals "
            "simplified and put in words), as `AuthorizePlan` does before writing its trail "
            "event; the *baseline* decides the same steps one by one as misses (validation + "
            "`evaluate`, at a fixed time). No gRPC, no trail on either side. A warm-up pass "
            "comes first on both sides, as in a server that has answered runs before: the "
            "residuals' Cedar printing and the datetime literals they repeat are cached in "
            "the process (`core/residualtext.py`, `core/residual.py`).",
            "",
            table(
                [
                    "steps",
                    "plan (median)",
                    "plan per step",
                    "decided one by one (median)",
                    "plan / one by one",
                    "verdicts",
                ],
                rows,
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    commit = machine.commit()
    load_before = os.getloadavg()[0]
    bundle = load_bundle(ROOT / "policies")
    sizes = measure(bundle, args.sizes, args.rounds)
    command = "python -m benchmarks.plan_bench " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write"
    )
    record: dict[str, Any] = {
        "command": command.strip(),
        "started": started,
        "commit": commit,
        "machine": machine.describe(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rounds": args.rounds,
        "sizes": sizes,
    }
    for entry in sizes.values():
        print(json.dumps({k: v for k, v in entry.items() if k in ("steps", "ratio", "verdicts")}))
    if args.write:
        data = save_data("plan-bench", started, record)
        write_block(RESULTS, "plan-bench", record["command"], render(record, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
