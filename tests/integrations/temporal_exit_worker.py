"""A Temporal worker process that runs one onboarding and exits without closing its
guard: what it still had queued is sent by the outcome reporter at process exit.

    python -m tests.integrations.temporal_exit_worker TEMPORAL_ADDRESS SIDECAR_TARGET

The guard's client has an hour's flush interval, so only the exit sends. Prints the
run's stepguard run id (`<workflow id>/<run id>`) and how many outcomes were still
queued when the worker stopped.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "temporal"))
from identity_activities import ACTIVITIES
from identity_workflows import WORKFLOWS, Onboarding, RunInput

from sidecar.client import StepguardClient
from sidecar.integrations.gate import GuardConfig
from sidecar.integrations.temporal import StepguardInterceptor
from tests.integrations.orchestration import APPROVED


async def main(address: str, target: str) -> None:
    reporting = StepguardClient(target, timeout=2.0)
    reporting.outcomes.flush_interval_s = 3600
    guard = StepguardInterceptor(GuardConfig(target=target, timeout_s=2.0), client=reporting)
    client = await Client.connect(address)
    queue = f"q-{uuid.uuid4().hex}"
    with ThreadPoolExecutor(max_workers=2) as executor:
        async with Worker(
            client,
            task_queue=queue,
            workflows=WORKFLOWS,
            activities=ACTIVITIES,
            activity_executor=executor,
            interceptors=[guard],
        ):
            handle = await client.start_workflow(
                Onboarding.run,
                RunInput("bob", "maria", APPROVED),
                id=f"onboarding-bob-{uuid.uuid4().hex[:6]}",
                task_queue=queue,
            )
            await handle.result()
    print(f"{handle.id}/{handle.result_run_id} {reporting.outcomes.stats.pending}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
