"""Onboarding and leaver flows for Prefect 3; every task run asks stepguard first.

Run one locally (a temporary Prefect API starts by itself) next to a sidecar:

    ./dev serve &                  # stepguard on 127.0.0.1:50051
    python examples/prefect/identity_flows.py

The flows' `requester`, `approval` and `time_bound` parameters are what the
guard sends as the step's context; the tasks only declare what they do, and
what they changed (`record_effect`), which the guard reports with each task
run's outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from prefect import flow

from sidecar.integrations.prefect import current_decision, guarded_task, planned, record_effect

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
DEPROVISIONER = "spiffe://example.org/ns/identity/sa/deprovisioner"
NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"
RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 30}

log = logging.getLogger(__name__)


class TargetSystemDown(ConnectionError):
    """The target system did not answer: the step failed and changed nothing."""


def record(system: str, action: str, **details: Any) -> None:
    """Stand-in for a target system: one JSON line in EXAMPLE_SYSTEMS_LOG, when set;
    a system named in EXAMPLE_SYSTEMS_DOWN (comma-separated) is down and raises."""
    if system in os.environ.get("EXAMPLE_SYSTEMS_DOWN", "").split(","):
        raise TargetSystemDown(f"{system} is down: {action} not done")
    entry = {"system": system, "action": action, **details}
    log.info("%s: %s %s", system, action, details)
    path = os.environ.get("EXAMPLE_SYSTEMS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")


# Onboarding --------------------------------------------------------------


@guarded_task("create_account", target="okta", workload=PROVISIONER, **RETRIES)
def create_account(new_hire: str) -> str:
    account = f"{new_hire}@example.org"
    record("okta", "create_account", account=account)
    record_effect(identity=account, account="created")
    return account


@guarded_task("grant_access", target="github", workload=PROVISIONER, **RETRIES)
def grant_access(account: str) -> None:
    record("github", "grant_access", account=account, team="engineering")
    record_effect(identity=account, entitlements_added=["engineering"])


@guarded_task("issue_credential", target="aws-prod", workload=PROVISIONER, **RETRIES)
def issue_credential(account: str) -> None:
    ttl = current_decision().max_credential_ttl
    if ttl is None:
        raise ValueError("stepguard set no credential TTL: refusing an unbounded credential")
    issued_at = datetime.now(UTC)
    credential = f"cred-{account.split('@', maxsplit=1)[0]}-{issued_at:%Y%m%d%H%M%S}"
    record("aws-prod", "issue_credential", account=account, ttl_s=int(ttl.total_seconds()))
    record_effect(
        identity=account,
        credential_issued=credential,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
    )


@guarded_task("notify", target="slack", workload=NOTIFIER, **RETRIES)
def notify(account: str) -> None:
    record("slack", "notify", account=account, message="welcome aboard")


@flow(name="onboarding")
@planned(create_account, grant_access, issue_credential, notify)  # PREFECT_STEPGUARD_PLAN_CHECK
def onboarding(
    new_hire: str,
    requester: str,
    approval: dict[str, str] | None = None,
    time_bound: dict[str, str] | None = None,
) -> str:
    account = create_account(new_hire)
    grant_access(account)
    issue_credential(account)
    notify(account)
    return account


# Leaver -------------------------------------------------------------------


@guarded_task("revoke_access", target="okta", workload=DEPROVISIONER, **RETRIES)
def revoke_access(person: str) -> str:
    account = f"{person}@example.org"
    record("okta", "revoke_access", account=account)
    record_effect(identity=account, entitlements_removed=["okta-sso"], account="disabled")
    return account


@guarded_task("disable_credential", target="aws-prod", workload=DEPROVISIONER, **RETRIES)
def disable_credential(account: str) -> None:
    record("aws-prod", "disable_credential", account=account)
    record_effect(identity=account, credential_revoked=f"cred-{account.split('@', maxsplit=1)[0]}")


@guarded_task("verify_revocation", target="okta", workload=DEPROVISIONER, **RETRIES)
async def verify_revocation(account: str) -> None:
    """Async, as a check that polls the target would be; guarded the same way."""
    await asyncio.sleep(0)
    record("okta", "verify_revocation", account=account, sessions=0)


@flow(name="leaver")
@planned(revoke_access, disable_credential, verify_revocation)
async def leaver(
    person: str,
    requester: str,
    approval: dict[str, str] | None = None,
    time_bound: dict[str, str] | None = None,
) -> str:
    """An async flow: sync tasks run in it as they are, the async one is awaited."""
    account = revoke_access(person)
    disable_credential(account)
    await verify_revocation(account)
    return account


if __name__ == "__main__":
    onboarding(
        "bob",
        requester="maria",
        approval={"approver": "ines", "approved_at": "2026-11-25T09:00:00Z", "ticket": "CHG-1042"},
    )
