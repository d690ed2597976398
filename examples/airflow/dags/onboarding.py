"""Onboarding: create the account, grant what HR lists, issue a short-lived credential, notify.

The DAG code only declares what each task does (`params=step(...)`) and what
it changed (`record_effect`); the cluster policy in airflow_local_settings.py
asks stepguard before each task and reports its outcome after it. The GitHub
teams and Jira roles come from the new hire's joiner event in the HR source
(examples/identity_systems.py; `examples/` and `examples/airflow/` on
PYTHONPATH). Trigger it with a run conf naming the new hire, who asked, and
who approved:

    {"new_hire": "bob", "requester": "maria",
     "approval": {"approver": "ines", "approved_at": "2026-11-25T09:00:00Z",
                  "ticket": "CHG-1042"}}

Against the example policies (policies/): the identity-changing steps need an
approval by an identity approver who is not the requester, and on a critical
target (okta, aws-prod) outside business hours a break-glass approval.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task
from identity_systems import hr_event, record

from sidecar.integrations.airflow import record_effect, step, step_decision

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"


def provisioning(action: str, target: str) -> dict[str, Any]:
    return step(action, target, workload=PROVISIONER)


@dag(
    dag_id="onboarding",
    schedule=None,
    catchup=False,
    tags=["identity", "stepguard"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
)
def onboarding() -> None:
    @task(params=provisioning("create_account", "okta"))
    def create_account(new_hire: str) -> str:
        hr_event("joiner", new_hire)  # only someone HR lists as joining
        account = f"{new_hire}@example.org"
        record("okta", "create_account", account=account)
        record_effect(identity=account, account="created")
        return account

    @task(params=provisioning("grant_access", "github"))
    def grant_access(account: str) -> None:
        teams = hr_event("joiner", account.split("@", maxsplit=1)[0])["github_teams"]
        for team in teams:
            record("github", "grant_access", account=account, team=team)
        record_effect(identity=account, entitlements_added=teams)

    @task(params=provisioning("grant_access", "jira"))
    def grant_jira_role(account: str) -> None:
        roles = hr_event("joiner", account.split("@", maxsplit=1)[0])["jira_roles"]
        for role in roles:
            record("jira", "grant_access", account=account, role=role)
        record_effect(identity=account, entitlements_added=roles)

    @task(params=provisioning("issue_credential", "aws-prod"))
    def issue_credential(account: str) -> None:
        ttl = step_decision().max_credential_ttl
        if ttl is None:
            raise ValueError("stepguard set no credential TTL: refusing an unbounded credential")
        issued_at = datetime.now(UTC)
        credential = f"cred-{account.split('@', maxsplit=1)[0]}-{issued_at:%Y%m%d%H%M%S}"
        expires_at = issued_at + ttl
        record(
            "aws-prod",
            "issue_credential",
            account=account,
            credential=credential,
            expires_at=expires_at.isoformat(),
            ttl_s=int(ttl.total_seconds()),
        )
        record_effect(
            identity=account,
            credential_issued=credential,
            issued_at=issued_at,
            expires_at=expires_at,
        )

    @task(params=step("notify", "slack", workload=NOTIFIER))
    def notify(account: str) -> None:
        record("slack", "notify", account=account, message="welcome aboard")

    account = create_account("{{ dag_run.conf['new_hire'] }}")
    granted = [grant_access(account), grant_jira_role(account)]
    granted >> issue_credential(account) >> notify(account)


onboarding()
