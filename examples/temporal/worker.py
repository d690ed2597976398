"""The worker: runs the onboarding and leaver workflows; every activity asks stepguard first.

    .venv/bin/python examples/temporal/worker.py

Temporal at TEMPORAL_ADDRESS (default 127.0.0.1:7233), stepguard at
TEMPORAL_STEPGUARD_TARGET (else STEPGUARD_ADDRESS, else 127.0.0.1:50051).
Runs until interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workflows' own modules
from identity_activities import ACTIVITIES
from identity_workflows import TASK_QUEUE, WORKFLOWS

from sidecar.integrations.temporal import StepguardInterceptor


async def main() -> None:
    client = await Client.connect(os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    guard = StepguardInterceptor()
    with ThreadPoolExecutor(max_workers=8) as sync_activities:
        async with Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=WORKFLOWS,
            activities=ACTIVITIES,
            activity_executor=sync_activities,  # for disable_credential, a sync activity
            interceptors=[guard],
        ):
            print(f"worker polling task queue {TASK_QUEUE!r}", flush=True)
            await stop.wait()
    # The worker has stopped: send the outcomes its guard still has queued (they travel
    # in batches), off the event loop.
    await asyncio.to_thread(guard.close)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)  # as starter.py: skip a finalization temporalio's runtime may abort
