"""The orchestrator-independent pre-flight (integrations/preflight.py) against a real sidecar."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sidecar.client import StepguardClient
from sidecar.core.errors import ConfigError
from sidecar.integrations.gate import Gate, GuardConfig
from sidecar.integrations.preflight import PlanCheck, PlanMode, build_plan
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


def test_no_plan_never_stops_a_run(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate(GuardConfig(target="127.0.0.1:1", timeout_s=1, plan_check=PlanMode.ENFORCE))
    with caplog.at_level(logging.WARNING):
        outcome = gate.plan_run(FACTS, TASKS)
    assert not outcome.stop
    assert "not made" in outcome.message
    assert "still decided when it runs" in caplog.text


def test_the_setting_is_read_and_checked() -> None:
    config = GuardConfig.from_strings({"plan_check": "Enforce", "plan_actions": "a, b"})
    assert config.plan_check is PlanMode.ENFORCE
    assert config.plan_actions == frozenset({"a", "b"})
    assert GuardConfig.from_strings({}).plan_check is PlanMode.OFF
    with pytest.raises(ConfigError, match="off, warn, enforce"):
        GuardConfig.from_strings({"plan_check": "strict"})
