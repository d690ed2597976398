"""The Temporal benchmark's workflow: three trivial activities, each a step stepguard allows.

In a module of its own because Temporal's sandbox imports a workflow's module
again (one defined in `__main__` fails validation).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from sidecar.integrations.temporal import step

NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"
ACTIVITIES_PER_WORKFLOW = 3


@step("notify", target="slack", workload=NOTIFIER)
@activity.defn
async def notify(n: int) -> int:
    """Does nothing, so what is measured is the guard's cost."""
    return n + 1


@workflow.defn(name="bench")
class Bench:
    @workflow.run
    async def run(self, n: int) -> int:
        for _ in range(ACTIVITIES_PER_WORKFLOW):
            n = await workflow.execute_activity(
                notify,
                n,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        return n
