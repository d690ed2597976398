"""Run the example flows once per planned run on Prefect's local engine.

    python run_workflows.py PLAN.json RESULTS.json

Runs in an environment with Prefect (`./dev orchestrators` builds .venv-prefect),
with `examples/` on PYTHONPATH (scripts/evidence_demo.py sets it); a temporary
local Prefect API (SQLite under PREFECT_HOME, loopback only) starts by itself.
Each planned run names its flow, its parameters, the sidecar to ask
(PREFECT_STEPGUARD_TARGET, read by the guard at every check) and the mock
systems that are down during it (EXAMPLE_SYSTEMS_DOWN). A run that fails is a
result, not an error: a leaver whose revocation fails is what the evidence must
show.
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
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    flows = importlib.import_module("identity_flows")

    from prefect import Task
    from prefect.testing.utilities import prefect_test_harness

    for name, value in list(vars(flows).items()):
        if isinstance(value, Task):  # the examples wait 30 s between tries
            setattr(flows, name, value.with_options(retry_delay_seconds=0))

    results: dict[str, Any] = {}
    with prefect_test_harness():
        for run in plan["runs"]:
            os.environ["PREFECT_STEPGUARD_TARGET"] = run["target"]
            os.environ["EXAMPLE_SYSTEMS_DOWN"] = ",".join(run.get("systems_down", []))
            print(f"=== {run['name']}: {run['workflow']} {json.dumps(run['inputs'])}", flush=True)
            state = getattr(flows, run["workflow"])(**run["inputs"], return_state=True)
            if inspect.iscoroutine(state):  # an async flow (the leaver)
                state = asyncio.run(state)
            results[run["name"]] = {
                "run_id": str(state.state_details.flow_run_id),
                "state": {"COMPLETED": "success", "FAILED": "failed"}.get(
                    state.type.value, state.type.value.lower()
                ),
            }
    Path(results_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
