"""A policy that errors: DENY by default, Cedar's semantics only when asked (issue 16, point 1).

Cedar skips a policy whose evaluation errors, so a `forbid` that reads an
attribute of an entity the store lacks used to let a permit through: ALLOW,
with the error only in the diagnostics. These tests run the real server, the
real `check` and `test` commands and the real audit trail on a small bundle:

- `deploy` is forbidden on critical targets: `resource.sensitivity` errors
  for a target the store does not hold (the issue's own case);
- `restart` is forbidden during a change freeze: `Freeze::"global".active`
  errors because the store holds no freeze entity (a request cannot change
  that: it does not depend on what the request supplies).
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.cli.exitcodes import EXIT_DENY, EXIT_FAILED, EXIT_OK
from sidecar.cli.main import main
from sidecar.core.bundle import load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.errors import ConfigError
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import Decision, PolicyErrors
from sidecar.core.validate import Limits, request_from_proto
from sidecar.serving.config import build_settings
from tests.helpers import BUSINESS_HOURS, running_sidecar
from tests.serving.authzen.authzen_client import Pdp

SCHEMA = """
entity Workload;
entity TargetSystem = { sensitivity: String };
entity Freeze = { active: Bool };
action deploy, restart appliesTo {
  principal: [Workload],
  resource: [TargetSystem],
  context: { now: datetime, workflow_id?: String, run_id?: String, step_id?: String },
};
"""

POLICIES = """
@id("ci-may-deploy-and-restart")
permit (principal == Workload::"ci", action, resource);

@id("no-deploys-to-critical-targets")
forbid (principal, action == Action::"deploy", resource)
when { resource.sensitivity == "critical" };

@id("no-restarts-during-a-freeze")
forbid (principal, action == Action::"restart", resource)
when { Freeze::"global".active };
"""

ENTITIES = [
    {"uid": {"type": "Workload", "id": "ci"}, "attrs": {}, "parents": []},
    {"uid": {"type": "TargetSystem", "id": "web"}, "attrs": {"sensitivity": "low"}, "parents": []},
]

CI = {"type": "Workload", "id": "ci"}
ADMIT_TARGETS = "entity_types:\n  TargetSystem:\n    attributes: []\n    parents: []\n"


def _request(action: str, target: str) -> dict[str, object]:
    return {
        "principal": CI,
        "action": {"type": "Action", "id": action},
        "resource": {"type": "TargetSystem", "id": target},
        "context": {"workflow_id": "release", "run_id": "r1", "step_id": action},
    }


# The case: the target is not in the store, the critical-target forbid errors.
UNKNOWN_TARGET = _request("deploy", "payroll-db")
# No freeze entity in the store: the freeze forbid errors whatever the request says.
NO_FREEZE = _request("restart", "web")
# Nothing errors: permitted under either semantics.
CLEAN = _request("deploy", "web")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "schema.cedarschema").write_text(SCHEMA)
    (directory / "release.cedar").write_text(POLICIES)
    (directory / "entities.json").write_text(json.dumps(ENTITIES))
    # The case needs a target the store lacks to reach Cedar: admitted bare
    # (no attributes), so the forbid that reads its sensitivity errors.
    (directory / "request-entities.yaml").write_text(ADMIT_TARGETS)
    return directory


def _authorize(target: str, request: dict[str, object]) -> pb.AuthorizeResponse:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.AuthorizerStub(channel)
        response: pb.AuthorizeResponse = stub.Authorize(request_from_json(request), timeout=5)
        return response


# --- the real server -----------------------------------------------------------


def test_a_forbid_that_errors_denies_over_grpc_with_the_error_and_the_audit_event(
    tmp_path: Path, policy_dir: Path
) -> None:
    with running_sidecar(tmp_path, policies=policy_dir) as running:
        for request, forbid in (
            (UNKNOWN_TARGET, "no-deploys-to-critical-targets"),
            (NO_FREEZE, "no-restarts-during-a-freeze"),
        ):
            fresh = _authorize(running.tcp, request)
            assert fresh.decision == pb.DECISION_DENY, fresh.reason
            assert [e.policy_id for e in fresh.errors] == [forbid]
            assert not fresh.determining_policies  # the permit did not decide a DENY
            assert forbid in fresh.reason and "errored" in fresh.reason
            assert fresh.policy_errors == pb.POLICY_ERRORS_DENY
            # A cached answer equals the fresh one (the cache holds the strict decision).
            hit = _authorize(f"unix://{running.socket}", request)
            assert (hit.decision, list(hit.errors), hit.reason, hit.policy_errors) == (
                fresh.decision,
                list(fresh.errors),
                fresh.reason,
                fresh.policy_errors,
            )
        clean = _authorize(running.tcp, CLEAN)
        assert clean.decision == pb.DECISION_ALLOW and not clean.errors
        assert clean.policy_errors == pb.POLICY_ERRORS_DENY
        events = running.audit_events()
        registry = running.sidecar.metrics.registry
        # The error counter rises, and no decision with errors was an ALLOW.
        assert registry.get_sample_value("stepguard_evaluation_errors_total") == 4
        allowed = {"decision": "ALLOW", "cached": "false"}
        assert registry.get_sample_value("stepguard_decisions_total", allowed) == 1
    decisions = [e for e in events if e["kind"] == "decision"]
    assert [(e["decision"], e["cached"]) for e in decisions] == [
        ("DENY", False),
        ("DENY", True),
        ("DENY", False),
        ("DENY", True),
        ("ALLOW", False),
    ]
    assert all(e["policy_errors"] == "deny" for e in decisions)
    assert decisions[0]["errors"][0]["policy"] == "no-deploys-to-critical-targets"
    assert decisions[2]["errors"][0]["policy"] == "no-restarts-during-a-freeze"
    assert decisions[2]["reasons"] == []


def test_cedar_semantics_is_a_setting_and_says_so(tmp_path: Path, policy_dir: Path) -> None:
    with running_sidecar(tmp_path, policies=policy_dir, policy_errors=PolicyErrors.CEDAR) as r:
        response = _authorize(r.tcp, NO_FREEZE)
        events = r.audit_events()
    assert response.decision == pb.DECISION_ALLOW  # Cedar skipped the forbid that errored
    assert [e.policy_id for e in response.errors] == ["no-restarts-during-a-freeze"]
    assert response.policy_errors == pb.POLICY_ERRORS_CEDAR
    (event,) = [e for e in events if e["kind"] == "decision"]
    assert (event["decision"], event["policy_errors"]) == ("ALLOW", "cedar")


def test_replay_decides_each_event_under_the_semantics_it_was_recorded_under(
    tmp_path: Path, policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ALLOW recorded under `cedar` is no change of policy; `--policy-errors deny`
    says what today's default would decide instead."""
    with running_sidecar(tmp_path, policies=policy_dir, policy_errors=PolicyErrors.CEDAR) as r:
        assert _authorize(r.tcp, NO_FREEZE).decision == pb.DECISION_ALLOW
        audit = r.audit
    args = ["replay", "--policies", str(policy_dir), "--format", "json", str(audit)]
    assert main(args) == EXIT_OK
    as_recorded = json.loads(capsys.readouterr().out)
    assert (as_recorded["decisions"], as_recorded["changed"]) == (1, 0)
    assert main([*args, "--policy-errors", "deny"]) == EXIT_OK
    strict = json.loads(capsys.readouterr().out)
    assert (strict["changed"], strict["allow_to_deny"]) == (1, 1)


def test_the_setting_comes_from_flags_environment_and_file(tmp_path: Path) -> None:
    assert build_settings({}).policy_errors is PolicyErrors.DENY
    assert build_settings({}, {"STEPGUARD_POLICY_ERRORS": "cedar"}).policy_errors is (
        PolicyErrors.CEDAR
    )
    config = tmp_path / "stepguard.yaml"
    config.write_text("policy-errors: cedar\n")
    assert build_settings({}, {}, config).policy_errors is PolicyErrors.CEDAR
    assert build_settings({"policy_errors": "deny"}, {}, config).policy_errors is PolicyErrors.DENY
    with pytest.raises(ConfigError, match="policy_errors must be one of deny, cedar"):
        build_settings({}, {"STEPGUARD_POLICY_ERRORS": "skip"})


@pytest.mark.parametrize(
    ("setting", "decision"), [(PolicyErrors.DENY, False), (PolicyErrors.CEDAR, True)]
)
def test_authzen_answers_the_same_and_says_under_which_semantics(
    tmp_path: Path, policy_dir: Path, setting: PolicyErrors, decision: bool
) -> None:
    body = {
        "subject": {"type": "Workload", "id": "ci"},
        "action": {"name": "restart"},
        "resource": {"type": "TargetSystem", "id": "web"},
        "options": {"stepguard_explain": True},
    }
    with running_sidecar(
        tmp_path, policies=policy_dir, authzen_listen="127.0.0.1:0", policy_errors=setting
    ) as running:
        assert running.sidecar.endpoints.authzen is not None
        pdp = Pdp(running.sidecar.endpoints.authzen)
        answer = pdp.evaluation(body).json()
        pdp.close()
    assert answer["decision"] is decision
    assert answer["context"]["policy_errors"] == setting.value
    assert answer["context"]["errors"][0]["policy"] == "no-restarts-during-a-freeze"


# --- the engine ----------------------------------------------------------------


def test_a_permit_that_errors_beside_one_that_allows_denies_too(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "schema.cedarschema").write_text(SCHEMA)
    (directory / "entities.json").write_text(json.dumps(ENTITIES))
    (directory / "request-entities.yaml").write_text(ADMIT_TARGETS)
    (directory / "p.cedar").write_text(
        '@id("ci") permit (principal == Workload::"ci", action, resource);\n'
        '@id("critical-only") permit (principal, action, resource)\n'
        '  when { resource.sensitivity == "critical" };\n'
    )
    bundle = load_bundle(directory)
    request = request_from_proto(
        request_from_json(UNKNOWN_TARGET), bundle, Limits(), now=BUSINESS_HOURS
    )
    strict = evaluate(bundle, request)
    assert strict.decision is Decision.DENY and strict.reasons == ()
    assert [e.policy_id for e in strict.errors] == ["critical-only"]
    cedar = evaluate(bundle, request, policy_errors=PolicyErrors.CEDAR)
    assert cedar.decision is Decision.ALLOW and [r.id for r in cedar.reasons] == ["ci"]
    # The index changes nothing: the errors are those of every policy that could apply.
    assert evaluate(bundle, request, indexed=False) == strict


# --- the command line ----------------------------------------------------------


def _check(capsys: pytest.CaptureFixture[str], policy_dir: Path, *extra: str) -> tuple[int, str]:
    request = policy_dir.parent / "request.json"
    request.write_text(json.dumps(NO_FREEZE))
    code = main(["check", "--policies", str(policy_dir), "--request", str(request), *extra])
    return code, capsys.readouterr().out


def test_check_denies_a_forbid_that_errors(
    capsys: pytest.CaptureFixture[str], policy_dir: Path
) -> None:
    code, out = _check(capsys, policy_dir)
    assert code == EXIT_DENY, out
    assert "decision: DENY" in out
    assert "error no-restarts-during-a-freeze:" in out
    assert "policy errors: deny" in out
    code, out = _check(capsys, policy_dir, "--json")
    data = json.loads(out)
    assert code == EXIT_DENY
    assert (data["decision"], data["policy_errors"]) == ("DENY", "deny")
    assert data["errors"][0]["policy"] == "no-restarts-during-a-freeze"
    code, out = _check(capsys, policy_dir, "--policy-errors", "cedar")
    assert code == EXIT_OK and "policy errors: cedar" in out


def test_stepguard_test_runs_under_the_default_and_reports_it(
    capsys: pytest.CaptureFixture[str], policy_dir: Path
) -> None:
    suite = policy_dir.parent / "release.yaml"
    suite.write_text(
        f"policies: {policy_dir}\n"
        'now: "2026-11-25T10:00:00Z"\n'
        "cases:\n"
        "  - name: no restart while the freeze cannot be read\n"
        "    principal: 'Workload::\"ci\"'\n"
        "    action: restart\n"
        "    resource: 'TargetSystem::\"web\"'\n"
        "    expect: {decision: DENY, policies: [], errors: [no-restarts-during-a-freeze]}\n"
    )
    code = main(["test", str(suite)])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert out.rstrip().endswith("(policy errors: deny)")
    code = main(["test", str(suite), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert report["policy_errors"] == "deny"
    assert report["suites"][0]["cases"][0]["actual"]["policy_errors"] == "deny"
    # Under Cedar's semantics the same case is an ALLOW, so the suite fails and says why.
    code = main(["test", str(suite), "--policy-errors", "cedar"])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "actual:   ALLOW" in out and out.rstrip().endswith("(policy errors: cedar)")
