"""A plan's verdicts as an AuthorizePlanResponse (the gRPC answer; AuthZEN has its JSON)."""

from __future__ import annotations

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.model import PolicyErrors
from sidecar.core.plan import Verdict
from sidecar.decision.plans import Planned

VERDICT_TO_PROTO = {
    Verdict.ALLOW: pb.PLAN_VERDICT_ALLOW,
    Verdict.DENY: pb.PLAN_VERDICT_DENY,
    Verdict.DEPENDS: pb.PLAN_VERDICT_DEPENDS,
}
_POLICY_ERRORS = {
    PolicyErrors.DENY: pb.POLICY_ERRORS_DENY,
    PolicyErrors.CEDAR: pb.POLICY_ERRORS_CEDAR,
}


def plan_response(planned: Planned) -> pb.AuthorizePlanResponse:
    out = pb.AuthorizePlanResponse(
        plan_id=planned.plan_id,
        run_id=planned.plan.run_id,
        policy_revision=planned.revision,
        policy_errors=_POLICY_ERRORS[planned.policy_errors],
    )
    for verdict in planned.verdicts:
        step = out.steps.add(
            step_id=verdict.step_id,
            verdict=VERDICT_TO_PROTO[verdict.verdict],
            reason=verdict.reason,
            unknown=list(verdict.unknown),
            satisfied_policies=list(verdict.satisfied),
        )
        for ref in verdict.determining:
            step.determining_policies.add(
                id=ref.id, annotations=dict(ref.annotations), source=ref.source
            )
        for r in verdict.residuals:
            step.residuals.add(
                id=r.id,
                effect=r.effect,
                source=r.source,
                cedar=r.cedar,
                words=r.words,
                description=r.description,
            )
    return out
