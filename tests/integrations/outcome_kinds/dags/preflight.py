"""A DAG whose second step is certainly denied (the provisioner may not revoke access):
what `[stepguard] plan_check` does when its run starts. Loaded by airflow_runner.py."""

from __future__ import annotations

from airflow.sdk import dag, task
from identity_systems import record  # examples/identity_systems.py

from sidecar.integrations.airflow import step

NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"
PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"


@dag(dag_id="preflight", schedule=None, catchup=False, default_args={"retries": 0})  # type: ignore[untyped-decorator]
def preflight() -> None:
    @task(params=step("notify", "slack", workload=NOTIFIER))  # type: ignore[untyped-decorator]
    def announce() -> None:
        record("slack", "notify", about="leaver")

    @task(params=step("revoke_access", "okta", workload=PROVISIONER))  # type: ignore[untyped-decorator]
    def revoke() -> None:
        record("okta", "revoke_access", account="carol@example.org")

    announce() >> revoke()


preflight()
