"""Runs the example flows with Prefect's local engine, for test_prefect_integration.py.

Runs in .venv-prefect (not under pytest): `python prefect_runner.py PLAN RESULTS`.
`prefect_test_harness` gives the flows a temporary local API (SQLite under
PREFECT_HOME, loopback only); each task run's final state is taken from its
on_completion / on_failure hook. Each scenario points the guard at its sidecar
through PREFECT_STEPGUARD_TARGET, which it reads at every check.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any


def main(plan_path: str, results_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    sys.path.insert(0, plan["examples"])  # the mock HR source and systems
    sys.path.insert(0, str(Path(plan["examples"]) / "prefect"))
    flows = importlib.import_module("identity_flows")
    sys.path.insert(0, plan["outcome_kinds"])  # the test's own flow
    kinds = importlib.import_module("prefect_outcome_kinds")

    from prefect import Task
    from prefect.testing.utilities import prefect_test_harness

    # Task-run outcomes are taken from Prefect's own state hooks, in this process:
    # the API records task-run states asynchronously and may lag behind the flow.
    finished: list[dict[str, Any]] = []

    # A scenario whose sidecar stops between a decision and its outcome: once a
    # task body has changed a system, outcomes go to a stopped sidecar; the
    # task run's state hook (after the guard has reported) points the next back.
    switch: dict[str, str | None] = {"decide": None, "outcome": None}
    real_record = flows.record

    def record(system: str, action: str, **details: Any) -> None:
        real_record(system, action, **details)
        if switch["outcome"]:
            os.environ["PREFECT_STEPGUARD_TARGET"] = switch["outcome"]

    setattr(flows, "record", record)  # noqa: B010 - the tasks look it up when they run

    def remember(task: Any, task_run: Any, state: Any) -> None:
        if switch["decide"]:
            os.environ["PREFECT_STEPGUARD_TARGET"] = switch["decide"]
        finished.append(
            {
                "flow_run_id": str(task_run.flow_run_id),
                "name": task.name,
                "state": _state(state.type.value),
                "attempts": task_run.run_count,
                "step_id": str(task_run.id),
            }
        )

    for module in (flows, kinds):
        for name, value in list(vars(module).items()):
            if isinstance(value, Task):  # the examples wait 30 s between tries
                hooked = value.with_options(
                    retry_delay_seconds=0, on_completion=[remember], on_failure=[remember]
                )
                setattr(module, name, hooked)

    results: dict[str, Any] = {}
    with prefect_test_harness():
        for scenario in plan["scenarios"]:
            os.environ["PREFECT_STEPGUARD_TARGET"] = scenario["target"]
            for key in ("plan_check", "plan_actions"):  # this scenario's settings, or none
                value = scenario.get("settings", {}).get(key)
                if value is None:
                    os.environ.pop(f"PREFECT_STEPGUARD_{key.upper()}", None)
                else:
                    os.environ[f"PREFECT_STEPGUARD_{key.upper()}"] = value
            os.environ["EXAMPLE_SYSTEMS_LOG"] = scenario["systems_log"]
            os.environ["EXAMPLE_SYSTEMS_DOWN"] = scenario["systems_down"]
            switch.update(decide=scenario["target"], outcome=scenario["outcome_target"])
            print(f"=== scenario {scenario['name']}", flush=True)
            flow = getattr(flows, scenario["workflow"], None) or getattr(
                kinds, scenario["workflow"]
            )
            state = flow(**scenario["inputs"], return_state=True)
            if inspect.iscoroutine(state):  # an async flow (the leaver)
                state = asyncio.run(state)
            run_id = str(state.state_details.flow_run_id)
            results[scenario["name"]] = {
                "run_id": run_id,
                "state": _state(state.type.value),
                "tasks": {
                    run["name"]: {k: run[k] for k in ("state", "attempts", "step_id")}
                    for run in finished
                    if run["flow_run_id"] == run_id
                },
            }
    Path(results_path).write_text(json.dumps(results, indent=1))
    return 0


def _state(value: str) -> str:
    return {"COMPLETED": "success", "FAILED": "failed"}.get(value, value.lower())


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
