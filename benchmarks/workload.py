"""Requests the benchmarks send: ones the example policies really evaluate.

The main request is an approved `grant_access` on `jira` by the provisioning
workload in the owned onboarding workflow: every policy of policies/ is
evaluated and the answer is ALLOW (determined by
`provisioning-workloads-change-identities`), whatever the hour, since jira is a
medium target and the business-hours forbid does not apply to it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.jsonreq import request_from_json

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def example_json(*, run_id: str = "run-0001", now: datetime | None = None) -> dict[str, Any]:
    """The example request in the JSON request form (a day-long time bound around now)."""
    now = now or datetime.now(UTC)
    return {
        "principal": {"type": "Workload", "id": PROVISIONER},
        "action": {"type": "Action", "id": "grant_access"},
        "resource": {"type": "TargetSystem", "id": "jira"},
        "context": {
            "requester": {"type": "User", "id": "maria"},
            "workflow_id": "onboarding",
            "run_id": run_id,
            "step_id": "grant-jira",
            "attempt": 1,
            "target_system": "jira",
            "time_bound": {
                "not_before": _iso(now - timedelta(hours=1)),
                "not_after": _iso(now + timedelta(days=1)),
            },
            "approval": {
                "approver": {"type": "User", "id": "ines"},
                "approved_at": _iso(now - timedelta(hours=2)),
                "ticket": "CHG-1234",
            },
            "attributes": {"workflow": {"__entity": {"type": "Workflow", "id": "onboarding"}}},
        },
    }


def example_request(
    *, run_id: str = "run-0001", now: datetime | None = None
) -> pb.AuthorizeRequest:
    return request_from_json(example_json(run_id=run_id, now=now))
