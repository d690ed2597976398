"""Leaver: revoke access, disable the credential, verify that access is gone.

Trigger it with a run conf naming the leaver and who asked:

    {"person": "carol", "requester": "maria"}

Against the example policies (policies/), deprovisioning steps of the owned
`leaver` workflow are never blocked by business hours: a leaver is offboarded
at 03:00 on a Sunday as readily as on a Wednesday morning.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, task
from identity_systems import record

from sidecar.integrations.airflow import record_effect, step

DEPROVISIONER = "spiffe://example.org/ns/identity/sa/deprovisioner"


def deprovisioning(action: str, target: str) -> dict[str, Any]:
    return step(action, target, workload=DEPROVISIONER)


@dag(
    dag_id="leaver",
    schedule=None,
    catchup=False,
    tags=["identity", "stepguard"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
)
def leaver() -> None:
    @task(params=deprovisioning("revoke_access", "okta"))
    def revoke_access(person: str) -> str:
        account = f"{person}@example.org"
        record("okta", "revoke_access", account=account)
        record_effect(identity=account, entitlements_removed=["okta-sso"], account="disabled")
        return account

    @task(params=deprovisioning("disable_credential", "aws-prod"))
    def disable_credential(account: str) -> None:
        record("aws-prod", "disable_credential", account=account)
        record_effect(
            identity=account, credential_revoked=f"cred-{account.split('@', maxsplit=1)[0]}"
        )

    @task(params=deprovisioning("verify_revocation", "okta"))
    def verify_revocation(account: str) -> None:
        record("okta", "verify_revocation", account=account, sessions=0)

    account = revoke_access("{{ dag_run.conf['person'] }}")
    account >> disable_credential(account) >> verify_revocation(account)


leaver()
