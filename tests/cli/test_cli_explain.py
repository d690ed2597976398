"""`stepguard check --explain`, and the same explanation from a real server (`explain` flag)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.cli.main import main
from sidecar.core.bundle import load_bundle
from sidecar.core.jsonreq import request_from_json
from tests.helpers import POLICIES, grant_request, notify_request, running_sidecar

NIGHT = "2026-11-25T23:00:00Z"


def run_check(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: dict[str, Any],
    *flags: str,
) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(request)))
    code = main(["check", "--policies", str(POLICIES), "--request", "-", *flags])
    return code, capsys.readouterr().out


def test_check_explain_text_names_every_policy_and_the_deciding_clause(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = grant_request()
    request["resource"] = {"type": "TargetSystem", "id": "okta"}
    code, out = run_check(capsys, monkeypatch, request, "--now", NIGHT, "--explain")
    assert code == 2  # DENY
    assert out.startswith("decision: DENY\n")
    assert "policies (12):" in out
    lines = out.splitlines()
    start = lines.index("policies (12):")
    first, why = lines[start + 1], lines[start + 2]
    assert first.split() == [
        "SATISFIED",
        "forbid",
        "sensitive-target-after-hours-requires-break-glass",
        "(business_hours.cedar:16)",
        "DETERMINING",
    ]
    assert why.strip() == "scope matched and every condition held"
    assert "scope matched and every condition held; overridden: a forbid was satisfied too" in out
    assert (
        "NOT-SATISFIED  forbid identity-change-requires-independent-approval  "
        "(identity_changes.cedar:18)" in out
    )
    assert (
        "unless clause at identity_changes.cedar:25:1 is true: unless { context has approval" in out
    )
    assert (
        'action does not match: action == Action::"issue_credential" (credentials.cedar:11:3)'
        in out
    )
    # Every policy of the bundle has exactly one header line, with its outcome.
    outcomes = ("SATISFIED", "NOT-SATISFIED", "NOT-APPLICABLE", "ERRORED", "NOT-EVALUATED")
    headers = [line.split() for line in lines[start + 1 :] if line.split()[0] in outcomes]
    assert sorted(h[2] for h in headers) == sorted(load_bundle(POLICIES).policies)
    code, plain = run_check(capsys, monkeypatch, request, "--now", NIGHT)
    assert code == 2 and "policies (" not in plain
    assert out.startswith(plain.rstrip("\n"))  # --explain only adds


def test_check_explain_json_and_allow_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = grant_request()
    request["action"] = {"type": "Action", "id": "issue_credential"}
    request["resource"] = {"type": "TargetSystem", "id": "okta"}
    code, out = run_check(
        capsys, monkeypatch, request, "--now", "2026-11-25T10:00:00Z", "--explain", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["decision"] == "ALLOW"
    policies = data["explanation"]["policies"]
    assert len(policies) == 12
    top = policies[0]
    assert top["id"] == "issue-credential-high-sensitivity" and top["determining"]
    assert top["outcome"] == "satisfied" and top["deciding_clause"] is None
    assert top["obligations"] == {"max_credential_ttl_s": 900.0}
    standard = next(p for p in policies if p["id"] == "issue-credential-standard-sensitivity")
    assert standard["outcome"] == "not-satisfied"
    assert standard["deciding_clause"]["kind"] == "when"
    assert standard["deciding_clause"]["value"] == "false"
    assert standard["deciding_clause"]["source"] == "credentials.cedar:30:1"
    assert {p["outcome"] for p in policies} == {"satisfied", "not-satisfied", "not-applicable"}


def _stub(target: str) -> tuple[grpc.Channel, pb_grpc.AuthorizerStub]:
    channel = grpc.insecure_channel(target)
    return channel, pb_grpc.AuthorizerStub(channel)


def test_server_explains_only_when_asked_and_never_changes_the_decision(tmp_path: Path) -> None:
    requests = [notify_request(), grant_request(), grant_request(approver=None)]
    bad = grant_request()
    bad["context"]["approval"]["approver"] = {"type": "Workload", "id": "w"}
    requests.append(bad)  # Cedar refuses this context: DENY with an error
    with running_sidecar(tmp_path) as running:
        channel, stub = _stub(running.tcp)
        with channel:
            for data in requests:
                plain = stub.Authorize(request_from_json(data), timeout=10)
                asked = request_from_json(data)
                asked.explain = True
                explained = stub.Authorize(asked, timeout=10)
                assert not plain.HasField("explanation")
                assert explained.HasField("explanation")
                assert explained.decision == plain.decision
                assert [p.id for p in explained.determining_policies] == [
                    p.id for p in plain.determining_policies
                ]
                assert [e.message for e in explained.errors] == [e.message for e in plain.errors]
                assert explained.policy_revision == plain.policy_revision
                determining = [p.id for p in explained.explanation.policies if p.determining]
                assert determining == [p.id for p in plain.determining_policies]
            events = running.audit_events()
    decisions = [e for e in events if e.get("kind", "decision") == "decision"]
    assert len(decisions) == 2 * len(requests)  # explained answers are audited like any other


def test_server_explanation_content(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running:
        channel, stub = _stub(running.tcp)
        with channel:
            msg = request_from_json(grant_request(approver=None))
            msg.explain = True
            resp = stub.Authorize(msg, timeout=10)
    assert resp.decision == pb.DECISION_DENY
    policies = {p.id: p for p in resp.explanation.policies}
    assert len(policies) == 12
    approval = policies["identity-change-requires-independent-approval"]
    assert approval.determining and approval.outcome == pb.POLICY_OUTCOME_SATISFIED
    assert approval.source == "identity_changes.cedar:18"
    (unless,) = [c for c in approval.clauses if c.kind == "unless"]
    assert unless.value == pb.CLAUSE_VALUE_FALSE and unless.source == "identity_changes.cedar:25:1"
    permit = policies["provisioning-workloads-change-identities"]
    assert permit.outcome == pb.POLICY_OUTCOME_SATISFIED and not permit.determining
    leaver = policies["leaver-deprovisioning-any-time"]
    assert leaver.outcome == pb.POLICY_OUTCOME_NOT_APPLICABLE
    assert leaver.deciding_clause.kind == "principal"
    assert leaver.deciding_clause.value == pb.CLAUSE_VALUE_FALSE
    assert leaver.why.startswith("principal does not match: principal is Workload in")
    ttl = policies["issue-credential-high-sensitivity"]
    assert ttl.max_credential_ttl.ToTimedelta().total_seconds() == 900
    assert resp.explanation.policies[0].determining  # determining policies come first
