"""Run the example DAGs once per planned run with Airflow's own dag.test().

    python run_workflows.py PLAN.json RESULTS.json

Runs in an environment with Airflow (`./dev orchestrators` builds .venv-airflow);
scripts/evidence_demo.py sets AIRFLOW_HOME, the DAGs folder (examples/airflow/dags)
and PYTHONPATH (examples/airflow for the cluster policy, examples/ for the mock
systems). Each planned run names its DAG, its run conf, the sidecar to ask
(AIRFLOW__STEPGUARD__TARGET, read by the cluster policy at every check) and the
mock systems that are down during it (EXAMPLE_SYSTEMS_DOWN). A run that fails is
a result, not an error: a leaver whose revocation fails is what the evidence
must show.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any


def main(plan_path: str, results_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.initdb()
    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    results: dict[str, Any] = {}
    for run in plan["runs"]:
        dag = bag.get_dag(run["workflow"])
        for task in dag.tasks:
            task.retry_delay = timedelta(0)  # the examples wait 30 s between tries
        os.environ["AIRFLOW__STEPGUARD__TARGET"] = run["target"]
        os.environ["EXAMPLE_SYSTEMS_DOWN"] = ",".join(run.get("systems_down", []))
        print(f"=== {run['name']}: {run['workflow']} {json.dumps(run['inputs'])}", flush=True)
        result = dag.test(run_conf=run["inputs"])
        results[run["name"]] = {
            "run_id": result.run_id,
            "state": str(getattr(result.state, "value", result.state)),
            "tasks": {
                ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": str(
                    getattr(ti.state, "value", ti.state)
                )
                for ti in result.get_task_instances()
            },
        }
    Path(results_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
