"""Leaver: find what the person holds on every system, remove each piece, verify it is gone.

Trigger it with a run conf naming the leaver and who asked:

    {"person": "carol", "requester": "maria"}

`find_access` refuses anyone the HR source does not list as a leaver
(examples/identity_systems.py). Then every system is cleared: all the GitHub
teams the account holds in one task; each Jira role and each aws-prod
credential in a mapped task instance of its own, after a lookup (none when
nothing is held); and the okta account. A removal that fails (its system is
down) fails its task after the retries; the others still run. Each removal
declares what it removes (`record_effect`) before it calls the system, so the
outcome of one that fails names what was not removed. `verify_revocation` runs only when no removal
failed, and fails when anything is left.

Against the example policies (policies/), deprovisioning steps of the owned
`leaver` workflow are never blocked by business hours: a leaver is offboarded
at 03:00 on a Sunday as readily as on a Wednesday morning. The Jira roles are
removed by the Jira connector's own workload, which the example entity store
does not register: stepguard denies each of its steps
(`unregistered-workloads-never-act`), so a leaver who had a Jira role is not
fully deprovisioned, and `stepguard evidence leavers` says so (docs/evidence.md).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, task
from identity_systems import AccessStillPresent, holdings, hr_event, record

from sidecar.integrations.airflow import record_effect, step

DEPROVISIONER = "spiffe://example.org/ns/identity/sa/deprovisioner"
JIRA_CONNECTOR = "spiffe://example.org/ns/atlassian/sa/jira-connector"  # not registered


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
    @task(params=deprovisioning("lookup_identity", "okta"))
    def find_access(person: str) -> str:
        hr_event("leaver", person)  # never offboard someone HR has not let go
        account = f"{person}@example.org"
        record("okta", "lookup_identity", account=account)
        record_effect(identity=account)  # the run acts on this identity
        return account

    @task(params=deprovisioning("revoke_access", "github"))
    def revoke_access(account: str) -> None:
        teams = holdings(account)["teams"]
        record_effect(identity=account, entitlements_removed=teams)  # what it tries
        for team in teams:
            record("github", "revoke_access", account=account, team=team)

    @task(params=deprovisioning("lookup_identity", "jira"))
    def find_jira_roles(account: str) -> list[str]:
        roles: list[str] = holdings(account)["jira_roles"]
        return roles

    # One mapped instance per role (none: skipped, nothing asked).
    @task(params=step("revoke_access", "jira", workload=JIRA_CONNECTOR))
    def revoke_jira_role(account: str, role: str) -> None:
        record_effect(identity=account, entitlements_removed=[role])
        record("jira", "revoke_access", account=account, role=role)

    @task(params=deprovisioning("lookup_identity", "aws-prod"))
    def find_credentials(account: str) -> list[str]:
        credentials: list[str] = holdings(account)["credentials"]
        return credentials

    @task(params=deprovisioning("disable_credential", "aws-prod"))
    def disable_credential(account: str, credential: str) -> None:
        record_effect(identity=account, credential_revoked=credential)
        record("aws-prod", "disable_credential", account=account, credential=credential)

    @task(params=deprovisioning("delete_account", "okta"))
    def delete_account(account: str) -> None:
        if holdings(account)["account"]:
            record_effect(identity=account, account="deleted")
            record("okta", "delete_account", account=account)

    @task(params=deprovisioning("verify_revocation", "okta"), trigger_rule="none_failed")
    def verify_revocation(account: str) -> None:
        left = {k: v for k, v in holdings(account).items() if v}
        if left:
            raise AccessStillPresent(f"{account} still holds {left}")
        record("okta", "verify_revocation", account=account, sessions=0)

    account = find_access("{{ dag_run.conf['person'] }}")
    removals = [
        revoke_access(account),
        revoke_jira_role.partial(account=account).expand(role=find_jira_roles(account)),
        disable_credential.partial(account=account).expand(credential=find_credentials(account)),
        delete_account(account),
    ]
    removals >> verify_revocation(account)


leaver()
