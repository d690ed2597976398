"""Runs the example flows with Prefect's local engine, for tests/test_prefect_integration.py.

Runs in .venv-prefect (not under pytest): `python prefect_runner.py PLAN RESULTS`.
`prefect_test_harness` gives the flows a temporary local API (SQLite under
PREFECT_HOME, loopback only). Each scenario points the guard at its sidecar
through PREFECT_STEPGUARD_TARGET, which it reads at every check.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any


def main(plan_path: str, results_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    sys.path.insert(0, str(Path(plan["examples"]) / "prefect"))
    flows = importlib.import_module("identity_flows")

    from prefect import Task, get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.testing.utilities import prefect_test_harness

    for name, value in list(vars(flows).items()):
        if isinstance(value, Task):  # the examples wait 30 s between tries
            setattr(flows, name, value.with_options(retry_delay_seconds=0))

    results: dict[str, Any] = {}
    with prefect_test_harness():
        for scenario in plan["scenarios"]:
            os.environ["PREFECT_STEPGUARD_TARGET"] = scenario["target"]
            os.environ["EXAMPLE_SYSTEMS_LOG"] = scenario["systems_log"]
            print(f"=== scenario {scenario['name']}", flush=True)
            flow = getattr(flows, scenario["workflow"])
            state = flow(**scenario["inputs"], return_state=True)
            run_id = state.state_details.flow_run_id
            with get_client(sync_client=True) as client:
                task_runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
                )
            results[scenario["name"]] = {
                "run_id": str(run_id),
                "state": _state(state.type.value),
                "tasks": {
                    run.name.rsplit("-", 1)[0]: {
                        "state": _state(run.state_type.value),
                        "attempts": run.run_count,
                        "step_id": str(run.id),
                    }
                    for run in task_runs
                },
            }
    Path(results_path).write_text(json.dumps(results, indent=1))
    return 0


def _state(value: str) -> str:
    return {"COMPLETED": "success", "FAILED": "failed"}.get(value, value.lower())


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
