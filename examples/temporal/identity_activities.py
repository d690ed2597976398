"""The activities of the onboarding and leaver workflows; each declares what it does.

`@step(...)` says which Cedar action, on which target system, as which
workload: the worker's StepguardInterceptor asks stepguard with it before the
activity body runs, and reports afterwards what the body declared with
`record_effect(...)`. The target systems are the stand-ins the Airflow and
Prefect examples use (examples/identity_systems.py): one JSON line per change
in EXAMPLE_SYSTEMS_LOG, and a system named in EXAMPLE_SYSTEMS_DOWN fails.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from temporalio import activity

from sidecar.integrations.temporal import current_decision, record_effect, step

# The example target systems, shared with the Airflow and Prefect examples.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from identity_systems import record

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
DEPROVISIONER = "spiffe://example.org/ns/identity/sa/deprovisioner"
NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"


@dataclass
class StepInput:
    """What every activity gets: its subject, and the run's requester, approval and
    time bound, which the guard sends as the step's context."""

    subject: str  # the new hire, the leaver or their account
    requester: str
    approval: dict[str, str] | None = None
    time_bound: dict[str, str] | None = None
    team: str = ""


# Onboarding -----------------------------------------------------------------


@step("create_account", target="okta", workload=PROVISIONER)
@activity.defn
async def create_account(request: StepInput) -> str:
    account = f"{request.subject}@example.org"
    record("okta", "create_account", account=account)
    record_effect(identity=account, account="created")
    return account


@step("grant_access", target="github", workload=PROVISIONER)
@activity.defn
async def grant_access(request: StepInput) -> None:
    record("github", "grant_access", account=request.subject, team=request.team)
    record_effect(identity=request.subject, entitlements_added=[request.team])


@step("issue_credential", target="aws-prod", workload=PROVISIONER)
@activity.defn
async def issue_credential(request: StepInput) -> None:
    ttl = current_decision().max_credential_ttl
    if ttl is None:
        raise ValueError("stepguard set no credential TTL: refusing an unbounded credential")
    account = request.subject
    issued_at = datetime.now(UTC)
    credential = f"cred-{account.split('@', maxsplit=1)[0]}-{issued_at:%Y%m%d%H%M%S}"
    record(
        "aws-prod",
        "issue_credential",
        account=account,
        credential=credential,
        expires_at=(issued_at + ttl).isoformat(),
        ttl_s=int(ttl.total_seconds()),
    )
    record_effect(
        identity=account,
        credential_issued=credential,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
    )


@step("notify", target="slack", workload=NOTIFIER)
@activity.defn
async def notify(request: StepInput) -> None:
    """Run as a local activity: guarded the same way."""
    record("slack", "notify", account=request.subject, message="welcome aboard")


# Leaver ---------------------------------------------------------------------


@step("revoke_access", target="okta", workload=DEPROVISIONER)
@activity.defn
async def revoke_access(request: StepInput) -> str:
    account = f"{request.subject}@example.org"
    record("okta", "revoke_access", account=account)
    record_effect(identity=account, entitlements_removed=["okta-sso"], account="disabled")
    return account


@step("disable_credential", target="aws-prod", workload=DEPROVISIONER)
@activity.defn
def disable_credential(request: StepInput) -> None:
    """A sync activity (it runs in the worker's thread pool): guarded the same way."""
    account = request.subject
    record("aws-prod", "disable_credential", account=account)
    record_effect(identity=account, credential_revoked=f"cred-{account.split('@', maxsplit=1)[0]}")


@step("verify_revocation", target="okta", workload=DEPROVISIONER)
@activity.defn
async def verify_revocation(request: StepInput) -> None:
    await asyncio.sleep(0)
    record("okta", "verify_revocation", account=request.subject, sessions=0)


ACTIVITIES = [
    create_account,
    grant_access,
    issue_credential,
    notify,
    revoke_access,
    disable_credential,
    verify_revocation,
]
