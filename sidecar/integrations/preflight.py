"""Pre-flight a run's plan when it starts, for every orchestrator (issues 21, 24).

Orchestrator-independent, as `steps.py` and `gate.py` are: an integration
gives the run's facts (workflow, run id, run input) and the steps its tasks
declare, and gets a `PlanOutcome` saying whether the run may start.

    check = PlanCheck(PlanMode.ENFORCE)
    outcome = check.run(client, facts, [("create_account", step), ...], workload=..., types=...)
    if outcome.stop:
        fail_the_run(outcome.message)      # names the step and the policy, or why unchecked
    elif outcome.message:
        log.warning(outcome.message)       # warn: the plan is in the trail too

The setting is `off | warn | enforce` (`PlanMode`), one rule for Airflow,
Prefect and Temporal:

- off: no plan is asked for;
- warn: the plan is asked for (and recorded in the sidecar's trail as a
  "plan" event, linked to the run's decisions by its run id); a step certainly
  denied, or a plan that cannot be had, is logged, and the run goes on: each
  step is still decided when it runs;
- enforce: a run starts only if its plan was checked. A run with a step
  certainly denied (of the actions `actions` names, all declared steps by
  default) stops before its first task, and so does a run whose plan cannot be
  had (sidecar unreachable or too slow, the plan refused, the plan not
  buildable): `PlanOutcome.unchecked` says why, and the message says the run
  was not started (fail closed: enforce starts no run unchecked).

A plan never allows anything: a step answered ALLOW or DEPENDS is still
decided by the sidecar when it runs. Pure apart from the client call: no
orchestrator imports.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.client import PlanReport, StepguardClient, StepPlan
from sidecar.core.errors import ConfigError, StepguardError
from sidecar.integrations.steps import EntityTypes, RunFacts, Step, build_request

DEFAULT_TYPES = EntityTypes()


class PlanMode(enum.Enum):
    OFF = "off"
    WARN = "warn"
    ENFORCE = "enforce"

    @classmethod
    def parse(cls, text: str | None) -> PlanMode:
        """From a setting (`off`, `warn`, `enforce`; empty: off); ConfigError names them."""
        if text is None or not text.strip():
            return cls.OFF
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ConfigError(
                f"stepguard plan_check must be one of off, warn, enforce, got {text!r}"
            ) from None


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    """What the pre-flight check found. `stop`: the run must not start (enforce only)."""

    mode: PlanMode
    report: PlanReport | None = None  # None when off or when no plan was asked for
    denied: tuple[StepPlan, ...] = ()  # the counted steps certainly denied, in plan order
    message: str = ""  # "" when there is nothing to say
    stop: bool = False
    unchecked: str = ""  # why the plan could not be had; "" when it was (or when off)


def build_plan(
    facts: RunFacts,
    tasks: Sequence[tuple[str, Step | None]],
    *,
    workload: str | None = None,
    types: EntityTypes = DEFAULT_TYPES,
) -> dict[str, Any]:
    """The plan (the JSON form `StepguardClient.plan` takes) for a run's declared steps.

    Each step is the request its task will send (`steps.build_request`, with the
    run's input known at the start), its step id the task's, `now` unknown (the
    sidecar's clock when the step runs). Tasks declaring no step, and steps
    that cannot form a request (no workload identity, bad run input), are left
    out: the gate denies them when they run (under warn and enforce, `PlanCheck.run`
    counts a left-out step as a plan that cannot be built).
    """
    return _plan_and_unbuilt(facts, tasks, workload=workload, types=types)[0]


def _plan_and_unbuilt(
    facts: RunFacts,
    tasks: Sequence[tuple[str, Step | None]],
    *,
    workload: str | None,
    types: EntityTypes,
) -> tuple[dict[str, Any], list[tuple[str, Step, str]]]:
    steps = []
    left_out = []
    for step_id, step in tasks:
        if step is None:
            continue
        one = RunFacts(facts.workflow_id, facts.run_id, step_id, 0, facts.inputs)
        try:
            request = build_request(step, one, workload=workload, types=types)
        except StepguardError as exc:
            left_out.append((step_id, step, str(exc)))
            continue
        steps.append({"step_id": step_id, **request})
    plan = {"run_id": facts.run_id, "workflow_id": facts.workflow_id, "steps": steps}
    return plan, left_out


@dataclass(frozen=True, slots=True)
class PlanCheck:
    """The run-start check for one setting; `actions`: the actions that count (None: all)."""

    mode: PlanMode = PlanMode.OFF
    actions: frozenset[str] | None = None
    timeout_s: float | None = None

    def run(
        self,
        client: StepguardClient,
        facts: RunFacts,
        tasks: Sequence[tuple[str, Step | None]],
        *,
        workload: str | None = None,
        types: EntityTypes = DEFAULT_TYPES,
    ) -> PlanOutcome:
        """Ask for the run's plan and judge it; never raises (a plan that cannot be had
        is `unchecked`: it stops the run under enforce)."""
        if self.mode is PlanMode.OFF:
            return PlanOutcome(self.mode)
        where = f"run {facts.workflow_id}/{facts.run_id}"
        try:
            plan, left_out = _plan_and_unbuilt(facts, tasks, workload=workload, types=types)
            counted = [u for u in left_out if self.actions is None or u[1].action in self.actions]
            if counted:  # a step the plan cannot hold is a step nobody checked
                step_id, step, why = counted[0]
                return self.unchecked(
                    where,
                    f"the plan cannot be built: step {step_id!r} ({step.action} on "
                    f"{step.target}): {why}",
                )
            if not plan["steps"]:  # nothing to check: each task is still decided (or refused)
                return PlanOutcome(self.mode)
            report = client.plan(plan, timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - fail closed: an unmade plan is unchecked
            return self.unchecked(where, f"{type(exc).__name__}: {exc}")
        return self.judge(report, facts, tasks)

    def unchecked(self, where: str, why: str, report: PlanReport | None = None) -> PlanOutcome:
        """The outcome of a plan that could not be had (`why`): under enforce the run
        stops, the message saying it was not started; under warn it is logged and the
        run goes on. `where` names the run for the message."""
        if self.mode is PlanMode.OFF:
            return PlanOutcome(self.mode)
        if self.mode is PlanMode.ENFORCE:
            message = (
                f"stepguard plan of {where} could not be checked ({why}); the run was not "
                "started (plan_check = enforce starts no run unchecked)"
            )
        else:
            message = (
                f"stepguard plan of {where} not made ({why}); the run goes on, each step is "
                "still decided when it runs (plan_check = warn)"
            )
        stop = self.mode is PlanMode.ENFORCE
        return PlanOutcome(self.mode, report, message=message, stop=stop, unchecked=why)

    def judge(
        self,
        report: PlanReport,
        facts: RunFacts,
        tasks: Sequence[tuple[str, Step | None]] = (),
    ) -> PlanOutcome:
        """The outcome of a plan report under this setting (the message names each step
        certainly denied, its action and target, and the policies that deny it)."""
        where = f"{facts.workflow_id}/{facts.run_id}"
        if not report.made:
            return self.unchecked(f"run {where}", report.reason or "no reason given", report)
        declared: Mapping[str, Step | None] = dict(tasks)
        denied = tuple(
            s
            for s in report.denied_steps
            if self.actions is None
            or (declared.get(s.step_id) is not None and _action(declared, s) in self.actions)
        )
        if not denied:
            return PlanOutcome(self.mode, report)
        parts = []
        for s in denied:
            step = declared.get(s.step_id)
            what = f" ({step.action} on {step.target})" if step is not None else ""
            policies = f" [policy: {', '.join(s.policies)}]" if s.policies else ""
            parts.append(f"step {s.step_id!r}{what}: {s.reason}{policies}")
        stop = self.mode is PlanMode.ENFORCE
        tail = (
            "the run is stopped before its first task (plan_check = enforce)"
            if stop
            else "the run goes on; each step is still decided when it runs (plan_check = warn)"
        )
        message = (
            f"stepguard plan {report.plan_id} of run {where}: certainly denied: "
            + "; ".join(parts)
            + f"; {tail}"
        )
        return PlanOutcome(self.mode, report, denied, message, stop)


def _action(declared: Mapping[str, Step | None], step: StepPlan) -> str:
    found = declared.get(step.step_id)
    return found.action if found is not None else ""


@dataclass
class RunPlans:
    """Plan outcomes already had, by (workflow, run): a run is planned once per process,
    however many of its tasks start there (Airflow's gate runs per task)."""

    outcomes: dict[tuple[str, str], PlanOutcome] = field(default_factory=dict)
    max_runs: int = 256

    def get(self, facts: RunFacts) -> PlanOutcome | None:
        return self.outcomes.get((facts.workflow_id, facts.run_id))

    def put(self, facts: RunFacts, outcome: PlanOutcome) -> None:
        if len(self.outcomes) >= self.max_runs:
            self.outcomes.pop(next(iter(self.outcomes)))
        self.outcomes[(facts.workflow_id, facts.run_id)] = outcome
