"""A DAG whose guarded tasks end in the ways the examples never do: skipped by
their own code, and stopped by Airflow's execution_timeout. Loaded by
airflow_runner.py from this folder, so the cluster policy applies."""

from __future__ import annotations

import time
from datetime import timedelta

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException

from sidecar.integrations.airflow import step

NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"


@dag(dag_id="outcome_kinds", schedule=None, catchup=False, default_args={"retries": 0})  # type: ignore[untyped-decorator]
def outcome_kinds() -> None:
    @task(params=step("notify", "slack", workload=NOTIFIER))  # type: ignore[untyped-decorator]
    def nothing_to_send() -> None:
        raise AirflowSkipException("nobody to notify")

    @task(  # type: ignore[untyped-decorator]
        params=step("notify", "slack", workload=NOTIFIER),
        execution_timeout=timedelta(seconds=1),
        trigger_rule="all_done",
    )
    def slow_send() -> None:
        for _ in range(100):  # interrupted after 1 s, between two short sleeps at worst
            time.sleep(0.05)

    nothing_to_send() >> slow_send()


outcome_kinds()
