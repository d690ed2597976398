"""Pre-flight plans (AuthorizePlan): the plan sent, what came back, and how a plan
that could not be made is told without raising."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.client.decisions import DecisionKind, failed_call
from sidecar.core.planreq import plan_from_json

PlanLike = Mapping[str, Any] | pb.AuthorizePlanRequest
_VERDICTS = {
    pb.PLAN_VERDICT_ALLOW: "ALLOW",
    pb.PLAN_VERDICT_DENY: "DENY",
    pb.PLAN_VERDICT_DEPENDS: "DEPENDS",
}


@dataclass(frozen=True, slots=True)
class Residual:
    """A policy still open for a DEPENDS step: as Cedar and in plain words."""

    id: str
    effect: str  # "permit" | "forbid"
    cedar: str
    words: str
    description: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One planned step's verdict: "ALLOW" and "DENY" hold whatever the unknowns turn
    out to be; "DEPENDS" has the open conditions in `residuals` and `reason`."""

    step_id: str
    verdict: str
    reason: str
    policies: tuple[str, ...] = ()  # ALLOW: permits satisfied; DENY: forbids satisfied
    residuals: tuple[Residual, ...] = ()
    unknown: tuple[str, ...] = ()

    @property
    def denied(self) -> bool:
        return self.verdict == "DENY"


@dataclass(frozen=True, slots=True)
class PlanReport:
    """What `plan` answered. It never raises: when no plan could be made, `made` is
    False, `steps` is empty and `reason`, `kind` and `code` say why. A plan never
    replaces the decisions: every step is still decided when it runs."""

    made: bool
    reason: str
    plan_id: str = ""  # the plan's trail event id
    run_id: str = ""
    policy_revision: str = ""
    steps: tuple[StepPlan, ...] = field(default=())
    kind: DecisionKind | None = None  # None when made
    code: grpc.StatusCode | None = None

    @property
    def denied_steps(self) -> tuple[StepPlan, ...]:
        """The steps certainly denied, in plan order."""
        return tuple(s for s in self.steps if s.denied)


def plan_message(plan: PlanLike) -> pb.AuthorizePlanRequest:
    """A plan as JSON (the `stepguard plan` file's form, docs/api.md) or the message."""
    if isinstance(plan, pb.AuthorizePlanRequest):
        return plan
    return plan_from_json(dict(plan))


def plan_report(resp: pb.AuthorizePlanResponse) -> PlanReport:
    steps = tuple(
        StepPlan(
            step_id=s.step_id,
            verdict=_VERDICTS.get(s.verdict, "DEPENDS"),  # anything unexpected: DEPENDS
            reason=s.reason,
            policies=tuple(p.id for p in s.determining_policies),
            residuals=tuple(
                Residual(r.id, r.effect, r.cedar, r.words, r.description, r.source)
                for r in s.residuals
            ),
            unknown=tuple(s.unknown),
        )
        for s in resp.steps
    )
    denied = sum(1 for s in steps if s.denied)
    return PlanReport(
        made=True,
        reason=f"{len(steps)} steps planned, {denied} certainly denied",
        plan_id=resp.plan_id,
        run_id=resp.run_id,
        policy_revision=resp.policy_revision,
        steps=steps,
        code=grpc.StatusCode.OK,
    )


def plan_failure(exc: Exception) -> PlanReport:
    """The report for a plan that was not made, saying why (like a failed decision)."""
    failed = failed_call(exc)
    return PlanReport(
        made=False,
        reason=failed.reason.replace("stepguard call failed", "no plan made", 1),
        kind=failed.kind,
        code=failed.code,
    )
