"""Temporal worker interceptor: every activity asks stepguard before its body runs.

    from sidecar.integrations.temporal import StepguardInterceptor, record_effect, step

    @step("create_account", target="okta", workload=PROVISIONER)
    @activity.defn
    async def create_account(request: AccountRequest) -> str: ...

    Worker(client, task_queue="identity", workflows=[...], activities=[...],
           interceptors=[StepguardInterceptor()])

Where the guard lives, and why there: in the worker's *activity* inbound
interceptor (`ActivityInboundInterceptor.execute_activity`), which every
activity attempt passes through, local activities included, right before its
body. Workflow code runs in a deterministic sandbox that forbids I/O and is
replayed from history on every worker restart, so nothing of the guard runs
there: a question asked from workflow code would be asked again on each replay.
An activity that completed is never executed again on replay (its result is
in the history), so each attempt asks once and reports once.

Each attempt is asked with the workflow type as workflow, `<workflow id>/<run
id>` as run, `<activity type>[<activity id>]` as step and the activity's
attempt (`steps.run_facts`, the mapping Airflow and Prefect use); `requester`,
`approval` and `time_bound` are read from the activity's arguments (a mapping
or a dataclass among them that has those keys: the workflow passes its run's
input on). The activity declares what it does with `step(...)`, the same
arguments as Airflow's `step` and Prefect's `guarded_task`; an activity that
declares nothing is refused.

- ALLOW: the body runs; `current_decision()` gives it the decision (its
  credential TTL obligation, for one), and `record_effect(...)` declares what
  it changed.
- DENY (the policy, or a request the sidecar refused as INVALID_ARGUMENT): the
  body never runs; the attempt fails with a non-retryable `ApplicationError`
  (type `StepguardDenied`, or `StepguardInvalidRequest` naming the field),
  whose message and details carry the reason, the determining policies and the
  decision id. The workflow sees it after one attempt, whatever the retry policy.
- No decision (sidecar unreachable, too slow, overloaded): the body never
  runs; the attempt fails with a *retryable* `ApplicationError` (type
  `StepguardUnavailable`): an outage passes, the retry policy asks again.

After the body returns or raises, the outcome of that attempt is reported for
its decision: `succeeded`; `timed_out` when Temporal cancelled it for a timeout
(`activity.cancellation_details().timed_out`) or it raised a TimeoutError;
otherwise `failed` with the exception's class (a cancellation is `failed` with
the cancellation's class: the outcome API has no `cancelled` status). As the
Airflow and Prefect guards do, the outcome is queued (`Gate.submit`) for the
client's outcome reporter, which sends the worker's outcomes in RecordOutcomes
batches (every 128 outcomes or 0.1 s, on `close()`, at process exit): the
activity never waits on the sidecar for it. A retry of the activity (same
worker process, another asyncio task) is decided only once the earlier
attempt's outcome was sent (`Gate.check`), so the trail keeps each attempt's
outcome before the next attempt's decision. A worker that stops calls the
interceptor's `close()`, which sends what is queued. A report that cannot be
recorded is a warning in the activity's log, never a failure.

The sidecar is found through the environment, read at each check:
`TEMPORAL_STEPGUARD_TARGET` (HOST:PORT or unix:///path, default
127.0.0.1:50051), `TEMPORAL_STEPGUARD_TIMEOUT` (seconds) and
`TEMPORAL_STEPGUARD_WORKLOAD` (the worker's default SPIFFE id), else
STEPGUARD_ADDRESS (the Helm chart's), or pass `config=GuardConfig(...)`.

Pre-flight when a run starts: the interceptor is a client interceptor too
(`Client.connect(..., interceptors=[StepguardInterceptor()])`, which also puts
it on every worker of that client). Its `start_workflow` plans the run's
activities, as the workflow class declares them with `@planned(activity, ...)`
above `@workflow.defn`, under `TEMPORAL_STEPGUARD_PLAN_CHECK` = off | warn |
enforce (default off; `TEMPORAL_STEPGUARD_PLAN_ACTIONS` limits the actions
that count), through the shared preflight code (preflight.py):

- off: nothing is asked;
- warn: the workflow is started, then its plan is asked for with the run id
  Temporal gave it (`<workflow id>/<run id>`, the activities' run id), so the
  sidecar's `plan` event is linked to the run's decisions; a step certainly
  denied, a plan that could not be had, a workflow type with no `@planned`,
  are warnings in the client's log, and the run goes on;
- enforce: the plan is asked for before the workflow exists (its run id is the
  workflow id alone: Temporal has not named the run yet). A run with a step
  certainly denied raises `RunStopped` naming the step and the policy, and a
  run whose plan could not be checked (sidecar unreachable, plan refused, no
  `@planned` on the workflow type) raises `PlanNotChecked`: enforce starts no
  run unchecked (the shared rule, `PlanOutcome.unchecked`). Either way no
  workflow is created.

Update-with-start is checked the same way (under warn, before the start: the
run id is not at hand there). Runs Temporal starts by itself (schedules,
cron, child workflows, continue-as-new) pass no client, so they are not
planned: each of their activities is still decided when it runs.

Over 500 lines because the worker guard and the client pre-flight are the two
halves of one interceptor class (Temporal gives a client interceptor to every
worker built on that client), and both read the same `@step` declarations.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import temporalio.activity
import temporalio.client
import temporalio.exceptions
import temporalio.worker
import temporalio.workflow

from sidecar.client import DecisionKind, StepDecision, StepguardClient, error_class_of
from sidecar.core.errors import StepguardError
from sidecar.integrations.gate import Gate, GuardConfig, Verdict, describe, env_config, verdict
from sidecar.integrations.outcomes import (
    FAILED,
    OUTCOME_TIMEOUT_S,
    SUCCEEDED,
    TIMED_OUT,
    end,
    record_effect,
    status_of,
)
from sidecar.integrations.preflight import PlanMode, PlanOutcome
from sidecar.integrations.steps import (
    APPROVAL,
    REQUESTER,
    TIME_BOUND,
    RunFacts,
    Step,
    run_facts,
)

__all__ = [
    "DENIED",
    "INVALID",
    "UNAVAILABLE",
    "PlanNotChecked",
    "RunStopped",
    "StepguardInterceptor",
    "config_from_env",
    "current_decision",
    "declared_step",
    "planned",
    "planned_steps",
    "record_effect",
    "step",
]

ENV_PREFIX = "TEMPORAL_STEPGUARD_"
# The ApplicationError types an activity refused by the guard fails with.
DENIED, INVALID, UNAVAILABLE = "StepguardDenied", "StepguardInvalidRequest", "StepguardUnavailable"
_STEP_ATTR = "__stepguard_step__"
_PLAN_ATTR = "__stepguard_plan__"
_RUN_KEYS = (REQUESTER, APPROVAL, TIME_BOUND)

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)
_current: ContextVar[StepDecision | None] = ContextVar("stepguard_temporal_decision", default=None)
# The planned activities of each workflow type `@planned` saw in this process, by
# workflow type name: what the client interceptor plans when a run of it starts.
PlannedSteps = tuple[tuple[str, Step | None], ...]
_plans: dict[str, PlannedSteps] = {}


def config_from_env(environ: Mapping[str, str] | None = None) -> GuardConfig:
    """TEMPORAL_STEPGUARD_{TARGET,TIMEOUT,WORKLOAD,PLAN_CHECK,PLAN_ACTIONS}; the target falls
    back to STEPGUARD_ADDRESS."""
    return env_config(ENV_PREFIX, environ)


def step(
    action: str,
    target: str,
    *,
    sensitivity: str | None = None,
    workload: str | None = None,
) -> Callable[[F], F]:
    """Declare what an activity does: `@step("grant_access", target="github")` above
    `@activity.defn`. A bad declaration fails when the module is imported."""
    declared = Step(action, target, sensitivity, workload)

    def mark(fn: F) -> F:
        setattr(fn, _STEP_ATTR, declared)
        return fn

    return mark


def declared_step(fn: Any) -> Step | None:
    """The step an activity function (or bound method) declares; None when none."""
    found = getattr(fn, _STEP_ATTR, None)
    return found if isinstance(found, Step) else None


class RunStopped(StepguardError):
    """plan_check = enforce: a step of the run is certainly denied; no workflow was created."""

    def __init__(self, message: str, outcome: PlanOutcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class PlanNotChecked(RunStopped):
    """plan_check = enforce: the run's plan could not be checked (sidecar unreachable, plan
    refused, workflow type without `@planned`), so the run was not started unchecked.
    Starting it again once the sidecar answers (or the type declares its plan) may succeed."""


W = TypeVar("W", bound=type)


def planned(*activities: Callable[..., Any]) -> Callable[[W], W]:
    """Declare the activities a workflow runs, in order, for the pre-flight check when a
    run of it starts (`TEMPORAL_STEPGUARD_PLAN_CHECK`); above `@workflow.defn`:

        @planned(create_account, grant_access, issue_credential, notify)
        @workflow.defn(name="onboarding")
        class Onboarding: ...

    Each is an `@activity.defn` function (its `@step(...)` is what is planned; one
    without is left out of the plan and refused when it runs), listed once. The plan
    is found by workflow type name in the process that starts the run: import the
    workflow's module there (starting it by `Onboarding.run` does). A mistake fails
    when the module is imported. Pure: no I/O, so it is safe in the workflow sandbox.
    """
    steps: list[tuple[str, Step | None]] = []
    for fn in activities:
        defn = temporalio.activity._Definition.from_callable(fn)
        if defn is None or not defn.name:
            raise StepguardError(
                f"@planned takes activities (@activity.defn functions), got {fn!r}"
            )
        if defn.name not in dict(steps):
            steps.append((defn.name, declared_step(fn)))
    plan: PlannedSteps = tuple(steps)

    def mark(cls: W) -> W:
        defn = getattr(cls, "__temporal_workflow_definition", None)
        name = getattr(defn, "name", None) if getattr(defn, "cls", None) is cls else None
        if not name:
            raise StepguardError(
                f"@planned must sit above @workflow.defn (named): {cls.__name__} is no "
                "workflow definition yet"
            )
        register = not temporalio.workflow.unsafe.in_sandbox()  # the sandbox re-imports it
        known = _plans.get(name) if register else None
        if known is not None and known != plan:
            raise StepguardError(
                f"workflow type {name!r} is @planned twice with different activities "
                f"({[s for s, _ in known]} and {[s for s, _ in plan]})"
            )
        setattr(cls, _PLAN_ATTR, plan)
        if register:
            _plans[name] = plan
        return cls

    return mark


def planned_steps(workflow: str | type) -> PlannedSteps | None:
    """The (activity type, step) list a workflow type (its name or class) declares with
    `@planned`, as this process knows it; None when it declares none."""
    if isinstance(workflow, type):
        found = vars(workflow).get(_PLAN_ATTR)  # its own, not a base class's
        return found if isinstance(found, tuple) else None
    return _plans.get(workflow)


def current_decision() -> StepDecision:
    """The ALLOW decision of the running guarded activity; raises outside one."""
    decision = _current.get()
    if decision is None:
        raise StepguardError(
            "no stepguard decision here: call current_decision() inside an activity "
            "run by a worker with StepguardInterceptor"
        )
    return decision


def run_input(args: Sequence[Any]) -> dict[str, Any]:
    """`requester`, `approval` and `time_bound` from an activity's arguments: the first
    mapping or dataclass that has any of them (the workflow passes its run's input on)."""
    for arg in args:
        if dataclasses.is_dataclass(arg) and not isinstance(arg, type):
            values = {f.name: getattr(arg, f.name) for f in dataclasses.fields(arg)}
        elif isinstance(arg, Mapping):
            values = dict(arg)
        else:
            continue
        found = {key: values[key] for key in _RUN_KEYS if key in values}
        if found:
            return found
    return {}


def facts_from_info(info: temporalio.activity.Info, args: Sequence[Any] = ()) -> RunFacts:
    """Temporal's ids for this activity attempt, through the mapping every integration uses."""
    return run_facts(
        workflow=info.workflow_type,
        execution=info.workflow_id,
        run=info.workflow_run_id,
        step=info.activity_type,
        instance=info.activity_id,
        attempt=info.attempt,
        inputs=run_input(args),
    )


def refusal(decision: StepDecision, facts: RunFacts, task_queue: str = "") -> Exception:
    """The `ApplicationError` that fails an attempt the guard did not admit.

    Non-retryable for a DENY and an invalid request (asking again gives the
    same answer); retryable when no decision could be had.
    """
    line = describe(decision, facts)
    if task_queue:
        line += f"; task queue {task_queue}"
    unavailable = verdict(decision) is Verdict.UNAVAILABLE
    if unavailable:
        kind = UNAVAILABLE
        line += "; retryable: the activity did not run, a retry asks again"
    elif decision.kind is DecisionKind.INVALID_REQUEST:
        kind = INVALID
    else:
        kind = DENIED
    details = {
        "decision": verdict(decision).name,
        "kind": decision.kind.value,
        "reason": decision.reason,
        "determining_policies": list(decision.determining_policies),
        "errors": list(decision.errors),
        "decision_id": decision.decision_id,
    }
    return temporalio.exceptions.ApplicationError(
        line, details, type=kind, non_retryable=not unavailable
    )


def ended_with(exc: BaseException, now: datetime | None = None) -> tuple[str, str]:
    """The outcome status of an activity body that raised `exc`.

    Temporal stops a running activity by cancelling it, and says why in
    `activity.cancellation_details()`: `timed_out` (a local activity past its
    timeout), or `not_found` when the server no longer knows the attempt (it
    timed out there, or the workflow closed). A not-found attempt past its
    own start-to-close or schedule-to-close deadline ran out of time; any
    other cancellation (the workflow cancelled it, the worker shut down) is
    `failed` with its class: the outcome API has no `cancelled` status.
    """
    if isinstance(exc, asyncio.CancelledError | temporalio.exceptions.CancelledError):
        try:
            details = temporalio.activity.cancellation_details()
            info = temporalio.activity.info()
        except Exception:  # noqa: BLE001 - outside an activity context: not known
            return FAILED, error_class_of(exc)
        if details is not None and (
            details.timed_out or (details.not_found and _past_deadline(info, now))
        ):
            return TIMED_OUT, error_class_of(exc)
        return FAILED, error_class_of(exc)
    return status_of(exc)


def _past_deadline(info: temporalio.activity.Info, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    deadlines = []
    if info.start_to_close_timeout:
        deadlines.append(info.started_time + info.start_to_close_timeout)
    if info.schedule_to_close_timeout:
        deadlines.append(info.scheduled_time + info.schedule_to_close_timeout)
    return any(now >= deadline for deadline in deadlines)


class _ActivityGuard(temporalio.worker.ActivityInboundInterceptor):
    """Asks before each activity attempt; reports its outcome after."""

    def __init__(self, next: temporalio.worker.ActivityInboundInterceptor, gate: Gate) -> None:
        super().__init__(next)
        self._gate = gate

    async def execute_activity(self, input: temporalio.worker.ExecuteActivityInput) -> Any:
        info = temporalio.activity.info()
        logger: logging.LoggerAdapter[logging.Logger] = temporalio.activity.logger
        declared = declared_step(input.fn)
        try:
            facts = facts_from_info(info, input.args)
        except Exception as exc:
            message = f"stepguard DENY: cannot read the activity's Temporal ids: {exc!r}"
            logger.error(message)
            raise temporalio.exceptions.ApplicationError(
                message, type=INVALID, non_retryable=True
            ) from exc
        decision = await asyncio.to_thread(self._gate.check, declared, facts)
        if verdict(decision) is not Verdict.ALLOW or declared is None:
            error = refusal(decision, facts, info.task_queue)
            logger.error(str(error))
            raise error
        logger.info(describe(decision, facts))
        token = _current.set(replace(decision, response=None))
        attempt, opened = self._gate.begin(decision, facts, declared)
        try:
            result = await self.next.execute_activity(input)
        except BaseException as exc:
            # Queued right here, without awaiting: awaiting in a cancelled task
            # would be cancelled again. `submit` never waits on the sidecar.
            self._gate.submit(attempt, *ended_with(exc), logger=_AttemptLogger(logger))
            raise
        finally:
            end(opened)
            _current.reset(token)
        # On the event loop, as on the failure path: `submit` only queues. The check
        # above (in a thread) made the client for this config, so no channel is made
        # here (making one does not dial anyway); the earlier attempt's flush that a
        # retry may wait for (`_settle_earlier_attempts`) happens in that check's thread.
        self._gate.submit(attempt, SUCCEEDED, logger=_AttemptLogger(logger))
        return result


class _AttemptLogger(logging.LoggerAdapter[logging.Logger]):
    """The activity's logger as it was when the attempt ended: the outcome's line is
    logged later, from the outcome reporter's thread, and still carries the
    activity's details (Temporal's adapter reads them from the activity's context)."""

    def __init__(self, adapter: logging.LoggerAdapter[logging.Logger]) -> None:
        super().__init__(adapter.logger, {})
        self._adapter = adapter
        self._context = contextvars.copy_context()

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return self._context.run(self._adapter.process, msg, kwargs)


def _guarded(chain: temporalio.worker.ActivityInboundInterceptor | None) -> bool:
    """Whether an activity's interceptor chain already holds a guard."""
    while chain is not None:
        if isinstance(chain, _ActivityGuard):
            return True
        chain = getattr(chain, "next", None)
    return False


class _StartGuard(temporalio.client.OutboundInterceptor):
    """Plans a run when it is started (`plan_check`); every other call passes through."""

    def __init__(self, next: temporalio.client.OutboundInterceptor, gate: Gate) -> None:
        super().__init__(next)
        self._gate = gate

    async def start_workflow(
        self, input: temporalio.client.StartWorkflowInput
    ) -> temporalio.client.WorkflowHandle[Any, Any]:
        mode = await self._before_start(input.workflow, input.id, input.args)
        handle = await self.next.start_workflow(input)
        if mode is PlanMode.WARN:
            await self._after_start(input.workflow, input.id, handle.result_run_id, input.args)
        return handle

    async def start_update_with_start_workflow(
        self, input: temporalio.client.StartWorkflowUpdateWithStartInput
    ) -> temporalio.client.WorkflowUpdateHandle[Any]:
        start = input.start_workflow_input
        mode = await self._before_start(start.workflow, start.id, start.args)
        if mode is PlanMode.WARN:  # the run id is not at hand here: planned before the start
            await self._after_start(start.workflow, start.id, None, start.args)
        return await self.next.start_update_with_start_workflow(input)

    async def _before_start(self, workflow: str, workflow_id: str, args: Sequence[Any]) -> PlanMode:
        """The setting; under enforce, the shared check itself (raises to refuse the run:
        `RunStopped` for a step certainly denied, `PlanNotChecked` for a plan that could
        not be had, preflight.py).

        A setting that cannot be read raises (ConfigError): nothing is started
        under a setting nobody can tell."""
        mode = self._gate.config().plan_check
        if mode is not PlanMode.ENFORCE:
            return mode
        outcome = await self._plan(workflow, workflow_id, None, args)
        if outcome.stop and outcome.unchecked:
            raise PlanNotChecked(f"{outcome.message}; no workflow was created", outcome)
        if outcome.stop:
            raise RunStopped(f"{outcome.message}; no workflow was created", outcome)
        return mode

    async def _after_start(
        self, workflow: str, workflow_id: str, run_id: str | None, args: Sequence[Any]
    ) -> None:
        """warn: plan the started run (the run goes on whatever it finds; logged)."""
        await self._plan(workflow, workflow_id, run_id, args)

    async def _plan(
        self, workflow: str, workflow_id: str, run_id: str | None, args: Sequence[Any]
    ) -> PlanOutcome:
        """The run's plan outcome under the configured setting (Gate.plan_run, logged);
        a workflow type without `@planned` or an unreadable run input is unchecked."""
        where = f"workflow {workflow} ({workflow_id})"
        steps = planned_steps(workflow)
        if steps is None:
            return self._gate.plan_unchecked(where, _undeclared(workflow), logger=log)
        try:
            facts = _run_facts(workflow, workflow_id, run_id, args)
        except Exception as exc:  # noqa: BLE001 - no facts, no plan: unchecked
            return self._gate.plan_unchecked(where, f"run input not readable: {exc}", logger=log)
        return await asyncio.to_thread(self._gate.plan_run, facts, steps, logger=log)


def _undeclared(workflow: str) -> str:
    return (
        f"workflow type {workflow!r} declares no plan: put @planned(activity, ...) above its "
        "@workflow.defn and import its module where runs are started (@planned() for one "
        "with no guarded activity)"
    )


def _run_facts(
    workflow: str, workflow_id: str, run_id: str | None, args: Sequence[Any]
) -> RunFacts:
    """A run's facts at its start: before it exists (no run id) the run is the workflow id
    alone; once started, `<workflow id>/<run id>` as each activity's (`facts_from_info`)."""
    if run_id:
        return run_facts(
            workflow=workflow, execution=workflow_id, run=run_id, step=None, inputs=run_input(args)
        )
    return run_facts(workflow=workflow, run=workflow_id, step=None, inputs=run_input(args))


class StepguardInterceptor(temporalio.client.Interceptor, temporalio.worker.Interceptor):
    """Guards every activity of the workers it is given to (or of a client's workers).

    `config` defaults to the environment (`config_from_env`), read at each check.
    """

    def __init__(
        self,
        config: GuardConfig | Callable[[], GuardConfig] | None = None,
        *,
        client: StepguardClient | None = None,
    ) -> None:
        self.gate = Gate(config if config is not None else config_from_env, client=client)
        self._said_twice = False

    def intercept_activity(
        self, next: temporalio.worker.ActivityInboundInterceptor
    ) -> temporalio.worker.ActivityInboundInterceptor:
        """The guard around an activity, unless one is there already: given to the client
        and to the worker (Temporal hands a client's interceptors to its workers), each
        activity is still asked once, by the guard nearest the activity (the worker's)."""
        if _guarded(next):
            if not self._said_twice:
                self._said_twice = True
                log.warning(
                    "stepguard: a StepguardInterceptor is given to both the client and the "
                    "worker; each activity is asked once, by the worker's (give it to one)"
                )
            return next
        return _ActivityGuard(next, self.gate)

    def workflow_interceptor_class(
        self, input: temporalio.worker.WorkflowInterceptorClassInput
    ) -> None:
        """None: nothing of the guard runs in workflow code (sandboxed, replayed)."""
        return None

    def intercept_client(
        self, next: temporalio.client.OutboundInterceptor
    ) -> temporalio.client.OutboundInterceptor:
        """Plans each run started through this client (`plan_check`, module docstring)."""
        return _StartGuard(next, self.gate)

    def flush(self, timeout: float = OUTCOME_TIMEOUT_S) -> bool:
        """Send the queued outcomes now and wait (at most `timeout` s per client); True
        when none is left. Blocking: from async code, `asyncio.to_thread`."""
        return self.gate.flush(timeout)

    def close(self) -> None:
        """Send the queued outcomes, then close the gRPC channels to the sidecar: call it
        once the worker has stopped. Blocking (at most the reporter's close timeout,
        5 s): from async code, `await asyncio.to_thread(interceptor.close)`."""
        self.gate.close()
