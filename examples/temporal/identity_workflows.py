"""Onboarding and leaver as Temporal workflows: plain workflow code, no stepguard in it.

The guard lives in the worker (worker.py gives it StepguardInterceptor), not
here: workflow code runs in Temporal's sandbox, which forbids I/O and replays
it. The workflows only pass the run's requester, approval and time bound on to
each activity (`StepInput`), which is what the guard reads, and `@planned(...)`
names the activities each runs, in order: the starter's StepguardInterceptor
plans a run from it before the workflow exists (TEMPORAL_STEPGUARD_PLAN_CHECK).
`@planned` only marks the class; it does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from identity_activities import (
        StepInput,
        create_account,
        disable_credential,
        grant_access,
        issue_credential,
        notify,
        revoke_access,
        verify_revocation,
    )

    from sidecar.integrations.temporal import planned

TASK_QUEUE = "identity"
# Three attempts, as the Airflow and Prefect examples: a DENY is never retried
# (the guard's error is non-retryable), an outage or a failing target is.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=1.0, maximum_attempts=3
)
TIMEOUT = timedelta(seconds=30)
TEAMS = ("engineering", "on-call")


@dataclass
class RunInput:
    """A run's input: who, who asked, and (for identity changes) who approved."""

    person: str
    requester: str
    approval: dict[str, str] | None = None
    time_bound: dict[str, str] | None = None

    def to(self, subject: str, team: str = "") -> StepInput:
        return StepInput(subject, self.requester, self.approval, self.time_bound, team)


@planned(create_account, grant_access, issue_credential, notify)
@workflow.defn(name="onboarding")
class Onboarding:
    @workflow.run
    async def run(self, run: RunInput) -> str:
        account: str = await workflow.execute_activity(
            create_account, run.to(run.person), start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        for team in TEAMS:
            await workflow.execute_activity(
                grant_access,
                run.to(account, team),
                start_to_close_timeout=TIMEOUT,
                retry_policy=RETRY,
            )
        await workflow.execute_activity(
            issue_credential, run.to(account), start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        await workflow.execute_local_activity(
            notify, run.to(account), start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        return account


@planned(revoke_access, disable_credential, verify_revocation)
@workflow.defn(name="leaver")
class Leaver:
    @workflow.run
    async def run(self, run: RunInput) -> str:
        account: str = await workflow.execute_activity(
            revoke_access, run.to(run.person), start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        await workflow.execute_activity(
            disable_credential, run.to(account), start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        await workflow.execute_activity(
            verify_revocation, run.to(account), start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        return account


WORKFLOWS = [Onboarding, Leaver]
