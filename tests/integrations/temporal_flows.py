"""The Temporal tests' own workflows, beside the example's (examples/temporal/).

`Paused` is the example onboarding's first steps with a pause in the middle,
so a test can restart the worker there; `Slow` has one activity that Temporal
stops for its timeout, or that the workflow cancels; `Retried` runs an activity
that fails twice before it succeeds, as an activity and as a local activity.
Workflows must live in an importable module: the sandbox imports them again.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

# The example's modules, which these workflows reuse (as the example's worker does);
# the sandbox's own import of this module finds them imported already.
if not workflow.unsafe.in_sandbox():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "temporal"))

with workflow.unsafe.imports_passed_through():
    from identity_activities import NOTIFIER, create_account, grant_access, notify
    from identity_workflows import RunInput

    from sidecar.integrations.temporal import step

ONCE = RetryPolicy(maximum_attempts=1)
ENDED: list[str] = []  # workflow ids whose wait_long body has ended, however
TIMEOUT = timedelta(seconds=30)


@workflow.defn(name="onboarding")
class Paused:
    """create_account, then wait for `go`, then grant_access and the local notify.
    Returns how many times the code after create_account ran while replaying."""

    def __init__(self) -> None:
        self.go = False
        self.paused = False

    @workflow.signal
    def proceed(self) -> None:
        self.go = True

    @workflow.query
    def waiting(self) -> bool:
        return self.paused

    @workflow.run
    async def run(self, run: RunInput) -> int:
        account: str = await workflow.execute_activity(
            create_account, run.to(run.person), start_to_close_timeout=TIMEOUT, retry_policy=ONCE
        )
        replayed = 1 if workflow.unsafe.is_replaying() else 0
        self.paused = True
        await workflow.wait_condition(lambda: self.go)
        await workflow.execute_activity(
            grant_access,
            run.to(account, "engineering"),
            start_to_close_timeout=TIMEOUT,
            retry_policy=ONCE,
        )
        await workflow.execute_local_activity(
            notify, run.to(account), start_to_close_timeout=TIMEOUT, retry_policy=ONCE
        )
        return replayed


@dataclass
class SlowInput:
    seconds: float
    timeout_s: float
    cancel_after_s: float | None = None
    local: bool = False


@step("notify", target="slack", workload=NOTIFIER)
@activity.defn
async def wait_long(seconds: float) -> None:
    """Heartbeats (so a cancellation or a timeout reaches it) while it waits."""
    try:
        for _ in range(int(seconds * 10)):
            activity.heartbeat()
            await asyncio.sleep(0.1)
    finally:
        ENDED.append(activity.info().workflow_id or "")


@workflow.defn(name="slow")
class Slow:
    @workflow.run
    async def run(self, run: SlowInput) -> None:
        if run.local:
            await workflow.execute_local_activity(
                wait_long,
                run.seconds,
                start_to_close_timeout=timedelta(seconds=run.timeout_s),
                retry_policy=ONCE,
            )
            return
        handle = workflow.start_activity(
            wait_long,
            run.seconds,
            start_to_close_timeout=timedelta(seconds=run.timeout_s),
            heartbeat_timeout=timedelta(seconds=1),
            retry_policy=ONCE,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        if run.cancel_after_s is not None:
            await workflow.sleep(run.cancel_after_s)
            handle.cancel()
        await handle


# A retry in 50 ms: sooner than the outcome reporter's flush interval (0.1 s), so the
# order of the trail cannot come from the timing.
QUICK_RETRIES = RetryPolicy(
    initial_interval=timedelta(milliseconds=50), backoff_coefficient=1.0, maximum_attempts=3
)


@step("notify", target="slack", workload=NOTIFIER)
@activity.defn
async def flaky(run: RunInput) -> int:
    """Fails on its first two attempts, succeeds on the third; returns that attempt."""
    attempt = activity.info().attempt
    if attempt < 3:
        raise RuntimeError(f"attempt {attempt} fails")
    return attempt


@workflow.defn(name="retried")
class Retried:
    """`flaky` as an activity (retried by the server), then as a local activity
    (retried by the worker itself)."""

    @workflow.run
    async def run(self, run: RunInput) -> list[int]:
        first: int = await workflow.execute_activity(
            flaky, run, start_to_close_timeout=TIMEOUT, retry_policy=QUICK_RETRIES
        )
        second: int = await workflow.execute_local_activity(
            flaky, run, start_to_close_timeout=TIMEOUT, retry_policy=QUICK_RETRIES
        )
        return [first, second]
