"""The orchestrator-independent part of the integrations: request mapping and the gate.

The request a step produces is decided by the real engine on the example
policies, and the gate talks to a real sidecar; the orchestrators themselves
are exercised in test_airflow_integration.py and test_prefect_integration.py.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.client import DecisionKind, StepDecision, StepDenied, denied
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.errors import ConfigError
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import Decision
from sidecar.core.validate import Limits, request_from_proto
from sidecar.integrations.gate import (
    Gate,
    GuardConfig,
    StepguardUnavailable,
    Verdict,
    describe,
    refusal,
    verdict,
)
from sidecar.integrations.steps import (
    SENSITIVITIES,
    EntityTypes,
    RunFacts,
    Step,
    StepDeclarationError,
    build_request,
)
from tests.helpers import POLICIES, running_sidecar
from tests.integrations.orchestration import orchestrators_imported_by_stepguard

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
APPROVAL = {"approver": "ines", "approved_at": "2026-11-25T09:00:00Z", "ticket": "CHG-1"}


def facts(**inputs: Any) -> RunFacts:
    return RunFacts("onboarding", "run-1", "create_account", 1, inputs)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(POLICIES)


def decide(bundle: Bundle, request: dict[str, Any]) -> Decision:
    """The request as the server would see it: JSON -> protobuf -> validation -> engine."""
    authz = request_from_proto(request_from_json(request), bundle, Limits(), now=WEDNESDAY_10)
    return evaluate(bundle, authz).decision


def test_a_declared_step_and_its_run_make_the_request_the_example_policies_expect(
    bundle: Bundle,
) -> None:
    step = Step("create_account", "okta", sensitivity="critical", workload=PROVISIONER)
    request = build_request(step, facts(requester="maria", approval=APPROVAL, other="ignored"))
    assert request == {
        "principal": {"type": "Workload", "id": PROVISIONER},
        "action": {"type": "Action", "id": "create_account"},
        "resource": {"type": "TargetSystem", "id": "okta"},
        "context": {
            "workflow_id": "onboarding",
            "run_id": "run-1",
            "step_id": "create_account",
            "target_system": "okta",
            "attempt": 1,
            "sensitivity": "critical",
            "requester": {"type": "User", "id": "maria"},
            "approval": {"approver": {"type": "User", "id": "ines"}, **_rest(APPROVAL)},
            "attributes": {"workflow": {"__entity": {"type": "Workflow", "id": "onboarding"}}},
        },
    }
    assert decide(bundle, request) is Decision.ALLOW
    self_approved = build_request(step, facts(requester="ines", approval=APPROVAL))
    assert decide(bundle, self_approved) is Decision.DENY
    assert decide(bundle, build_request(step, facts(requester="maria"))) is Decision.DENY


def _rest(approval: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in approval.items() if k != "approver"}


def test_time_bound_and_datetimes_from_the_run_input(bundle: Bundle) -> None:
    step = Step("notify", "slack", workload=PROVISIONER)
    before = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    request = build_request(step, facts(time_bound={"not_after": before}))
    assert request["context"]["time_bound"] == {"not_after": "2026-11-25T09:00:00Z"}
    assert decide(bundle, request) is Decision.DENY  # 10:00 is after the bound
    later = datetime(2026, 11, 25, 13, 0, tzinfo=timezone(timedelta(hours=2)))
    request = build_request(step, facts(time_bound={"not_after": later, "not_before": None}))
    assert request["context"]["time_bound"] == {"not_after": "2026-11-25T13:00:00+02:00"}
    assert decide(bundle, request) is Decision.ALLOW


def test_the_workload_comes_from_the_step_or_the_workers_default() -> None:
    with_default = build_request(Step("notify", "slack"), facts(), workload="spiffe://w/default")
    assert with_default["principal"]["id"] == "spiffe://w/default"
    own = build_request(Step("notify", "slack", workload="spiffe://w/own"), facts(), workload="x")
    assert own["principal"]["id"] == "spiffe://w/own"
    with pytest.raises(StepDeclarationError, match="no workload identity"):
        build_request(Step("notify", "slack"), facts())


def test_entity_types_follow_the_policy_model() -> None:
    types = EntityTypes(principal="Job", resource="System", user="Person", workflow=None)
    request = build_request(
        Step("notify", "slack", workload="j"), facts(requester="maria"), types=types
    )
    assert request["principal"]["type"] == "Job"
    assert request["resource"]["type"] == "System"
    assert request["context"]["requester"] == {"type": "Person", "id": "maria"}
    assert "attributes" not in request["context"]
    first = build_request(Step("notify", "slack", workload="j"), RunFacts("w", "r", "s", 0))
    assert "attempt" not in first["context"]  # unknown attempt: omitted, as the proto does


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"requester": ""}, "must be a user id"),
        ({"requester": {"type": "User"}}, "must be a user id"),
        ({"approval": "ines"}, "must be a mapping"),
        ({"approval": {"ticket": "CHG-1"}}, "needs an 'approver'"),
        ({"approval": {"approver": "ines", "by": "x"}}, "unknown key"),
        ({"time_bound": {"until": "2026-01-01T00:00:00Z"}}, "unknown key"),
        ({"time_bound": {"not_after": datetime(2026, 1, 1)}}, "time zone"),
        ({"time_bound": {"not_after": 5}}, "RFC 3339"),
    ],
)
def test_bad_run_input_names_what_to_fix(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(StepDeclarationError, match=message):
        build_request(Step("notify", "slack", workload="w"), facts(**inputs))


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"action": "notify"}, "needs 'target'"),
        ({"action": "", "target": "slack"}, "non-empty"),
        ({"action": "notify", "target": "slack", "sensitivity": "extreme"}, "not one of"),
        ({"action": "notify", "target": "slack", "workload": 7}, "SPIFFE"),
        ({"action": "notify", "target": "slack", "tgt": "x"}, "unknown step field"),
        (["notify", "slack"], "must be a mapping"),
    ],
)
def test_bad_declarations_are_rejected(declaration: Any, message: str) -> None:
    with pytest.raises(StepDeclarationError, match=message):
        Step.from_json(declaration)


names = st.text(min_size=1, max_size=20)


@given(
    action=names,
    target=names,
    sensitivity=st.none() | st.sampled_from(SENSITIVITIES),
    workload=st.none() | names,
)
def test_a_declaration_survives_its_json_form(
    action: str, target: str, sensitivity: str | None, workload: str | None
) -> None:
    step = Step(action, target, sensitivity, workload)
    assert Step.from_json(step.to_json()) == step


def test_guard_config_from_strings() -> None:
    config = GuardConfig.from_strings(
        {"target": "unix:///run/s.sock", "timeout": "0.5", "workload": ""}
    )
    assert (config.target, config.timeout_s, config.workload) == ("unix:///run/s.sock", 0.5, None)
    assert GuardConfig.from_strings({}) == GuardConfig()
    for bad, message in (({"timeout": "soon"}, "seconds"), ({"timeout": "-1"}, "positive")):
        with pytest.raises(ConfigError, match=message):
            GuardConfig.from_strings(bad)
    with pytest.raises(ConfigError, match="unknown"):
        GuardConfig.from_strings({"addr": "x"})


def test_prefect_config_comes_from_its_environment_then_the_charts_address() -> None:
    from sidecar.integrations.prefect import config_from_env

    chart = {"STEPGUARD_ADDRESS": "unix:///run/stepguard/grpc.sock"}
    assert config_from_env(chart).target == "unix:///run/stepguard/grpc.sock"
    own = config_from_env(
        chart | {"PREFECT_STEPGUARD_TARGET": "127.0.0.1:7", "PREFECT_STEPGUARD_TIMEOUT": "3"}
    )
    assert (own.target, own.timeout_s) == ("127.0.0.1:7", 3.0)
    assert config_from_env({}).target == GuardConfig().target


def test_verdicts_split_policy_answers_from_unavailability() -> None:
    assert verdict(StepDecision(allowed=True, reason="ok", decision_id="d")) is Verdict.ALLOW
    policy = StepDecision(allowed=False, reason="forbidden by x", decision_id="d")
    assert verdict(policy) is Verdict.DENY
    down = denied("stepguard call failed (UNAVAILABLE): refused", DecisionKind.UNAVAILABLE)
    assert verdict(down) is Verdict.UNAVAILABLE
    assert verdict(denied("no answer in 2 s", DecisionKind.DEADLINE)) is Verdict.UNAVAILABLE
    assert verdict(denied("too many streams", DecisionKind.OVERLOADED)) is Verdict.UNAVAILABLE
    # A bug in the request: asking again sends the same request, so it is final.
    assert verdict(denied("invalid request: action", DecisionKind.INVALID_REQUEST)) is Verdict.DENY
    assert verdict(denied("stepguard client error: x", DecisionKind.ERROR)) is Verdict.DENY
    # The kind decides, not the wording of the reason.
    assert verdict(denied("stepguard call failed (UNAVAILABLE): x")) is Verdict.DENY
    assert type(refusal(policy)) is StepDenied
    assert isinstance(refusal(down), StepguardUnavailable)
    assert "not run" in str(refusal(down))


def test_gate_against_a_real_sidecar(tmp_path: Path) -> None:
    notify = Step("notify", "slack", workload=PROVISIONER)
    with running_sidecar(tmp_path, clock=lambda: WEDNESDAY_10) as running:
        gate = Gate(GuardConfig(target=running.tcp))
        allowed = gate.check(notify, facts())
        assert verdict(allowed) is Verdict.ALLOW
        assert allowed.determining_policies == ("step-runners-read-and-notify",)
        credential = gate.check(
            Step("issue_credential", "aws-prod", workload=PROVISIONER),
            facts(requester="maria", approval=APPROVAL),
        )
        assert credential.max_credential_ttl == timedelta(minutes=15)
        assert "max credential TTL 900s" in describe(credential, facts())
        undeclared = gate.check(None, facts())
        assert verdict(undeclared) is Verdict.DENY
        assert "declares no stepguard step" in undeclared.reason
        bad = gate.check(notify, facts(approval="yes"))
        assert verdict(bad) is Verdict.DENY
        assert "must be a mapping" in bad.reason
        assert bad.kind is DecisionKind.INVALID_REQUEST
        # The sidecar refuses the request itself: a bug in the declaration, never retried.
        refused = gate.check(Step("no_such_action", "slack", workload=PROVISIONER), facts())
        assert (refused.kind, verdict(refused)) == (DecisionKind.INVALID_REQUEST, Verdict.DENY)
        assert refused.code is grpc.StatusCode.INVALID_ARGUMENT

        def broken() -> GuardConfig:
            raise ConfigError("stepguard timeout must be seconds")

        misconfigured = Gate(broken).check(notify, facts())
        assert verdict(misconfigured) is Verdict.DENY
        assert "timeout" in misconfigured.reason
        gate.close()
        events = [e for e in running.audit_events() if e.get("kind") == "decision"]
        # Only the two well-formed requests reached the sidecar.
        assert [e["action"]["id"] for e in events] == ["notify", "issue_credential"]
        assert {e["run_id"] for e in events} == {"run-1"}
    stopped = Gate(GuardConfig(target=running.tcp, timeout_s=1.0)).check(notify, facts())
    assert verdict(stopped) is Verdict.UNAVAILABLE
    assert stopped.kind in (DecisionKind.UNAVAILABLE, DecisionKind.DEADLINE)
    assert "(none: not decided by the sidecar)" in describe(stopped, facts())


def test_importing_stepguard_needs_no_orchestrator() -> None:
    """.venv has neither Airflow nor Prefect; every stepguard module still imports."""
    assert orchestrators_imported_by_stepguard(Path(sys.executable)) == []


def test_run_facts_is_one_mapping_for_every_orchestrator() -> None:
    """The ids each orchestrator has, through the one function docs/integrations.md's
    table describes: Airflow (mapped task), Prefect (UUIDs), Temporal (two-part run,
    activity type and id)."""
    from sidecar.integrations.steps import run_facts, step_instance

    airflow = run_facts(
        workflow="onboarding", run="manual__1", step="grant_access", instance=1, attempt=2
    )
    assert (airflow.workflow_id, airflow.run_id, airflow.step_id, airflow.attempt) == (
        "onboarding",
        "manual__1",
        "grant_access[1]",
        2,
    )
    assert run_facts(workflow="onboarding", run="r", step="notify").step_id == "notify"
    prefect = run_facts(workflow="leaver", run="6f0e", step="9a1b", attempt="1")
    assert (prefect.run_id, prefect.step_id, prefect.attempt) == ("6f0e", "9a1b", 1)
    temporal = run_facts(
        workflow="leaver",
        execution="leaver-carol",
        run="0193-run",
        step="revoke_access",
        instance="1",
        attempt=3,
        inputs={"requester": "maria"},
    )
    assert (temporal.run_id, temporal.step_id) == ("leaver-carol/0193-run", "revoke_access[1]")
    request = build_request(Step("revoke_access", "okta"), temporal, workload="spiffe://w")
    assert request["context"]["run_id"] == "leaver-carol/0193-run"
    assert request["context"]["attempt"] == 3
    assert step_instance("x", 0) == "x[0]" and step_instance("x", "") == "x"
    # Missing ids stay empty, and the request is refused naming them.
    with pytest.raises(StepDeclarationError, match="run_id"):
        build_request(Step("a", "b"), run_facts(workflow="w", run=None, step="s"), workload="w")


def test_a_temporal_activity_sends_the_run_input_its_argument_carries() -> None:
    from dataclasses import dataclass

    from sidecar.integrations.temporal import run_input

    @dataclass
    class StepInput:
        subject: str
        requester: str
        approval: dict[str, str] | None = None

    assert run_input(["x", StepInput("bob", "maria")]) == {"requester": "maria", "approval": None}
    assert run_input([{"requester": "maria", "other": 1}]) == {"requester": "maria"}
    assert run_input(["bob", 3, {"unrelated": True}]) == {}
