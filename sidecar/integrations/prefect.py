"""Prefect 3 task guard: every task run asks stepguard before its function body runs.

    from sidecar.integrations.prefect import guarded_task

    @guarded_task("create_account", target="okta", retries=2)
    def create_account(new_hire: str) -> str: ...

`guarded_task` is `prefect.task` around `guard`: the guard asks with the flow
name as workflow, the flow-run id as run, the task-run id as step, the task
run's `run_count` as attempt, and the flow run's `requester`, `approval` and
`time_bound` parameters. On ALLOW the body runs and `current_decision()` gives
it the decision (its credential TTL obligation, for one); on DENY the task run
fails with the reasons in its log and the retry condition does not retry it;
when no decision can be had, the task run fails and a retry (if the task has
retries) asks again. The body never runs without an ALLOW.

When the body returns or raises, the guard reports the outcome for the
decision that attempt got: `succeeded`, `timed_out` (`timeout_seconds`, or a
TimeoutError) or `failed` with the exception's class,
with the run count as attempt and what the body declared with
`record_effect(...)`. A retry is a new attempt with its own decision and
outcome; a denied attempt reports nothing (its body never ran). An outcome
that cannot be recorded is a warning in the task run's log, never a failure.

Pre-flight: `@planned(task, ...)` under `@flow` plans the flow run's guarded
tasks when it starts (`PREFECT_STEPGUARD_PLAN_CHECK` = off | warn | enforce,
default off): with `enforce` a flow run with a step certainly denied fails
before its first task, naming the step and the policy (`RunStopped`), and so
does one whose plan could not be checked (`PlanNotChecked`: sidecar down, plan
refused; sidecar/integrations/preflight.py). A plan never replaces the decisions.

The sidecar is found through the environment, read at each check:
`PREFECT_STEPGUARD_TARGET` (HOST:PORT or unix:///path, default 127.0.0.1:50051),
`PREFECT_STEPGUARD_TIMEOUT` (seconds) and `PREFECT_STEPGUARD_WORKLOAD` (the
worker's default SPIFFE id), or pass `config=GuardConfig(...)`. Without a
target it uses STEPGUARD_ADDRESS, which the Helm chart sets in worker containers.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar, cast

from sidecar.client import StepDecision, StepDenied, StepguardClient, denied, error_class_of
from sidecar.core.errors import StepguardError
from sidecar.integrations.gate import (
    Gate,
    GuardConfig,
    StepguardUnavailable,
    Verdict,
    describe,
    env_config,
    refusal,
    verdict,
)
from sidecar.integrations.outcomes import (
    SUCCEEDED,
    TIMED_OUT,
    end,
    record_effect,
    status_of,
)
from sidecar.integrations.steps import RunFacts, Step, run_facts

__all__ = [
    "PlanNotChecked",
    "RunStopped",
    "current_decision",
    "guard",
    "guarded_task",
    "planned",
    "record_effect",
    "retry_unless_denied",
]

ENV_PREFIX = "PREFECT_STEPGUARD_"
STEP_ATTR = "__stepguard_step__"  # a guarded function's declared Step, for `planned`
P = ParamSpec("P")
R = TypeVar("R")
RetryCondition = Callable[[Any, Any, Any], bool | Awaitable[bool]]

log = logging.getLogger(__name__)
_current: ContextVar[StepDecision | None] = ContextVar("stepguard_decision", default=None)


def config_from_env(environ: Mapping[str, str] | None = None) -> GuardConfig:
    """PREFECT_STEPGUARD_{TARGET,TIMEOUT,WORKLOAD,PLAN_CHECK,PLAN_ACTIONS}; the target falls
    back to STEPGUARD_ADDRESS."""
    return env_config(ENV_PREFIX, environ)


_default_gate = Gate(config_from_env)


def facts_from_runtime() -> RunFacts:
    """Prefect's ids for the current task run; empty ids (outside a run) are denied later."""
    from prefect.runtime import flow_run, task_run

    return run_facts(
        workflow=flow_run.flow_name,
        run=flow_run.id,
        step=task_run.id,
        attempt=task_run.run_count,
        inputs=flow_run.parameters,
    )


def current_decision() -> StepDecision:
    """The ALLOW decision of the running guarded task; raises outside one."""
    decision = _current.get()
    if decision is None:
        raise StepguardError(
            "no stepguard decision here: call current_decision() inside a guarded task"
        )
    return decision


def guard(
    action: str,
    target: str,
    *,
    sensitivity: str | None = None,
    workload: str | None = None,
    config: GuardConfig | Callable[[], GuardConfig] | None = None,
    client: StepguardClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Wrap a task function so that it runs only after an ALLOW (sync or async)."""
    declared = Step(action, target, sensitivity, workload)  # a bad declaration fails at import
    gate = (
        _default_gate
        if config is None and client is None
        else Gate(config if config is not None else config_from_env, client=client)
    )

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                facts = _facts()
                decision = await asyncio.to_thread(gate.check, declared, facts)
                token = _admit(decision, facts)
                attempt, opened = gate.begin(decision, facts, declared)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    # Queued (never awaited): a cancelled task would be cancelled again.
                    gate.submit(attempt, *ended_with(exc), logger=_run_logger())
                    raise
                finally:
                    end(opened)
                    _current.reset(token)
                gate.submit(attempt, SUCCEEDED, logger=_run_logger())
                return result

            setattr(guarded_async, STEP_ATTR, declared)
            return cast(Callable[P, R], guarded_async)

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            facts = _facts()
            decision = gate.check(declared, facts)
            token = _admit(decision, facts)
            attempt, opened = gate.begin(decision, facts, declared)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                gate.submit(attempt, *ended_with(exc), logger=_run_logger())
                raise
            finally:
                end(opened)
                _current.reset(token)
            gate.submit(attempt, SUCCEEDED, logger=_run_logger())
            return result

        setattr(guarded, STEP_ATTR, declared)
        return guarded

    return wrap


def guarded_task(
    action: str,
    target: str,
    *,
    sensitivity: str | None = None,
    workload: str | None = None,
    config: GuardConfig | Callable[[], GuardConfig] | None = None,
    client: StepguardClient | None = None,
    **task_options: Any,
) -> Callable[[Callable[P, R]], Any]:
    """`prefect.task(**task_options)` around `guard(...)`, with a retry condition that
    never retries a denial (a `retry_condition_fn` you pass still decides the rest)."""
    from prefect import task

    condition = retry_unless_denied(task_options.pop("retry_condition_fn", None))
    checked = guard(
        action, target, sensitivity=sensitivity, workload=workload, config=config, client=client
    )

    def wrap(fn: Callable[P, R]) -> Any:
        return task(**task_options, retry_condition_fn=condition)(checked(fn))

    return wrap


class RunStopped(StepguardError):
    """plan_check = enforce: a step of the flow run is certainly denied; no task ran."""


class PlanNotChecked(RunStopped):
    """plan_check = enforce: the flow run's plan could not be checked (sidecar unreachable
    or too slow, plan refused, run ids unreadable); no task ran. A new run once the
    sidecar answers may succeed."""


def declared_step(task: Any) -> Step | None:
    """The step a guarded task (or guarded function) declares; None for any other."""
    fn = getattr(task, "fn", task)
    step = getattr(fn, STEP_ATTR, None)
    return step if isinstance(step, Step) else None


def planned(
    *tasks: Any,
    config: GuardConfig | Callable[[], GuardConfig] | None = None,
    client: StepguardClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Pre-flight a flow run when it starts (`PREFECT_STEPGUARD_PLAN_CHECK`: off, warn,
    enforce; preflight.py), planning the guarded `tasks` the flow runs:

        @flow(name="onboarding")
        @planned(create_account, grant_access, issue_credential, notify)
        def onboarding(new_hire: str, requester: str, approval: dict | None = None): ...

    With `enforce`, a flow run with a step certainly denied raises `RunStopped`
    (naming the step and the policy) before the flow's body, so before its
    first task, and one whose plan could not be checked raises `PlanNotChecked`
    (saying why); with `warn` the flow run's log says so and the flow goes on.
    Each task is still decided when it runs.
    """
    steps = [(_task_name(t), declared_step(t)) for t in tasks]
    gate = (
        _default_gate
        if config is None and client is None
        else Gate(config if config is not None else config_from_env, client=client)
    )

    def check() -> None:
        try:
            facts = facts_from_runtime()
        except Exception as exc:  # noqa: BLE001 - no plan without ids: unchecked
            outcome = gate.plan_unchecked(
                "this flow run", f"cannot read Prefect's ids: {exc!r}", logger=_run_logger()
            )
        else:
            outcome = gate.plan_run(facts, steps, logger=_run_logger())
        if outcome.stop:
            raise (PlanNotChecked if outcome.unchecked else RunStopped)(outcome.message)

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def planned_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                await asyncio.to_thread(check)
                return await fn(*args, **kwargs)

            return cast(Callable[P, R], planned_async)

        @functools.wraps(fn)
        def planned_sync(*args: P.args, **kwargs: P.kwargs) -> R:
            check()
            return fn(*args, **kwargs)

        return planned_sync

    return wrap


def _task_name(task: Any) -> str:
    name = getattr(task, "name", None) or getattr(getattr(task, "fn", task), "__name__", "")
    return str(name)


def ended_with(exc: BaseException, *, has_timeout: bool | None = None) -> tuple[str, str]:
    """The outcome status of a body that raised `exc`.

    Prefect's `timeout_seconds` interrupts the body with a CancelledError
    (Prefect's own, or asyncio's for a sync task in a worker thread) and only
    outside the body turns it into a TimeoutError. So inside, Prefect's class,
    or any CancelledError of a task that has a timeout (`has_timeout`, by
    default read from the running task), is the timeout; anything else as
    `status_of` says.
    """
    kind = type(exc)
    if isinstance(exc, asyncio.CancelledError) and (
        kind.__module__.startswith("prefect.")
        or (has_timeout if has_timeout is not None else _task_has_timeout())
    ):
        return TIMED_OUT, error_class_of(exc)
    return status_of(exc)


def _task_has_timeout() -> bool:
    try:
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        return ctx is not None and ctx.task.timeout_seconds is not None
    except Exception:  # noqa: BLE001 - no run context: not known to have one
        return False


def retry_unless_denied(condition: RetryCondition | None = None) -> RetryCondition:
    """A Prefect retry condition: a policy DENY is final, an unreachable sidecar is retried."""

    def should_retry(task: Any, task_run: Any, state: Any) -> bool | Awaitable[bool]:
        error = _exception_of(state)
        if isinstance(error, StepguardUnavailable):
            return True
        if isinstance(error, StepDenied):
            return False
        return True if condition is None else condition(task, task_run, state)

    return should_retry


def _exception_of(state: Any) -> BaseException | None:
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - a state that re-raises its own exception
        return exc
    return result if isinstance(result, BaseException) else None


def _facts() -> RunFacts:
    try:
        return facts_from_runtime()
    except Exception as exc:
        raise StepDenied(denied(f"cannot read Prefect's run ids: {exc!r}")) from exc


def _admit(decision: StepDecision, facts: RunFacts) -> Token[StepDecision | None]:
    """Log the decision; return the context token on ALLOW, raise the refusal otherwise."""
    logger = _run_logger()
    line = describe(decision, facts)
    if verdict(decision) is Verdict.ALLOW:
        logger.info(line)
        return _current.set(replace(decision, response=None))
    logger.error(line)
    raise refusal(decision)


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        from prefect.logging import get_run_logger

        return cast(logging.LoggerAdapter[logging.Logger], get_run_logger())
    except Exception:  # noqa: BLE001 - outside a run context: plain logging
        return log
