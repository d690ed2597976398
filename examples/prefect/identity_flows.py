"""Onboarding and leaver flows for Prefect 3; every task run asks stepguard first.

Run one locally (a temporary Prefect API starts by itself) next to a sidecar,
with `examples/` on PYTHONPATH for the mock HR source and target systems
(examples/identity_systems.py):

    ./dev serve &                  # stepguard on 127.0.0.1:50051
    PYTHONPATH=examples python examples/prefect/identity_flows.py

The flows' `requester`, `approval` and `time_bound` parameters are what the
guard sends as the step's context; the tasks only declare what they do, and
what they changed (`record_effect`), which the guard reports with each task
run's outcome. Onboarding grants what the joiner's HR event lists; the leaver
flow looks up what the person holds on every system and removes each piece,
each removal declaring what it removes before it calls the system, so that the
outcome of one that fails names what was not removed (docs/evidence.md works
through the evidence these runs leave; examples/airflow/dags/leaver.py is the
same workflow for Airflow).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from identity_systems import AccessStillPresent, holdings, hr_event, record
from prefect import flow

from sidecar.integrations.prefect import current_decision, guarded_task, planned, record_effect

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
DEPROVISIONER = "spiffe://example.org/ns/identity/sa/deprovisioner"
NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"
# The Jira connector's own workload, which the example entity store does not
# register: stepguard denies its steps (unregistered-workloads-never-act).
JIRA_CONNECTOR = "spiffe://example.org/ns/atlassian/sa/jira-connector"
RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 30}

log = logging.getLogger(__name__)


class DeprovisioningIncomplete(RuntimeError):
    """At least one removal did not complete: the leaver still holds access."""


# Onboarding --------------------------------------------------------------


@guarded_task("create_account", target="okta", workload=PROVISIONER, **RETRIES)
def create_account(new_hire: str) -> str:
    hr_event("joiner", new_hire)  # only someone HR lists as joining
    account = f"{new_hire}@example.org"
    record("okta", "create_account", account=account)
    record_effect(identity=account, account="created")
    return account


@guarded_task("grant_access", target="github", workload=PROVISIONER, **RETRIES)
def grant_access(account: str) -> None:
    teams = hr_event("joiner", account.split("@", maxsplit=1)[0])["github_teams"]
    for team in teams:
        record("github", "grant_access", account=account, team=team)
    record_effect(identity=account, entitlements_added=teams)


@guarded_task("grant_access", target="jira", workload=PROVISIONER, **RETRIES)
def grant_jira_role(account: str) -> None:
    roles = hr_event("joiner", account.split("@", maxsplit=1)[0])["jira_roles"]
    for role in roles:
        record("jira", "grant_access", account=account, role=role)
    record_effect(identity=account, entitlements_added=roles)


@guarded_task("issue_credential", target="aws-prod", workload=PROVISIONER, **RETRIES)
def issue_credential(account: str) -> None:
    ttl = current_decision().max_credential_ttl
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


@guarded_task("notify", target="slack", workload=NOTIFIER, **RETRIES)
def notify(account: str) -> None:
    record("slack", "notify", account=account, message="welcome aboard")


@flow(name="onboarding")
# Checked when a run starts with PREFECT_STEPGUARD_PLAN_CHECK = warn | enforce.
@planned(create_account, grant_access, grant_jira_role, issue_credential, notify)
def onboarding(
    new_hire: str,
    requester: str,
    approval: dict[str, str] | None = None,
    time_bound: dict[str, str] | None = None,
) -> str:
    account = create_account(new_hire)
    grant_access(account)
    grant_jira_role(account)
    issue_credential(account)
    notify(account)
    return account


# Leaver -------------------------------------------------------------------


@guarded_task("lookup_identity", target="okta", workload=DEPROVISIONER, **RETRIES)
def find_access(person: str) -> str:
    hr_event("leaver", person)  # never offboard someone HR has not let go
    account = f"{person}@example.org"
    record("okta", "lookup_identity", account=account)
    record_effect(identity=account)  # the run acts on this identity
    return account


@guarded_task("revoke_access", target="github", workload=DEPROVISIONER, **RETRIES)
def revoke_access(account: str) -> None:
    teams = holdings(account)["teams"]
    record_effect(identity=account, entitlements_removed=teams)  # what it tries
    for team in teams:
        record("github", "revoke_access", account=account, team=team)


@guarded_task("lookup_identity", target="jira", workload=DEPROVISIONER, **RETRIES)
def find_jira_roles(account: str) -> list[str]:
    roles: list[str] = holdings(account)["jira_roles"]
    return roles


@guarded_task("revoke_access", target="jira", workload=JIRA_CONNECTOR, **RETRIES)
def revoke_jira_role(account: str, role: str) -> None:
    record_effect(identity=account, entitlements_removed=[role])
    record("jira", "revoke_access", account=account, role=role)


@guarded_task("lookup_identity", target="aws-prod", workload=DEPROVISIONER, **RETRIES)
def find_credentials(account: str) -> list[str]:
    credentials: list[str] = holdings(account)["credentials"]
    return credentials


@guarded_task("disable_credential", target="aws-prod", workload=DEPROVISIONER, **RETRIES)
def disable_credential(account: str, credential: str) -> None:
    record_effect(identity=account, credential_revoked=credential)
    record("aws-prod", "disable_credential", account=account, credential=credential)


@guarded_task("delete_account", target="okta", workload=DEPROVISIONER, **RETRIES)
def delete_account(account: str) -> None:
    if holdings(account)["account"]:
        record_effect(identity=account, account="deleted")
        record("okta", "delete_account", account=account)


@guarded_task("verify_revocation", target="okta", workload=DEPROVISIONER, **RETRIES)
async def verify_revocation(account: str) -> None:
    """Async, as a check that polls the target would be; guarded the same way."""
    await asyncio.sleep(0)
    left = {k: v for k, v in holdings(account).items() if v}
    if left:
        raise AccessStillPresent(f"{account} still holds {left}")
    record("okta", "verify_revocation", account=account, sessions=0)


@flow(name="leaver")
@planned(  # every removal the leaver may run; the Jira one is denied for certain (see below)
    find_access,
    revoke_access,
    find_jira_roles,
    revoke_jira_role,
    find_credentials,
    disable_credential,
    delete_account,
    verify_revocation,
)
async def leaver(
    person: str,
    requester: str,
    approval: dict[str, str] | None = None,
    time_bound: dict[str, str] | None = None,
) -> str:
    """An async flow: sync tasks run in it as they are, the async one is awaited.

    Every system is cleared even when a removal on another failed or was
    denied (one task run per Jira role and per credential, none when nothing is
    held); the flow then fails, naming how many did not complete, without the
    verification.
    """
    account = find_access(person)
    states = [revoke_access(account, return_state=True)]
    for role in find_jira_roles(account):
        states.append(revoke_jira_role(account, role, return_state=True))
    for credential in find_credentials(account):
        states.append(disable_credential(account, credential, return_state=True))
    states.append(delete_account(account, return_state=True))
    incomplete = [s for s in states if not s.is_completed()]
    if incomplete:
        raise DeprovisioningIncomplete(
            f"{len(incomplete)} removal(s) for {account} did not complete"
        )
    await verify_revocation(account)
    return account


if __name__ == "__main__":
    onboarding(
        "bob",
        requester="maria",
        approval={"approver": "ines", "approved_at": "2026-11-25T09:00:00Z", "ticket": "CHG-1042"},
    )
