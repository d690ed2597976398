"""Start one onboarding or leaver run and wait for it; exit 0 when it completed.

    .venv/bin/python examples/temporal/starter.py onboarding bob --requester maria --approver ines
    .venv/bin/python examples/temporal/starter.py leaver carol --requester maria

Prints one JSON line: the workflow id, run id, and `completed` with the result
or `failed` with the cause (a step stepguard denied names its policies and
decision id), or `refused` when the run's plan stopped it before the workflow
existed. Temporal at TEMPORAL_ADDRESS (default 127.0.0.1:7233).

The client carries StepguardInterceptor: with TEMPORAL_STEPGUARD_PLAN_CHECK =
warn or enforce it plans the run (the activities identity_workflows.py names
with `@planned`) at stepguard (TEMPORAL_STEPGUARD_TARGET) before starting it;
the default, off, asks nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any

from identity_workflows import TASK_QUEUE  # and their @planned activities, for the plan
from temporalio.client import Client, WorkflowFailureError

from sidecar.integrations.temporal import RunStopped, StepguardInterceptor


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", choices=("onboarding", "leaver"))
    parser.add_argument("person", help="the new hire, or the leaver")
    parser.add_argument("--requester", required=True)
    parser.add_argument("--approver", help="who approved the change (onboarding)")
    parser.add_argument("--ticket", default="CHG-1042")
    parser.add_argument("--approved-at", default="2026-11-25T09:00:00Z")
    parser.add_argument("--not-after", help="the run's time bound (RFC 3339)")
    parser.add_argument("--id", help="workflow id (default: <workflow>-<person>-<random>)")
    args = parser.parse_args(argv)
    approval = (
        {"approver": args.approver, "approved_at": args.approved_at, "ticket": args.ticket}
        if args.approver
        else None
    )
    run = {  # the workflows' RunInput
        "person": args.person,
        "requester": args.requester,
        "approval": approval,
        "time_bound": {"not_after": args.not_after} if args.not_after else None,
    }
    workflow_id = args.id or f"{args.workflow}-{args.person}-{uuid.uuid4().hex[:8]}"
    guard = StepguardInterceptor()  # plan_check from TEMPORAL_STEPGUARD_PLAN_CHECK
    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"), interceptors=[guard]
    )
    try:
        handle = await client.start_workflow(
            args.workflow, run, id=workflow_id, task_queue=TASK_QUEUE, result_type=str
        )
    except RunStopped as exc:  # plan_check = enforce: no workflow was created
        print(json.dumps({"workflow_id": workflow_id, "status": "refused", "cause": str(exc)}))
        return 1
    finally:
        guard.close()
    out: dict[str, Any] = {"workflow_id": workflow_id, "run_id": handle.result_run_id}
    try:
        out |= {"status": "completed", "result": await handle.result()}
    except WorkflowFailureError as exc:
        cause = _root_cause(exc)
        out |= {"status": "failed", "cause": f"{type(cause).__name__}: {cause}"}
    print(json.dumps(out), flush=True)
    return 0 if out["status"] == "completed" else 1


if __name__ == "__main__":
    status = asyncio.run(main(sys.argv[1:]))
    sys.stdout.flush()
    # temporalio's native runtime threads sometimes abort the interpreter's
    # finalization ("PyGILState_Release ... finalizing", exit -6) after all is done
    # (temporalio/sdk-python issue 300, open; seen here with 1.35.0): nothing is left
    # to clean up, so leave without it and keep the exit status.
    os._exit(status)
