"""stepguard's extension path on the AuthZEN server: pre-flight plans over HTTP (JSON).

    POST /stepguard/v1/plan    a plan -> each step ALLOW, DENY or DEPENDS

The body is the plan file's JSON form (sidecar/core/planreq.py, `plan_from_json`;
docs/api.md, "Plans"); validation and answers are AuthorizePlan's: 400 naming
the field (`steps[2].unknown[0]`), 503 when the trail cannot take the plan,
else 200 with `plan_id`, `run_id`, `policy_revision`, `policy_errors` and one
entry per step (`decision/plans.py` `plan_json`). Not an AuthZEN endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from sidecar.core.bundle import Bundle
from sidecar.core.errors import AuditError
from sidecar.core.event import CallMeta
from sidecar.core.planreq import plan_from_json, plan_from_proto
from sidecar.core.validate import Limits
from sidecar.decision.plans import PlanRecorder, plan_json

PATH: Final = "/stepguard/v1/plan"


class NotRecorded(Exception):
    """The trail refused the plan: HTTP 503."""


def plan_one(
    recorder: PlanRecorder,
    bundle: Callable[[], Bundle],
    limits: Limits,
    body: Mapping[str, Any],
    meta: CallMeta,
) -> dict[str, Any]:
    snapshot = bundle()  # one snapshot for validation and every step
    plan = plan_from_proto(plan_from_json(dict(body)), snapshot, limits)
    try:
        planned = recorder.plan(snapshot, plan, meta)
    except AuditError as exc:
        raise NotRecorded(f"plan not recorded: {exc}") from exc
    return plan_json(planned)
