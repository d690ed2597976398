"""The example runs and their evidence, in one command: `./dev evidence-demo [airflow|prefect]`.

What it does, from a fresh clone (./dev has built .venv and the orchestrator's venv):

1. starts two sidecars on loopback, each writing its own audit trail under
   OUT/trails: `joiners`, whose clock is fixed at Wednesday 25 November 2026
   10:00 UTC (`fixed_clock`, non-production: every record says so) so that
   onboarding on the critical targets is inside business hours whenever you run
   this, and `leavers` on the real clock;
2. runs the example workflows (examples/airflow/dags or examples/prefect) on the
   real orchestrator, once per event of the mock HR source
   (examples/hr/people.json): onboarding for each joiner against `joiners`, then
   the leaver workflow for each leaver against `leavers`, with the systems an
   event names under `simulated_outage` down during that run. The tasks change
   the mock target systems, whose state ends in OUT/systems;
3. prints `stepguard evidence leavers` over both trails and writes the
   auditor's report, OUT/evidence.html (`stepguard evidence report --html`).

With the example HR source: alice and bob join, carol joins, alice and bob
leave. Bob's GitHub revocations fail (github is down) and his Jira role's
revocation is denied (the Jira connector's workload is not registered), so
he is the one leaver not fully deprovisioned: revocation confidence 50 %.
docs/evidence.md walks through the output.

    python scripts/evidence_demo.py [airflow|prefect] [--out DIR] [--hr FILE]

Exit status: 0 when the runs happened and the report was written from a trail
that verifies; 1 otherwise (the orchestrator's log is in OUT/orchestrator.log).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
EXAMPLES = ROOT / "examples"
DEFAULT_HR = EXAMPLES / "hr" / "people.json"
# Inside business hours in the example calendar (policies/entities.json).
JOINERS_CLOCK = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
MARK = ".evidence-demo"  # an output directory this script made, which it may clear
RUNNER_TIMEOUT_S = 900


def plan_runs(events: list[dict[str, Any]], targets: dict[str, str]) -> list[dict[str, Any]]:
    """One workflow run per HR event: onboarding for a joiner, the leaver workflow for a leaver."""
    runs = []
    for i, event in enumerate(events):
        person = event["person"]
        if event["type"] == "joiner":
            inputs: dict[str, Any] = {"new_hire": person, "requester": event["requester"]}
            if event.get("approval"):
                inputs["approval"] = event["approval"]
            workflow, sidecar = "onboarding", "joiners"
        elif event["type"] == "leaver":
            inputs = {"person": person, "requester": event["requester"]}
            workflow, sidecar = "leaver", "leavers"
        else:
            raise ValueError(f"HR event {i}: unknown type {event['type']!r} (joiner or leaver)")
        runs.append(
            {
                "name": f"{i + 1:02d}-{event['type']}-{person}",
                "workflow": workflow,
                "inputs": inputs,
                "target": targets[sidecar],
                "systems_down": list(event.get("simulated_outage", [])),
            }
        )
    return runs


@contextmanager
def sidecars(trails: Path) -> Iterator[dict[str, Any]]:
    """The `joiners` (fixed clock) and `leavers` (real clock) sidecars, started in process."""
    from sidecar.serving.config import Settings
    from sidecar.serving.server import Sidecar

    with ExitStack() as stack:
        running: dict[str, Any] = {}
        for name, fixed in (("joiners", JOINERS_CLOCK), ("leavers", None)):
            (trails / name).mkdir(parents=True)
            settings = Settings(
                policies=POLICIES,
                listen="127.0.0.1:0",
                metrics_listen="127.0.0.1:0",
                audit_file=str(trails / name / "audit.jsonl"),
                fixed_clock=fixed,
                non_production=fixed is not None,
            )
            sidecar = Sidecar(settings)
            endpoints = sidecar.start()
            stack.callback(sidecar.stop, 2.0)  # drains and closes the trail
            running[name] = endpoints.tcp
        yield running


def orchestrator_env(name: str, out: Path) -> dict[str, str]:
    """The orchestrator's environment: without this venv's traces, with the examples'."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_CURRENT_TEST"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("STEPGUARD_")}
    env |= {
        "EXAMPLE_SYSTEMS_DIR": str(out / "systems"),
        "EXAMPLE_SYSTEMS_LOG": str(out / "systems.log"),
    }
    if name == "airflow":
        home = out / "orchestrator" / "airflow-home"
        home.mkdir(parents=True)
        env |= {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES / "airflow" / "dags"),
            "PYTHONPATH": f"{EXAMPLES / 'airflow'}{os.pathsep}{EXAMPLES}",
        }
    else:
        home = out / "orchestrator" / "prefect-home"
        home.mkdir(parents=True)
        env |= {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PYTHONPATH": str(EXAMPLES),
        }
    return env


def prepare(out: Path) -> None:
    """An empty output directory, or one this script made before (cleared)."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARK).exists():
            raise SystemExit(f"evidence-demo: {out} is not empty and was not made by this command")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARK).write_text("made by scripts/evidence_demo.py; cleared when it runs again\n")


def run(orchestrator: str, out: Path, hr: Path = DEFAULT_HR) -> int:
    """The whole demonstration; the exit status (0: report written from a verified trail)."""
    from sidecar.cli.main import main as stepguard

    python = ROOT / f".venv-{orchestrator}" / "bin" / "python"
    if not python.exists():
        print(f"evidence-demo: {python} is missing: run ./dev orchestrators", file=sys.stderr)
        return 1
    prepare(out)
    trails = out / "trails"
    events = json.loads(hr.read_text(encoding="utf-8"))["events"]
    env = orchestrator_env(orchestrator, out) | {"EXAMPLE_HR_FILE": str(hr)}
    runner = EXAMPLES / orchestrator / "run_workflows.py"
    with sidecars(trails) as targets:
        plan = {"runs": plan_runs(events, targets)}
        (out / "plan.json").write_text(json.dumps(plan, indent=1))
        print(f"running {len(plan['runs'])} workflow runs on {orchestrator} ...", flush=True)
        with (out / "orchestrator.log").open("w") as log:
            proc = subprocess.run(
                [str(python), str(runner), str(out / "plan.json"), str(out / "runs.json")],
                cwd=out,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=RUNNER_TIMEOUT_S,
                check=False,
            )
    if proc.returncode != 0:
        log_path = out / "orchestrator.log"
        print(
            f"evidence-demo: {runner.name} exited {proc.returncode}; see {log_path}",
            file=sys.stderr,
        )
        return 1
    for name, result in json.loads((out / "runs.json").read_text()).items():
        print(f"  {name}: {result['state']}")
    # As the reader would type them: relative to where the command was run.
    paths = [os.path.relpath(trails / name) for name in ("joiners", "leavers")]
    html = out / "evidence.html"
    print(f"\n$ stepguard evidence leavers {' '.join(paths)} --policies policies", flush=True)
    code = stepguard(["evidence", "leavers", *paths, "--policies", str(POLICIES)])
    sys.stdout.flush()
    code = max(
        code,
        stepguard(
            [
                "evidence",
                "report",
                *paths,
                "--policies",
                str(POLICIES),
                "--html",
                os.path.relpath(html),
            ]
        ),
    )
    print(f"\nthe auditor's report: {os.path.relpath(html)}")
    return 0 if code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev evidence-demo",
        description="Run the example joiner and leaver workflows on a real orchestrator and "
        "write the evidence report from the trails they leave.",
    )
    parser.add_argument(
        "orchestrator", nargs="?", choices=("airflow", "prefect"), default="airflow"
    )
    parser.add_argument("--out", type=Path, default=Path("evidence-demo"), help="output directory")
    parser.add_argument("--hr", type=Path, default=DEFAULT_HR, help="the mock HR source")
    args = parser.parse_args(argv)
    return run(args.orchestrator, args.out.resolve(), args.hr.resolve())


if __name__ == "__main__":
    sys.exit(main())
