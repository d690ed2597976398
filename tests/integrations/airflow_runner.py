"""Runs the example DAGs with Airflow's own dag.test(), for test_airflow_integration.py.

Runs in .venv-airflow (not under pytest): `python airflow_runner.py PLAN RESULTS`.
The test sets AIRFLOW_HOME, the DAGs folder and PYTHONPATH (for
airflow_local_settings.py). Each scenario points the cluster policy at its
sidecar through AIRFLOW__STEPGUARD__TARGET, which the policy reads at every
check, and names the file the example systems record their effects in.
"""

from __future__ import annotations

import importlib
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

    # A scenario whose sidecar stops between a decision and its outcome: once a
    # task body has changed a system, outcomes go to a stopped sidecar; the
    # task's callbacks (after stepguard's own) point the next task back.
    switch: dict[str, str | None] = {"decide": None, "outcome": None}
    identity_systems = importlib.import_module("identity_systems")  # on PYTHONPATH
    real_record = identity_systems.record

    def record(system: str, action: str, **details: Any) -> None:
        real_record(system, action, **details)
        if switch["outcome"]:
            os.environ["AIRFLOW__STEPGUARD__TARGET"] = switch["outcome"]

    def restore(context: Any) -> None:
        if switch["decide"]:
            os.environ["AIRFLOW__STEPGUARD__TARGET"] = switch["decide"]

    setattr(identity_systems, "record", record)  # noqa: B010 - before the DAG files import it

    db.initdb()
    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    results: dict[str, Any] = {}
    for scenario in plan["scenarios"]:
        dag = bag.get_dag(scenario["workflow"])
        for task in dag.tasks:
            task.retry_delay = timedelta(0)  # the examples wait 30 s between tries
            for kind in ("on_success_callback", "on_failure_callback", "on_retry_callback"):
                callbacks = list(getattr(task, kind) or [])
                if restore not in callbacks:
                    setattr(task, kind, [*callbacks, restore])
        os.environ["AIRFLOW__STEPGUARD__TARGET"] = scenario["target"]
        for key in ("plan_check", "plan_actions"):  # this scenario's settings, or none
            value = scenario.get("settings", {}).get(key)
            if value is None:
                os.environ.pop(f"AIRFLOW__STEPGUARD__{key.upper()}", None)
            else:
                os.environ[f"AIRFLOW__STEPGUARD__{key.upper()}"] = value
        os.environ["EXAMPLE_SYSTEMS_LOG"] = scenario["systems_log"]
        os.environ["EXAMPLE_SYSTEMS_DOWN"] = scenario["systems_down"]
        switch.update(decide=scenario["target"], outcome=scenario["outcome_target"])
        print(f"=== scenario {scenario['name']}", flush=True)
        run = dag.test(run_conf=scenario["inputs"])
        results[scenario["name"]] = {
            "run_id": run.run_id,
            "state": _text(run.state),
            "tasks": {
                _step_id(ti): {
                    "state": _text(ti.state),
                    "attempts": ti.try_number,
                    "step_id": _step_id(ti),
                }
                for ti in run.get_task_instances()
            },
        }
    Path(results_path).write_text(json.dumps(results, indent=1))
    return 0


def _step_id(ti: Any) -> str:
    """What the policy sends as step_id: the task id, with the map index of a mapped task."""
    return ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"


def _text(state: Any) -> str:
    return str(getattr(state, "value", state))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
