"""Plans: a run's planned steps predicted (core/plan.py), recorded in the trail as a plan.

Beside the decision path, not on it: nothing here is read when a step is
decided, and a plan never replaces the decision (every step is still decided
by `Authorize` when it runs). The plan event is written to the same trail as
the decisions, chained like them, so an auditor reads what was predicted next
to what happened (`audit query --type plan --type decision --run <run>`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sidecar.audit.redact import Redactor
from sidecar.audit.sink import AuditSink
from sidecar.core.bundle import Bundle
from sidecar.core.event import CallMeta, build_plan_event
from sidecar.core.ids import DecisionIds
from sidecar.core.model import PolicyErrors
from sidecar.core.plan import StepVerdict, plan_steps, refused
from sidecar.core.planreq import Plan
from sidecar.decision.identity import CallerContext, binding_refusal


@dataclass(frozen=True, slots=True)
class Planned:
    """What `PlanRecorder.plan` answered and recorded."""

    plan_id: str
    plan: Plan
    verdicts: list[StepVerdict]
    revision: str
    policy_errors: PolicyErrors


class PlanRecorder:
    """Predict a plan's steps on one bundle snapshot and record the plan event."""

    def __init__(
        self,
        sink: AuditSink | None,
        clock: Callable[[], datetime],
        *,
        policy_errors: PolicyErrors = PolicyErrors.DENY,
        redactor: Redactor | None = None,
        audit_note: str = "",
        bind_workload_identity: bool = False,
    ) -> None:
        self._sink = sink  # None: predicted, not recorded (`stepguard plan`)
        self._clock = clock
        self.policy_errors = policy_errors  # the process's semantics, as decisions get
        self._redactor = redactor
        self._audit_note = audit_note
        self._ids = DecisionIds()
        self._bind = bind_workload_identity  # as the decider: a workload plans only itself
        self._callers = CallerContext()  # which actions' context may carry `caller`

    def plan(self, bundle: Bundle, plan: Plan, meta: CallMeta) -> Planned:
        """The verdicts; the event is written before they are answered, so a plan the
        trail refuses raises AuditError (the caller answers UNAVAILABLE)."""
        callers = self._callers.actions(bundle)
        verdicts = []
        for step in plan.steps:
            why = binding_refusal(step.request.principal, meta.identity) if self._bind else None
            if why is not None:  # as Authorize would answer it: a DENY saying so
                verdicts.append(refused(bundle, step, self.policy_errors, why))
                continue
            verdicts.extend(plan_steps(bundle, [step], self.policy_errors, callers=callers))
        plan_id = self._ids.next()
        if self._sink is not None:
            event = build_plan_event(
                plan_id,
                self._clock(),
                plan,
                verdicts,
                meta,
                revision=bundle.revision,
                policy_errors=self.policy_errors.value,
                redactor=self._redactor,
                audit_note=self._audit_note,
            )
            self._sink.write(event)
        return Planned(plan_id, plan, verdicts, bundle.revision, self.policy_errors)


def plan_json(planned: Planned) -> dict[str, Any]:
    """The same answer as JSON (AuthZEN's `/stepguard/v1/plan`, `stepguard plan --json`)."""
    return {
        "plan_id": planned.plan_id,
        "run_id": planned.plan.run_id,
        "policy_revision": planned.revision,
        "policy_errors": planned.policy_errors.value,
        "steps": [step_json(v) for v in planned.verdicts],
    }


def step_json(verdict: StepVerdict) -> dict[str, Any]:
    return {
        "step_id": verdict.step_id,
        "verdict": verdict.verdict.value,
        "reason": verdict.reason,
        "unknown": list(verdict.unknown),
        "determining_policies": [
            {"id": r.id, "source": r.source, "annotations": dict(r.annotations)}
            for r in verdict.determining
        ],
        "residuals": [
            {
                "id": r.id,
                "effect": r.effect,
                "source": r.source,
                "cedar": r.cedar,
                "words": r.words,
                "description": r.description,
            }
            for r in verdict.residuals
        ],
        "satisfied_policies": list(verdict.satisfied),
    }
