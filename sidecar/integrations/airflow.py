"""Airflow 3 cluster policy: every task of every DAG asks stepguard right before it executes.

Install, on the workers and the DAG processor, an `airflow_local_settings.py`
on PYTHONPATH (or in $AIRFLOW_HOME/config) holding one line:

    from sidecar.integrations.airflow import task_policy  # noqa: F401

and tell it where the sidecar is, in airflow.cfg (`[stepguard]` target,
timeout, workload) or the environment (`AIRFLOW__STEPGUARD__TARGET`,
`AIRFLOW__STEPGUARD__WORKLOAD`); without a target it uses STEPGUARD_ADDRESS,
which the Helm chart sets in worker containers. DAG code says what each task
does through its params:

    @task(params=step("create_account", target="okta"))

How it works: when a DAG is loaded, the policy reads each task's declaration
(a malformed one rejects the DAG with the reason) and chains a gate in front of
the task's pre-execute hook. Right before `execute()`, the gate asks stepguard
with the DAG id, run id, task id (`task[map_index]` for a mapped task), try
number and the run conf's `requester`, `approval` and `time_bound`. On ALLOW
the decision is put in the task's context (`step_decision(context)`, for
example its credential TTL obligation); on DENY the task fails with the
reasons in its log and is not retried; when no decision can be had, the task
fails with a retryable error, and each retry asks again. The task never runs
without an ALLOW.

After the try, the policy's task callbacks (appended to the task's own)
report the outcome for the decision that try got: `succeeded`
(on_success_callback), `skipped` (AirflowSkipException), `timed_out`
(AirflowTaskTimeout) or `failed` with the exception's class (on_failure and
on_retry: a retry is a new try, with its own decision and outcome), with the
try number and what the task declared with `record_effect(...)`. A denied try
reports nothing (it never ran); an outcome that cannot be recorded is a
warning in the task log, never a task failure.

The declaration is read when the DAG is loaded, not from the run's params: a
run conf with a `stepguard` key cannot change what a task says it does.

Pre-flight (`[stepguard] plan_check = off | warn | enforce`, default off;
`AIRFLOW__STEPGUARD__PLAN_CHECK`): the first task of a DAG run to start plans
every task of the DAG with the run conf (preflight.py; the sidecar records the
plan in its trail). With `warn`, a step certainly denied, or a plan that
cannot be had, is logged in that task's log; with `enforce`, the run fails
right there, before any task body runs, with a message naming the step and the
policy, or saying why the plan could not be checked (sidecar unreachable or too
slow, plan refused): enforce starts no run unchecked. Every task of the run
fails the same way. `plan_actions` (comma-separated) limits which steps count.
A plan never replaces the decisions: each task is still decided when it runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import replace
from typing import Any

from sidecar.client import StepDecision, StepDenied, StepguardClient
from sidecar.core.errors import StepguardError
from sidecar.integrations.gate import (
    ADDRESS_ENV,
    SETTINGS,
    Gate,
    GuardConfig,
    Verdict,
    describe,
    refusal,
    verdict,
)
from sidecar.integrations.outcomes import (
    FAILED,
    SKIPPED,
    SUCCEEDED,
    Attempt,
    end,
    record_effect,
    status_of,
)
from sidecar.integrations.preflight import PlanOutcome, RunPlans
from sidecar.integrations.steps import RunFacts, Step, StepDeclarationError, run_facts

__all__ = [
    "StepguardPolicy",
    "record_effect",
    "step",
    "step_decision",
    "task_policy",
]

PARAM = "stepguard"  # the task param that holds the step declaration
CONTEXT_KEY = "stepguard"  # where the gate leaves the ALLOW decision in the task context
ATTEMPT_KEY = "stepguard_attempt"  # the admitted attempt, whose outcome the callbacks send
CONFIG_SECTION = "stepguard"
_GATE_MARK = "__stepguard_gate__"
# Airflow's task callbacks -> the outcome status (None: from the exception,
# failed or timed_out; a retry is a failed attempt, the next try has its own).
_CALLBACKS: dict[str, str | None] = {
    "on_success_callback": SUCCEEDED,
    "on_skipped_callback": SKIPPED,
    "on_failure_callback": None,
    "on_retry_callback": None,
}

log = logging.getLogger(__name__)


def step(
    action: str,
    target: str,
    *,
    sensitivity: str | None = None,
    workload: str | None = None,
) -> dict[str, Any]:
    """Task params declaring the step: `@task(params=step("grant_access", target="github"))`."""
    return {PARAM: Step(action, target, sensitivity, workload).to_json()}


def declared_step(task: Any) -> Step | None:
    """The step a task declares in its own params, None when it declares none."""
    params = getattr(task, "params", None) or {}
    if PARAM not in params:
        return None
    return Step.from_json(params[PARAM])


def config_from_airflow() -> GuardConfig:
    """`[stepguard]` target, timeout and workload from Airflow's configuration (or
    AIRFLOW__STEPGUARD__*); the target falls back to STEPGUARD_ADDRESS (Helm chart)."""
    try:
        from airflow.sdk.configuration import conf
    except ImportError:  # an Airflow without the task SDK's configuration module
        from airflow.configuration import conf
    values = {key: conf.get(CONFIG_SECTION, key, fallback=None) for key in SETTINGS}
    values["target"] = values["target"] or os.environ.get(ADDRESS_ENV)
    return GuardConfig.from_strings(values)


def facts_from_context(context: Mapping[str, Any]) -> RunFacts:
    """Airflow's ids for this attempt, and the run conf as the run's input."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    dag_run = context.get("dag_run")
    return run_facts(
        workflow=ti.dag_id,
        run=ti.run_id,
        step=ti.task_id,
        instance=None if map_index is None or map_index < 0 else map_index,
        attempt=ti.try_number,
        inputs=getattr(dag_run, "conf", None) or {},
    )


def step_decision(context: Mapping[str, Any] | None = None) -> StepDecision:
    """The ALLOW decision of the running task, e.g. `.max_credential_ttl`.

    Raises when the task was not gated, so task code that depends on an
    obligation cannot run unguarded by accident.
    """
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    decision = context.get(CONTEXT_KEY)
    if not isinstance(decision, StepDecision) or not decision.allowed:
        raise StepguardError(
            "this task was not authorized by stepguard: install "
            "sidecar.integrations.airflow.task_policy in airflow_local_settings.py"
        )
    return decision


class StepguardPolicy:
    """The cluster policy. `config` defaults to Airflow's `[stepguard]` section, read per check."""

    def __init__(
        self,
        config: GuardConfig | Callable[[], GuardConfig] | None = None,
        *,
        client: StepguardClient | None = None,
    ) -> None:
        self.gate = Gate(config if config is not None else config_from_airflow, client=client)
        self.plans = RunPlans()  # a DAG run is planned once per process
        # What each task declared when the policy read it (dag id, task id): the plan
        # uses these, not the params of the run's task objects (a running task's
        # params are the run's, rendered).
        self.declared: dict[tuple[str, str], Step | None] = {}

    def as_task_policy(self) -> Callable[[Any], None]:
        """A plain function for airflow_local_settings.py (Airflow's plugin manager
        cannot register a bound method): `task_policy = StepguardPolicy(cfg).as_task_policy()`."""
        policy = self

        def task_policy(task: Any) -> None:
            policy.task_policy(task)

        return task_policy

    def task_policy(self, task: Any) -> None:
        """Chain the gate in front of the task's pre-execute hook (mapped tasks: their partial)."""
        from airflow.exceptions import AirflowClusterPolicyViolation

        try:
            declared = declared_step(task)
        except StepDeclarationError as exc:
            dag_id = getattr(getattr(task, "dag", None), "dag_id", "?")
            raise AirflowClusterPolicyViolation(
                f"task {task.task_id!r} of DAG {dag_id!r}: invalid stepguard declaration: {exc}"
            ) from exc
        dag_id = getattr(task, "dag_id", None) or getattr(
            getattr(task, "dag", None), "dag_id", None
        )
        if dag_id:
            self.declared[(str(dag_id), str(task.task_id))] = declared
        partial = getattr(task, "partial_kwargs", None)
        if isinstance(partial, MutableMapping):  # a MappedOperator: unmapped tasks get this hook
            partial["pre_execute"] = self._chain(declared, partial.get("pre_execute"))
        else:
            task._pre_execute_hook = self._chain(declared, task._pre_execute_hook)
        # After the try: report what it did (the callbacks' context has the exception).
        for kind, status in _CALLBACKS.items():
            callbacks = list(getattr(task, kind, None) or [])
            if not any(getattr(c, _GATE_MARK, False) for c in callbacks):
                setattr(task, kind, [*callbacks, self._reporter(status)])

    def _reporter(self, status: str | None) -> Callable[[Mapping[str, Any]], None]:
        def report(context: Mapping[str, Any]) -> None:
            self.report(context, status)

        setattr(report, _GATE_MARK, True)
        return report

    def report(self, context: Mapping[str, Any], status: str | None) -> None:
        """The outcome of the attempt this context ran (`status` None: from its exception).

        Nothing for an attempt the gate did not admit: its body never ran.
        Never raises (a callback that raises is only logged by Airflow, but
        reporting must not even do that).
        """
        try:
            attempt = context.get(ATTEMPT_KEY)
            if not isinstance(attempt, Attempt):
                return
            end()
            task_log = getattr(context.get("task"), "log", None) or log
            error_class = ""
            if status is None:  # failed, or up for retry: what the exception says
                exc = context.get("exception")
                if isinstance(exc, BaseException):
                    status, error_class = status_of(exc)
                if status in (None, SUCCEEDED, SKIPPED):  # no exception to name
                    status, error_class = FAILED, "Unknown"
            self.gate.submit(attempt, status, error_class, logger=task_log)
        except Exception:
            log.warning("stepguard: outcome not reported", exc_info=True)

    def _chain(
        self, declared: Step | None, previous: Callable[..., Any] | None
    ) -> Callable[..., Any]:
        if previous is not None and getattr(previous, _GATE_MARK, False):
            return previous  # already gated (a policy applied twice)

        def gate(context: MutableMapping[str, Any]) -> None:
            self.check(declared, context)
            if previous is not None:
                previous(context)

        setattr(gate, _GATE_MARK, True)
        return gate

    def plan_run(self, context: Mapping[str, Any], facts: RunFacts) -> PlanOutcome:
        """The DAG run's pre-flight (`[stepguard] plan_check`), once per run and process.

        The first task of a run that starts here plans every task of its DAG;
        under `enforce`, a run with a step certainly denied, or whose plan could
        not be checked, fails at that first task, before its body runs, and so
        does every later task of the run.
        """
        known = self.plans.get(facts)
        if known is not None:
            return known
        task_log = getattr(context.get("task"), "log", None) or log
        tasks = dag_steps(context.get("dag"), self.declared)
        outcome = self.gate.plan_run(facts, tasks, logger=task_log)
        self.plans.put(facts, outcome)
        return outcome

    def check(self, declared: Step | None, context: MutableMapping[str, Any]) -> None:
        """Ask; on ALLOW leave the decision in the context, otherwise fail the task."""
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        task_log = getattr(context.get("task"), "log", None) or log
        try:
            facts = facts_from_context(context)
        except Exception as exc:
            message = f"stepguard DENY: cannot read the task's Airflow ids: {exc!r}"
            task_log.error(message)
            raise AirflowFailException(message) from exc
        planned = self.plan_run(context, facts)
        if planned.stop:  # plan_check = enforce: denied or unchecked, no task may start
            end()
            raise AirflowFailException(planned.message)
        decision = self.gate.check(declared, facts)
        line = describe(decision, facts)
        outcome = verdict(decision)
        if outcome is Verdict.ALLOW:
            task_log.info(line)
            context[CONTEXT_KEY] = replace(decision, response=None)
            if declared is not None:
                context[ATTEMPT_KEY] = self.gate.begin(context[CONTEXT_KEY], facts, declared)[0]
            return
        end()  # no attempt left open from an earlier task in this process
        task_log.error(line)
        cause: StepDenied = refusal(decision)
        if outcome is Verdict.UNAVAILABLE:
            raise AirflowException(line) from cause  # retryable: the next try asks again
        raise AirflowFailException(line) from cause  # a policy answer: no retry


def dag_steps(
    dag: Any, known: Mapping[tuple[str, str], Step | None] | None = None
) -> list[tuple[str, Step | None]]:
    """Every task of a DAG with the step it declares (None: none, or unreadable): as
    the policy read it when the DAG was loaded (`known`), else from its params."""
    out: list[tuple[str, Step | None]] = []
    dag_id = str(getattr(dag, "dag_id", ""))
    for task in getattr(dag, "tasks", None) or []:
        key = (dag_id, str(task.task_id))
        if known is not None and key in known:
            out.append((key[1], known[key]))
            continue
        try:
            declared = declared_step(task)
        except Exception:  # noqa: BLE001 - its own gate denies it when it runs
            declared = None
        out.append((key[1], declared))
    return out


_default = StepguardPolicy()


def task_policy(task: Any) -> None:
    """The cluster policy Airflow looks up in airflow_local_settings.py (config from Airflow)."""
    _default.task_policy(task)
