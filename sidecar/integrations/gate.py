"""The orchestrator-independent check that every guarded task makes before it runs.

`Gate.check` never raises and never allows by accident: a task without a step
declaration, a declaration or run input that cannot form a request, a
misconfigured integration, an unreachable sidecar, all give a DENY
`StepDecision` whose reason says why.

`verdict` then splits the denials in two, because orchestrators should treat
them differently:

- DENY: the policy (or the request itself) says no. Retrying cannot change
  that, so the task fails for good. An invalid request (the client's
  `DecisionKind.INVALID_REQUEST`: a bug in the step declaration or its run
  input) is a DENY too: asking again would send the same request.
- UNAVAILABLE: no decision could be had (the sidecar is down, restarting, or
  too slow: `DecisionKind.retryable`). The task still does not run; a retry
  asks again.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sidecar.client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    DecisionKind,
    OutcomeReport,
    StepDecision,
    StepDenied,
    StepguardClient,
    denied,
)
from sidecar.core.errors import ConfigError, StepguardError
from sidecar.integrations.outcomes import OUTCOME_TIMEOUT_S, Attempt, begin
from sidecar.integrations.preflight import PlanCheck, PlanMode, PlanOutcome
from sidecar.integrations.steps import EntityTypes, RunFacts, Step, build_request

# The settings an orchestrator's config may give (GuardConfig.from_strings).
SETTINGS = ("target", "timeout", "workload", "plan_check", "plan_actions")
# What the Helm chart's `stepguard.sidecar.workerEnv` sets in a worker container
# (docs/deployment.md); the integrations fall back to it when not told otherwise.
ADDRESS_ENV = "STEPGUARD_ADDRESS"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Where the sidecar is and who the worker is. `workload` is the default principal."""

    target: str = DEFAULT_TARGET
    timeout_s: float = DEFAULT_TIMEOUT_S
    workload: str | None = None
    types: EntityTypes = field(default_factory=EntityTypes)
    # Pre-flight when a run starts (preflight.py): off | warn | enforce, and the
    # actions whose certain denial counts (None: every declared step).
    plan_check: PlanMode = PlanMode.OFF
    plan_actions: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not self.target:
            raise ConfigError("stepguard target must be HOST:PORT or unix:///path/to.sock")
        if not self.timeout_s > 0:
            raise ConfigError(f"stepguard timeout must be positive seconds, got {self.timeout_s}")

    @classmethod
    def from_strings(cls, values: Mapping[str, str | None]) -> GuardConfig:
        """From `target`, `timeout`, `workload`, `plan_check` and `plan_actions` (comma-
        separated action ids) strings: an orchestrator's own config."""
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"unknown stepguard setting(s): {', '.join(unknown)}")
        timeout = values.get("timeout")
        try:
            timeout_s = float(timeout) if timeout else DEFAULT_TIMEOUT_S
        except ValueError as exc:
            raise ConfigError(f"stepguard timeout must be seconds, got {timeout!r}") from exc
        actions = [a.strip() for a in (values.get("plan_actions") or "").split(",") if a.strip()]
        return cls(
            target=values.get("target") or DEFAULT_TARGET,
            timeout_s=timeout_s,
            workload=values.get("workload") or None,
            plan_check=PlanMode.parse(values.get("plan_check")),
            plan_actions=frozenset(actions) if actions else None,
        )


def env_config(prefix: str, environ: Mapping[str, str] | None = None) -> GuardConfig:
    """`<prefix>TARGET`, `TIMEOUT`, `WORKLOAD`, `PLAN_CHECK` and `PLAN_ACTIONS` from the
    environment; the target falls back to STEPGUARD_ADDRESS (what the Helm chart sets in
    workers)."""
    env = os.environ if environ is None else environ
    values = {key: env.get(prefix + key.upper()) for key in SETTINGS}
    values["target"] = values["target"] or env.get(ADDRESS_ENV)
    return GuardConfig.from_strings(values)


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    UNAVAILABLE = "unavailable"


def verdict(decision: StepDecision) -> Verdict:
    """ALLOW; UNAVAILABLE when no decision was had for a passing reason; else DENY."""
    if decision.allowed:
        return Verdict.ALLOW
    if decision.kind.retryable and not decision.decision_id:
        return Verdict.UNAVAILABLE
    return Verdict.DENY


class StepguardUnavailable(StepDenied):
    """No decision could be had, so the step did not run; asking again may succeed."""

    def __init__(self, decision: StepDecision) -> None:
        super().__init__(decision)
        self.args = (f"stepguard unavailable, step not run: {decision.reason}",)

    def __str__(self) -> str:
        return str(self.args[0])


def _unreadable(where: str, exc: Exception) -> PlanOutcome:
    """Settings that cannot be read (a bad `plan_check` is a ConfigError naming it) stop
    the run: nobody can tell they do not say enforce."""
    why = f"the stepguard settings cannot be read: {exc}"
    message = (
        f"stepguard plan of {where} could not be checked ({why}); the run was not started "
        "(a plan_check nobody can read may say enforce, which starts no run unchecked)"
    )
    return PlanOutcome(PlanMode.ENFORCE, message=message, stop=True, unchecked=why)


def _log_plan(
    outcome: PlanOutcome,
    facts: RunFacts | None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """An error when the run must stop, a warning for anything else to say; never raises."""
    try:
        if outcome.stop:
            logger.error(outcome.message)
        elif outcome.message:
            logger.warning(outcome.message)
        elif outcome.report is not None and facts is not None:
            logger.info(
                f"stepguard plan {outcome.report.plan_id} of run {facts.workflow_id}/"
                f"{facts.run_id}: no step certainly denied"
            )
    except Exception:  # noqa: BLE001, S110 - a broken logger changes no outcome
        pass


def _step_key(facts: RunFacts) -> tuple[str, str, str]:
    return (facts.workflow_id, facts.run_id, facts.step_id)


def _log_report(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    attempt: Attempt,
    status: str,
    report: OutcomeReport,
) -> None:
    """The task log's line for an outcome: recorded, a violation, or NOT recorded and why."""
    where = f"{attempt.facts.workflow_id}/{attempt.facts.run_id}/{attempt.facts.step_id}"
    head = f"stepguard outcome {status} of {where} attempt {attempt.facts.attempt}"
    try:
        if not report.recorded:
            logger.warning(f"{head} NOT recorded: {report.reason}")
        elif report.violation:
            logger.warning(f"{head} recorded as a violation ({report.violation}): {report.reason}")
        else:
            logger.info(f"{head} recorded (decision {report.decision_id})")
    except Exception:  # noqa: BLE001, S110 - a broken logger must not fail the task
        pass


def refusal(decision: StepDecision) -> StepDenied:
    """The exception that stops a task for a non-ALLOW decision."""
    if verdict(decision) is Verdict.UNAVAILABLE:
        return StepguardUnavailable(decision)
    return StepDenied(decision)


def describe(decision: StepDecision, facts: RunFacts) -> str:
    """One log line a person can act on: what was asked, the answer, why, and the decision id."""
    label = verdict(decision).name
    where = f"{facts.workflow_id}/{facts.run_id}/{facts.step_id} attempt {facts.attempt}"
    parts = [f"stepguard {label} {where}: {decision.reason or 'no reason given'}"]
    if decision.determining_policies:
        parts.append(f"policies: {', '.join(decision.determining_policies)}")
    if decision.errors:
        parts.append(f"errors: {'; '.join(decision.errors)}")
    if decision.max_credential_ttl is not None:
        parts.append(f"max credential TTL {int(decision.max_credential_ttl.total_seconds())}s")
    parts.append(f"decision {decision.decision_id or '(none: not decided by the sidecar)'}")
    return "; ".join(parts)


class Gate:
    """Asks once per task attempt. `config` may be a callable, read at each check."""

    def __init__(
        self,
        config: GuardConfig | Callable[[], GuardConfig] = GuardConfig(),
        *,
        client: StepguardClient | None = None,
    ) -> None:
        self._config = config
        self._client = client
        self._clients: dict[tuple[str, float], StepguardClient] = {}
        self._lock = threading.Lock()
        # Outcomes queued and not yet answered, per step (workflow, run, step).
        self._unsent: dict[tuple[str, str, str], int] = {}

    def config(self) -> GuardConfig:
        return self._config() if callable(self._config) else self._config

    def check(self, step: Step | None, facts: RunFacts) -> StepDecision:
        if step is None:
            return denied(
                f"task {facts.step_id!r} declares no stepguard step (action and target system), "
                "so it cannot be authorized",
                DecisionKind.INVALID_REQUEST,
            )
        try:
            config = self.config()
            request = build_request(step, facts, workload=config.workload, types=config.types)
        except StepguardError as exc:
            return denied(f"cannot ask stepguard: {exc}", DecisionKind.INVALID_REQUEST)
        except Exception as exc:  # noqa: BLE001 - fail closed on anything else
            return denied(
                f"stepguard integration error: {type(exc).__name__}: {exc}", DecisionKind.ERROR
            )
        self._settle_earlier_attempts(facts)
        return self._client_for(config).authorize(request)

    def plan_run(
        self,
        facts: RunFacts,
        tasks: Sequence[tuple[str, Step | None]],
        *,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> PlanOutcome:
        """Pre-flight the run when it starts, under the configured `plan_check`; never
        raises. Under enforce, a plan that cannot be had stops the run (`stop`, with
        `unchecked` saying why), as a step certainly denied does; settings that cannot
        be read stop it too (nobody can tell they do not say enforce). What it found is
        logged: an error when the run must stop, else a warning."""
        where = f"run {facts.workflow_id}/{facts.run_id}"
        try:
            config = self.config()
            check = PlanCheck(config.plan_check, config.plan_actions, config.timeout_s)
        except Exception as exc:  # noqa: BLE001 - fail closed on settings nobody can read
            outcome = _unreadable(where, exc)
        else:
            if check.mode is PlanMode.OFF:
                return PlanOutcome(PlanMode.OFF)
            try:
                outcome = check.run(
                    self._client_for(config),
                    facts,
                    tasks,
                    workload=config.workload,
                    types=config.types,
                )
            except Exception as exc:  # noqa: BLE001 - fail closed: unchecked, never raised
                outcome = check.unchecked(where, f"{type(exc).__name__}: {exc}")
        _log_plan(outcome, facts, logger or log)
        return outcome

    def plan_unchecked(
        self,
        where: str,
        why: str,
        *,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> PlanOutcome:
        """A run whose plan cannot even be asked for (its ids unreadable, no plan declared):
        its outcome under the configured `plan_check` (enforce: stop), logged; never raises."""
        try:
            config = self.config()
            outcome = PlanCheck(config.plan_check).unchecked(where, why)
        except Exception as exc:  # noqa: BLE001 - fail closed on settings nobody can read
            outcome = _unreadable(where, exc)
        _log_plan(outcome, None, logger or log)
        return outcome

    def begin(self, decision: StepDecision, facts: RunFacts, step: Step) -> tuple[Attempt, Any]:
        """Open the attempt an ALLOW admitted (`outcomes.begin`, with this gate's types)."""
        try:
            types = self.config().types
        except Exception:  # noqa: BLE001 - the check just read it; fall back, never fail
            types = EntityTypes()
        return begin(decision, facts, step, types=types)

    def report(
        self,
        attempt: Attempt,
        status: str,
        error_class: str = "",
        *,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> OutcomeReport:
        """Send the outcome of an admitted attempt now and wait for the sidecar's answer,
        once; never raises, never waits long (`submit` is what the integrations use).

        Not recorded (sidecar down, too slow, refused): a warning in the task's
        log, and the task goes on as it ended. A violation the sidecar flags is
        a warning too.
        """
        logger = logger or log
        if attempt.reported:
            return OutcomeReport(False, "outcome already reported for this attempt")
        attempt.reported = True
        try:
            config = self.config()
            report = self._client_for(config).record_outcome(
                **attempt.outcome(status, error_class),
                finished_at=datetime.now(UTC),
                timeout=min(config.timeout_s, OUTCOME_TIMEOUT_S),
            )
        except Exception as exc:  # noqa: BLE001 - evidence never fails the task
            report = OutcomeReport(False, f"{type(exc).__name__}: {exc}")
        _log_report(logger, attempt, status, report)
        return report

    def submit(
        self,
        attempt: Attempt,
        status: str,
        error_class: str = "",
        *,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> bool:
        """Queue the outcome of an admitted attempt, once, for the client's outcome
        reporter (sent in a batch: sidecar/client/reporter.py); never raises, never waits
        on the sidecar. True when queued.

        The task's log gets the same line as from `report` once the sidecar has
        answered (or the outcome was given up on: NOT recorded, with why). A
        retry of the same step is decided only after this outcome was sent
        (`check`), so the trail keeps each attempt's outcome before the next
        attempt's decision.
        """
        logger = logger or log
        if attempt.reported:
            return False
        attempt.reported = True
        key = _step_key(attempt.facts)

        def settled(report: OutcomeReport) -> None:
            with self._lock:
                left = self._unsent.get(key, 0) - 1
                if left > 0:
                    self._unsent[key] = left
                else:
                    self._unsent.pop(key, None)
            _log_report(logger, attempt, status, report)

        try:
            client = self._client_for(self.config())
            with self._lock:
                self._unsent[key] = self._unsent.get(key, 0) + 1
            return client.report_outcome(
                **attempt.outcome(status, error_class),
                finished_at=datetime.now(UTC),
                on_result=settled,
            )
        except Exception as exc:  # noqa: BLE001 - evidence never fails the task
            failure = OutcomeReport(False, f"{type(exc).__name__}: {exc}")
            _log_report(logger, attempt, status, failure)
            return False

    def flush(self, timeout: float = OUTCOME_TIMEOUT_S) -> bool:
        """Send every queued outcome now and wait (at most `timeout` per client)."""
        with self._lock:
            clients = [*self._clients.values(), *([self._client] if self._client else [])]
        return all([client.flush_outcomes(timeout) for client in clients])

    def _settle_earlier_attempts(self, facts: RunFacts) -> None:
        """Before a step is decided again (a retry), its earlier attempt's queued outcome
        is sent, so that it comes first in the trail."""
        with self._lock:
            waiting = _step_key(facts) in self._unsent
        if waiting:
            self.flush()

    def _client_for(self, config: GuardConfig) -> StepguardClient:
        if self._client is not None:
            return self._client
        key = (config.target, config.timeout_s)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = StepguardClient(config.target, timeout=config.timeout_s)
                self._clients[key] = client
            return client

    def close(self) -> None:
        """Send the queued outcomes (the clients' close flushes them), then close."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        if self._client is not None:
            self._client.flush_outcomes()
        for client in clients:
            client.close()
