"""Requests the benchmarks send: ones the example policies really evaluate.

The main request is an approved `grant_access` on `jira` by the provisioning
workload in the owned onboarding workflow, with a day-long time bound around
now: the index narrows the example bundle to the six policies that can apply
to it (the identity-change permit and forbids, business hours, time bound,
shared accounts), Cedar evaluates those, and the answer is ALLOW (determined
by `provisioning-workloads-change-identities`) whatever the hour, since jira
is a medium target.

A *hit* sends the same request again and again; a *miss* sends a distinct
request every time (a new `run_id`), as steps of new workflow runs do.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.jsonreq import request_from_json

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
METHOD = "/stepguard.v1.Authorizer/"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def example_json(
    *, run_id: str = "run-0001", now: datetime | None = None, target: str = "jira"
) -> dict[str, Any]:
    """The example request in the JSON request form (a day-long time bound around now)."""
    now = now or datetime.now(UTC)
    return {
        "principal": {"type": "Workload", "id": PROVISIONER},
        "action": {"type": "Action", "id": "grant_access"},
        "resource": {"type": "TargetSystem", "id": target},
        "context": {
            "requester": {"type": "User", "id": "maria"},
            "workflow_id": "onboarding",
            "run_id": run_id,
            "step_id": f"grant-{target}",
            "attempt": 1,
            "target_system": target,
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
    *, run_id: str = "run-0001", now: datetime | None = None, target: str = "jira"
) -> pb.AuthorizeRequest:
    return request_from_json(example_json(run_id=run_id, now=now, target=target))


Maker = Callable[[int], bytes]


def same(template: pb.AuthorizeRequest) -> Maker:
    """The i-th request is always the same one: cache hits."""
    raw = template.SerializeToString()
    return lambda i: raw


def distinct(template: pb.AuthorizeRequest, tag: str = "m") -> Maker:
    """The i-th request is a step of its own run: cache misses."""
    msg = pb.AuthorizeRequest()
    msg.CopyFrom(template)

    def make(i: int) -> bytes:
        msg.context.run_id = f"{tag}{i}"
        return msg.SerializeToString()

    return make


def batch(template: pb.AuthorizeRequest, size: int, *, hit: bool, tag: str = "b") -> Maker:
    """AuthorizeBatch of `size` items: all one cached request, or all distinct."""
    if hit:
        raw = pb.AuthorizeBatchRequest(items=[template] * size).SerializeToString()
        return lambda i: raw
    msg = pb.AuthorizeBatchRequest(items=[template] * size)

    def make(i: int) -> bytes:
        for j, item in enumerate(msg.items):
            item.context.run_id = f"{tag}{i}-{j}"
        return msg.SerializeToString()

    return make


def stream_items(template: pb.AuthorizeRequest, *, hit: bool, tag: str = "s") -> Maker:
    """AuthorizeStream messages; `id` numbers them, the request repeats or is distinct."""
    item = pb.AuthorizeStreamRequest()
    item.request.CopyFrom(template)

    def make(i: int) -> bytes:
        item.id = i
        if not hit:
            item.request.context.run_id = f"{tag}{i}"
        return item.SerializeToString()

    return make
