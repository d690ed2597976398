"""What a guarded task declares and what its run supplies, as one stepguard request.

Two sources, kept apart on purpose:

- The *step* is declared in the workflow's code and fixed when the workflow is
  loaded: the action, the target system, an optional sensitivity that can
  raise the target's, and optionally the workload identity it runs as. A run's
  input can never change it.
- The *run facts* come from the orchestrator: workflow, run and step ids, the
  attempt number, and the run's input (Airflow's run conf, Prefect's flow
  parameters, the arguments of a Temporal activity), where three keys are
  read: `requester`, `approval` and `time_bound`. `run_facts` is the one
  place where an orchestrator's ids become them, so that one table
  (docs/integrations.md) describes every orchestrator.

`build_request` turns both into the JSON request form of `sidecar.core.jsonreq`.
Pure: no I/O, no clock, no orchestrator imports, so the mapping is the same
for every orchestrator and testable without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sidecar.core.errors import StepguardError

SENSITIVITIES = ("low", "medium", "high", "critical")
# The run-input keys the integrations read; everything else in the input is the
# workflow's own business and is not sent.
REQUESTER, APPROVAL, TIME_BOUND = "requester", "approval", "time_bound"
_APPROVAL_KEYS = ("approver", "approved_at", "ticket")
_BOUND_KEYS = ("not_before", "not_after")
_STEP_KEYS = ("action", "target", "sensitivity", "workload")


class StepDeclarationError(StepguardError):
    """A task's declaration, or its run's input, cannot form a request; says what to fix."""


@dataclass(frozen=True, slots=True)
class Step:
    """What a task does: `action` on `target`, as `workload` (a SPIFFE id) when given."""

    action: str
    target: str
    sensitivity: str | None = None
    workload: str | None = None

    def __post_init__(self) -> None:
        for name in ("action", "target"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise StepDeclarationError(f"step {name} must be a non-empty string, got {value!r}")
        if self.sensitivity is not None and self.sensitivity not in SENSITIVITIES:
            raise StepDeclarationError(
                f"step sensitivity {self.sensitivity!r} is not one of {', '.join(SENSITIVITIES)}"
            )
        if self.workload is not None and (not isinstance(self.workload, str) or not self.workload):
            raise StepDeclarationError(
                f"step workload must be a non-empty SPIFFE id, got {self.workload!r}"
            )

    def to_json(self) -> dict[str, str]:
        """Plain strings only, so an orchestrator can store it (Airflow params are JSON)."""
        out = {"action": self.action, "target": self.target}
        if self.sensitivity is not None:
            out["sensitivity"] = self.sensitivity
        if self.workload is not None:
            out["workload"] = self.workload
        return out

    @classmethod
    def from_json(cls, data: Any) -> Step:
        if not isinstance(data, Mapping):
            raise StepDeclarationError(
                f"a step declaration must be a mapping, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(_STEP_KEYS))
        if unknown:
            raise StepDeclarationError(
                f"unknown step field(s) {', '.join(map(str, unknown))}; "
                f"a step has {', '.join(_STEP_KEYS)}"
            )
        for required in ("action", "target"):
            if required not in data:
                raise StepDeclarationError(f"a step declaration needs {required!r}")
        return cls(
            action=data["action"],
            target=data["target"],
            sensitivity=data.get("sensitivity"),
            workload=data.get("workload"),
        )


@dataclass(frozen=True, slots=True)
class RunFacts:
    """The orchestrator's view of one task attempt."""

    workflow_id: str
    run_id: str
    step_id: str
    attempt: int
    inputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EntityTypes:
    """Cedar entity types of the policy model; the defaults match policies/schema.cedarschema.

    `workflow=None` leaves `context.workflow` out, for schemas that do not declare it.
    """

    principal: str = "Workload"
    resource: str = "TargetSystem"
    user: str = "User"
    workflow: str | None = "Workflow"


def step_instance(name: str, instance: str | int | None = None) -> str:
    """A step's id: its name, and `name[instance]` when one run holds several of it
    (an Airflow mapped task's index, a Temporal activity's id)."""
    if instance is None or instance == "":
        return name
    return f"{name}[{instance}]"


def run_facts(
    *,
    workflow: str | None,
    run: str | None,
    step: str | None,
    instance: str | int | None = None,
    attempt: int | str | None = 0,
    inputs: Mapping[str, Any] | None = None,
    execution: str | None = None,
) -> RunFacts:
    """An orchestrator's ids for one task attempt, as the request's ids.

    `workflow`: the workflow's definition (DAG id, flow name, workflow type);
    `run`: the run of it, qualified by `execution` when the orchestrator names
    a run by two ids (Temporal's workflow id, then its run id); `step`: the
    task's name, qualified by `instance` (`step_instance`); `attempt`: 1, 2, ...
    Missing ids stay empty: `build_request` refuses them with a reason.
    """
    run_id = str(run or "")
    if execution and run_id:
        run_id = f"{execution}/{run_id}"
    return RunFacts(
        workflow_id=str(workflow or ""),
        run_id=run_id,
        step_id=step_instance(str(step), instance) if step else "",
        attempt=int(attempt or 0),
        inputs=dict(inputs or {}),
    )


def build_request(
    step: Step,
    facts: RunFacts,
    *,
    workload: str | None = None,
    types: EntityTypes = EntityTypes(),
) -> dict[str, Any]:
    """The JSON request for one attempt of `step`; `workload` is the worker's default identity."""
    principal = step.workload or workload
    if not principal:
        raise StepDeclarationError(
            "no workload identity: declare the step's workload (a SPIFFE id) or configure "
            "the worker's default workload"
        )
    for name in ("workflow_id", "run_id", "step_id"):
        if not getattr(facts, name):
            raise StepDeclarationError(f"the orchestrator gave no {name} for this task")
    ctx: dict[str, Any] = {
        "workflow_id": facts.workflow_id,
        "run_id": facts.run_id,
        "step_id": facts.step_id,
        "target_system": step.target,
    }
    if facts.attempt > 0:
        ctx["attempt"] = facts.attempt
    if step.sensitivity is not None:
        ctx["sensitivity"] = step.sensitivity
    inputs = facts.inputs
    if inputs.get(REQUESTER) is not None:
        ctx["requester"] = _user(inputs[REQUESTER], REQUESTER, types)
    if inputs.get(APPROVAL) is not None:
        ctx["approval"] = _approval(inputs[APPROVAL], types)
    if inputs.get(TIME_BOUND) is not None:
        ctx["time_bound"] = _time_bound(inputs[TIME_BOUND])
    if types.workflow is not None:
        ctx["attributes"] = {
            "workflow": {"__entity": {"type": types.workflow, "id": facts.workflow_id}}
        }
    return {
        "principal": {"type": types.principal, "id": principal},
        "action": {"type": "Action", "id": step.action},
        "resource": {"type": types.resource, "id": step.target},
        "context": ctx,
    }


def _user(value: Any, where: str, types: EntityTypes) -> dict[str, str]:
    """A user id string, or an explicit `{"type": ..., "id": ...}` reference."""
    if isinstance(value, str) and value:
        return {"type": types.user, "id": value}
    if (
        isinstance(value, Mapping)
        and set(value) == {"type", "id"}
        and all(isinstance(v, str) and v for v in value.values())
    ):
        return {"type": value["type"], "id": value["id"]}
    raise StepDeclarationError(
        f"run input {where!r} must be a user id or {{'type': ..., 'id': ...}}, got {value!r}"
    )


def _approval(value: Any, types: EntityTypes) -> dict[str, Any]:
    obj = _mapping(value, APPROVAL, _APPROVAL_KEYS)
    if obj.get("approver") is None:
        raise StepDeclarationError("run input 'approval' needs an 'approver'")
    out: dict[str, Any] = {"approver": _user(obj["approver"], "approval.approver", types)}
    if obj.get("approved_at") is not None:
        out["approved_at"] = _instant(obj["approved_at"], "approval.approved_at")
    if obj.get("ticket") is not None:
        out["ticket"] = obj["ticket"]
    return out


def _time_bound(value: Any) -> dict[str, str]:
    obj = _mapping(value, TIME_BOUND, _BOUND_KEYS)
    return {
        name: _instant(obj[name], f"time_bound.{name}")
        for name in _BOUND_KEYS
        if obj.get(name) is not None
    }


def _mapping(value: Any, where: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StepDeclarationError(
            f"run input {where!r} must be a mapping, got {type(value).__name__}"
        )
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise StepDeclarationError(
            f"run input {where!r} has unknown key(s) {', '.join(map(str, unknown))}; "
            f"expected {', '.join(keys)}"
        )
    return value


def _instant(value: Any, where: str) -> str:
    """RFC 3339 text as given (the server validates it), or an aware datetime rendered in UTC."""
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise StepDeclarationError(f"run input {where!r} must carry a time zone")
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        return value
    raise StepDeclarationError(
        f"run input {where!r} must be an RFC 3339 timestamp, got {type(value).__name__}"
    )
