"""The orchestrator-independent pre-flight (integrations/preflight.py) against a real sidecar."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sidecar.client import StepguardClient
from sidecar.core.errors import ConfigError
from sidecar.core.validate import Limits
from sidecar.integrations.gate import Gate, GuardConfig
from sidecar.integrations.preflight import PlanCheck, PlanMode, PlanOutcome, build_plan
from sidecar.integrations.steps import RunFacts, Step
from tests.helpers import running_sidecar

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
DEPROVISIONER = "spiffe://example.org/ns/identity/sa/deprovisioner"
NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"
APPROVED = {"approver": "ines", "approved_at": "2026-11-25T09:00:00Z", "ticket": "CHG-1"}
# A leaver run whose second step is the provisioner revoking: no policy permits it.
TASKS = [
    ("notify", Step("notify", "slack", workload=NOTIFIER)),
    ("revoke", Step("revoke_access", "okta", workload=PROVISIONER)),
    ("undeclared", None),
]
FACTS = RunFacts("leaver", "run-7", "", 0, {"requester": "maria"})


def test_the_plan_holds_the_requests_the_tasks_will_send() -> None:
    plan = build_plan(FACTS, TASKS)
    assert plan["run_id"] == "run-7" and plan["workflow_id"] == "leaver"
    assert [s["step_id"] for s in plan["steps"]] == ["notify", "revoke"]  # undeclared: left out
    revoke = plan["steps"][1]
    assert revoke["principal"] == {"type": "Workload", "id": PROVISIONER}
    assert revoke["context"]["run_id"] == "run-7"
    assert revoke["context"]["requester"] == {"type": "User", "id": "maria"}


@pytest.mark.parametrize("mode", list(PlanMode))
def test_each_setting_on_a_run_with_a_certain_deny(tmp_path: Path, mode: PlanMode) -> None:
    with running_sidecar(tmp_path) as sc, StepguardClient(sc.tcp) as client:
        outcome = PlanCheck(mode).run(client, FACTS, TASKS)
        plans = [e for e in sc.audit_events() if e["kind"] == "plan"]
    if mode is PlanMode.OFF:
        assert outcome.report is None and not outcome.stop and plans == []
        return
    assert [s.step_id for s in outcome.denied] == ["revoke"]
    assert "step 'revoke' (revoke_access on okta)" in outcome.message
    assert "no policy permits" in outcome.message
    assert outcome.stop is (mode is PlanMode.ENFORCE)
    (plan,) = plans  # recorded, linked by run id
    assert plan["run_id"] == "run-7" and plan["id"] == outcome.report.plan_id  # type: ignore[union-attr]


def test_the_message_names_the_denying_policy(tmp_path: Path) -> None:
    tasks = [
        (
            "grant",
            Step("grant_access", "okta", workload="spiffe://example.org/ns/identity/sa/default"),
        )
    ]
    facts = RunFacts("onboarding", "run-8", "", 0, {"requester": "maria", "approval": APPROVED})
    with running_sidecar(tmp_path) as sc, StepguardClient(sc.tcp) as client:
        outcome = PlanCheck(PlanMode.ENFORCE).run(client, facts, tasks)
    assert outcome.stop
    assert "[policy: shared-accounts-never-act]" in outcome.message


def test_only_the_actions_named_count(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as sc, StepguardClient(sc.tcp) as client:
        counted = PlanCheck(PlanMode.ENFORCE, frozenset({"create_account"})).run(
            client, FACTS, TASKS
        )
    assert counted.denied == () and not counted.stop and counted.message == ""


def test_an_allowed_or_time_dependent_run_is_never_stopped(tmp_path: Path) -> None:
    tasks = [
        ("create", Step("create_account", "okta", workload=PROVISIONER)),  # depends on the hour
        ("notify", Step("notify", "slack", workload=NOTIFIER)),
    ]
    facts = RunFacts("onboarding", "run-9", "", 0, {"requester": "maria", "approval": APPROVED})
    with running_sidecar(tmp_path) as sc, StepguardClient(sc.tcp) as client:
        outcome = PlanCheck(PlanMode.ENFORCE).run(client, facts, tasks)
    assert outcome.report is not None
    assert [s.verdict for s in outcome.report.steps] == ["DEPENDS", "ALLOW"]
    assert not outcome.stop and outcome.message == ""


@contextmanager
def silent_target() -> Iterator[str]:
    """A real TCP listener that never answers: the plan call times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@contextmanager
def target(kind: str, tmp: Path) -> Iterator[str]:
    """Where a plan cannot be had: nothing listening (refused), a listener that never
    answers (times out), a real sidecar that refuses the plan (over its step limit)."""
    if kind == "unreachable":
        with running_sidecar(tmp / "gone") as gone:
            dead = gone.tcp
        yield dead
    elif kind == "timing out":
        with silent_target() as silent:
            yield silent
    else:
        with running_sidecar(tmp, limits=Limits(max_batch_items=1)) as small:
            yield small.tcp


WHY = {"unreachable": "UNAVAILABLE", "timing out": "DEADLINE_EXCEEDED", "refused": "over the limit"}


@pytest.mark.parametrize("kind", list(WHY))
def test_enforce_starts_no_run_whose_plan_cannot_be_checked(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: the sidecar unreachable, too slow, or refusing the plan stops the run,
    with a message saying the plan could not be checked, why, and that it was not started."""
    with target(kind, tmp_path) as where:
        gate = Gate(GuardConfig(target=where, timeout_s=1, plan_check=PlanMode.ENFORCE))
        with caplog.at_level(logging.WARNING):
            outcome = gate.plan_run(FACTS, TASKS)
        gate.close()
    assert outcome.stop and outcome.mode is PlanMode.ENFORCE
    assert outcome.unchecked and WHY[kind] in outcome.unchecked, outcome.unchecked
    assert outcome.report is not None and not outcome.report.made
    assert outcome.message.startswith("stepguard plan of run leaver/run-7 could not be checked (")
    assert WHY[kind] in outcome.message
    assert outcome.message.endswith(
        "the run was not started (plan_check = enforce starts no run unchecked)"
    )
    (logged,) = [r for r in caplog.records if "could not be checked" in r.getMessage()]
    assert logged.levelno == logging.ERROR


@pytest.mark.parametrize("kind", list(WHY))
def test_warn_logs_a_plan_that_cannot_be_checked_and_the_run_goes_on(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with target(kind, tmp_path) as where:
        gate = Gate(GuardConfig(target=where, timeout_s=1, plan_check=PlanMode.WARN))
        with caplog.at_level(logging.WARNING):
            outcome = gate.plan_run(FACTS, TASKS)
        gate.close()
    assert not outcome.stop and WHY[kind] in outcome.unchecked
    assert "not made" in outcome.message and "the run goes on" in outcome.message
    (logged,) = [r for r in caplog.records if "not made" in r.getMessage()]
    assert logged.levelno == logging.WARNING
    assert "still decided when it runs (plan_check = warn)" in logged.getMessage()


def test_off_asks_nothing_even_of_an_unreachable_sidecar(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate(GuardConfig(target="127.0.0.1:1", timeout_s=1, plan_check=PlanMode.OFF))
    with caplog.at_level(logging.DEBUG, logger="sidecar.integrations.gate"):
        outcome = gate.plan_run(FACTS, TASKS)
    assert outcome == PlanOutcome(PlanMode.OFF)
    assert caplog.records == []


def test_a_plan_that_cannot_be_built_stops_the_run_under_enforce(tmp_path: Path) -> None:
    """A declared step that cannot form a request (a requester that is no user id) is a
    step nobody checked: enforce stops the run before asking; warn says so and goes on;
    a step outside `plan_actions` does not count."""
    facts = RunFacts("leaver", "run-7", "", 0, {"requester": 42})
    with running_sidecar(tmp_path) as sc, StepguardClient(sc.tcp) as client:
        enforce = PlanCheck(PlanMode.ENFORCE).run(client, facts, TASKS)
        warn = PlanCheck(PlanMode.WARN).run(client, facts, TASKS)
        other = PlanCheck(PlanMode.ENFORCE, frozenset({"create_account"})).run(client, facts, TASKS)
        plans = [e for e in sc.audit_events() if e["kind"] == "plan"]
    assert plans == []  # nothing was asked
    assert enforce.stop and "could not be checked (the plan cannot be built" in enforce.message
    assert "step 'notify' (notify on slack)" in enforce.unchecked
    assert "requester" in enforce.unchecked
    assert not warn.stop and warn.unchecked == enforce.unchecked
    assert other == PlanOutcome(PlanMode.ENFORCE)


def test_a_certain_deny_still_stops_and_is_not_unchecked(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as sc:
        gate = Gate(GuardConfig(target=sc.tcp, plan_check=PlanMode.ENFORCE))
        outcome = gate.plan_run(FACTS, TASKS)
        gate.close()
    assert outcome.stop and outcome.unchecked == ""
    assert "certainly denied" in outcome.message


def test_settings_that_cannot_be_read_stop_the_run_naming_the_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bad plan_check is a ConfigError naming the setting; plan_run never raises it,
    and stops the run (nobody can tell the setting does not say enforce)."""
    with pytest.raises(ConfigError, match="plan_check must be one of off, warn, enforce"):
        GuardConfig.from_strings({"plan_check": "strict"})
    gate = Gate(lambda: GuardConfig.from_strings({"plan_check": "strict"}))
    with caplog.at_level(logging.WARNING):
        outcome = gate.plan_run(FACTS, TASKS)
        unplanned = gate.plan_unchecked("run x/y", "no plan declared")
    for stopped in (outcome, unplanned):
        assert stopped.stop and "the run was not started" in stopped.message
        assert "plan_check must be one of off, warn, enforce, got 'strict'" in stopped.message
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]


@pytest.mark.parametrize("mode", list(PlanMode))
def test_a_plan_that_cannot_be_asked_for_follows_the_setting(mode: PlanMode) -> None:
    """What an integration uses when it has no plan to ask for (Temporal: no @planned;
    Prefect: no run ids)."""
    gate = Gate(GuardConfig(plan_check=mode))
    outcome = gate.plan_unchecked("workflow w (w-1)", "no plan declared")
    assert outcome.stop is (mode is PlanMode.ENFORCE)
    assert outcome.unchecked == ("" if mode is PlanMode.OFF else "no plan declared")


def test_the_setting_is_read_and_checked() -> None:
    config = GuardConfig.from_strings({"plan_check": "Enforce", "plan_actions": "a, b"})
    assert config.plan_check is PlanMode.ENFORCE
    assert config.plan_actions == frozenset({"a", "b"})
    assert GuardConfig.from_strings({}).plan_check is PlanMode.OFF
    with pytest.raises(ConfigError, match="off, warn, enforce"):
        GuardConfig.from_strings({"plan_check": "strict"})
