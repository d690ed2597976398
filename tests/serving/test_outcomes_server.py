"""RecordOutcome on the real sidecar: outcomes chained beside decisions (issue 18).

Every test starts the real gRPC server on loopback (or its Unix socket), sends
real calls through the public client or a raw stub, and reads the real trail
file; `audit verify` and `audit query` run as the real CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.audit.sink import MemorySink
from sidecar.client import StepguardClient
from tests.helpers import (
    BUSINESS_HOURS,
    POLICIES,
    ROOT,
    Running,
    grant_request,
    running_sidecar,
    serve_process,
)
from tests.serving.authzen.authzen_client import Pdp

ISSUED = BUSINESS_HOURS - timedelta(minutes=1)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def outcomes(run: Running) -> list[dict[str, Any]]:
    return [e for e in run.audit_events() if e["kind"] == "outcome"]


def bounded_grant(not_after: datetime) -> dict[str, Any]:
    request = grant_request()
    request["context"]["time_bound"] = {
        "not_before": (BUSINESS_HOURS - timedelta(hours=1)).isoformat(),
        "not_after": not_after.isoformat(),
    }
    return request


def stub(run: Running) -> pb_grpc.AuthorizerStub:
    return pb_grpc.AuthorizerStub(grpc.insecure_channel(run.tcp))


def test_allow_then_succeeded_is_chained_after_its_decision_and_verifies(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
        decision = client.authorize(grant_request())
        assert decision.allowed
        effect = {
            "identity": {"type": "User", "id": "maria"},
            "target_system": "jira",
            "entitlements_added": ["jira-users", "jira-developers"],
            "credential": {
                "id": "key-42",
                "change": "issued",
                "issued_at": ISSUED,
                "expires_at": ISSUED + timedelta(minutes=10),
            },
            "account": "created",
        }
        report = client.record_outcome(
            decision.decision_id,
            "succeeded",
            effect=effect,
            started_at=ISSUED,
            finished_at=BUSINESS_HOURS,
            attempt=1,
        )
        assert report.recorded, report.reason
        assert (report.violation, report.decision) == ("", "ALLOW")
        events = run.audit_events()
    kinds = [e["kind"] for e in events]
    assert kinds[-2:] == ["decision", "outcome"]
    made, done = events[-2], events[-1]
    assert done["prev"] == made["hash"] and done["seq"] == made["seq"] + 1
    assert done["id"] == report.outcome_id and done["decision_id"] == made["id"]
    assert done["decided"] == "ALLOW" and "violation" not in done
    assert done["status"] == "succeeded" and done["attempt"] == 1
    assert done["effect"] == {
        "identity": {"type": "User", "id": "maria"},
        "target_system": "jira",
        "entitlements_added": ["jira-users", "jira-developers"],
        "credential": {
            "id": "key-42",
            "change": "issued",
            "issued_at": "2026-11-25T09:59:00.000000Z",
            "expires_at": "2026-11-25T10:09:00.000000Z",
        },
        "account": "created",
    }
    # What the decision said about the step, for queries by workflow, run, principal.
    for name in ("principal", "action", "resource", "workflow_id", "run_id", "step_id"):
        assert done[name] == made[name]
    verified = cli("audit", "verify", str(run.audit), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True


def test_outcome_of_a_denied_decision_is_a_violation(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as run, StepguardClient(f"unix://{run.socket}") as client:
        decision = client.authorize(grant_request(approver=None))
        assert not decision.allowed and decision.decision_id
        ran = client.record_outcome(decision.decision_id, "failed", error_class="PermissionError")
        skipped = client.record_outcome(decision.decision_id, "skipped")
        metrics = run.sidecar.metrics.registry
        denied = metrics.get_sample_value(
            "stepguard_outcomes_total", {"status": "failed", "violation": "decision_denied"}
        )
        fine = metrics.get_sample_value(
            "stepguard_outcomes_total", {"status": "skipped", "violation": "none"}
        )
    assert ran.recorded and ran.violation == "decision_denied" and ran.decision == "DENY"
    assert skipped.recorded and skipped.violation == ""  # it did not run: nothing to flag
    assert (denied, fine) == (1.0, 1.0)
    flagged = outcomes(run)
    assert [e.get("violation") for e in flagged] == ["decision_denied", None]
    assert flagged[0]["error_class"] == "PermissionError"


def test_outcome_for_a_decision_never_made_is_recorded_as_unknown(tmp_path: Path) -> None:
    never = "01a24a69-8228-7000-8f19-46017a570b02"
    with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
        report = client.record_outcome(never, "succeeded")
    assert report.recorded and report.violation == "decision_unknown" and report.decision == ""
    (event,) = outcomes(run)
    assert event["decided"] == "UNKNOWN" and event["violation"] == "decision_unknown"
    assert event["decision_id"] == never


def test_step_that_ran_after_the_time_bound_is_a_violation(tmp_path: Path) -> None:
    not_after = BUSINESS_HOURS + timedelta(minutes=30)
    with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
        decision = client.authorize(bounded_grant(not_after))
        assert decision.allowed, decision.reason
        late = client.record_outcome(
            decision.decision_id, "succeeded", finished_at=not_after + timedelta(seconds=1)
        )
        early = client.record_outcome(
            decision.decision_id,
            "succeeded",
            started_at=BUSINESS_HOURS - timedelta(hours=2),
            finished_at=BUSINESS_HOURS,
        )
        in_time = client.record_outcome(decision.decision_id, "succeeded", finished_at=not_after)
    assert late.violation == "after_time_bound"
    assert early.violation == "before_time_bound"
    assert in_time.recorded and in_time.violation == ""
    assert [e.get("violation") for e in outcomes(run)] == [
        "after_time_bound",
        "before_time_bound",
        None,
    ]


def test_credential_outliving_the_ttl_obligation_is_a_violation(tmp_path: Path) -> None:
    request = grant_request()
    request["action"]["id"] = "issue_credential"
    with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
        decision = client.authorize(request)
        ttl = decision.max_credential_ttl
        assert decision.allowed and ttl is not None, decision.reason
        credential = {"id": "k", "change": "issued", "issued_at": ISSUED}
        too_long = client.record_outcome(
            decision.decision_id,
            "succeeded",
            effect={"credential": {**credential, "expires_at": ISSUED + ttl * 2}},
        )
        within = client.record_outcome(
            decision.decision_id,
            "succeeded",
            effect={"credential": {**credential, "expires_at": ISSUED + ttl}},
        )
    assert too_long.violation == "credential_ttl_exceeded"
    assert within.recorded and within.violation == ""
    assert len(outcomes(run)) == 2


def test_decision_made_before_a_restart_is_found_in_the_trail(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as first, StepguardClient(first.tcp) as client:
        allowed = client.authorize(grant_request()).decision_id
        denied = client.authorize(grant_request(approver=None)).decision_id
    # A new server process on the same trail: its memory holds neither decision.
    with running_sidecar(tmp_path) as second, StepguardClient(second.tcp) as client:
        assert len(second.sidecar.outcomes.index) == 0
        ok = client.record_outcome(allowed, "succeeded")
        bad = client.record_outcome(denied, "succeeded")
    assert (ok.recorded, ok.violation, ok.decision) == (True, "", "ALLOW")
    assert (bad.violation, bad.decision) == ("decision_denied", "DENY")
    found = outcomes(second)
    assert found[0]["principal"] == grant_request()["principal"]
    assert found[0]["workflow_id"] == "onboarding"


def test_decision_made_by_a_stopped_serve_process_is_found_by_the_next(tmp_path: Path) -> None:
    """Two real `stepguard serve` processes, one after the other, on one trail."""
    args = (
        *("--policies", str(POLICIES), "--listen", "127.0.0.1:0", "--socket", "off"),
        *(
            "--metrics-listen",
            "off",
            "--audit-file",
            str(tmp_path / "audit.jsonl"),
            "--workers",
            "1",
        ),
        *("--fixed-clock", "2026-11-25T10:00:00Z", "--non-production"),
    )
    with serve_process(*args) as first:
        with StepguardClient(first.serving["grpc"]) as client:
            allowed = client.authorize(grant_request())
            denied = client.authorize(grant_request(approver=None))
        assert first.terminate() == 0
    assert allowed.allowed and not denied.allowed
    with serve_process(*args) as second:
        with StepguardClient(second.serving["grpc"]) as client:
            ok = client.record_outcome(allowed.decision_id, "succeeded")
            bad = client.record_outcome(denied.decision_id, "timed_out")
            never = client.record_outcome("01a24a69-8228-7000-8f19-46017a570b02", "succeeded")
        assert second.terminate() == 0
    assert (ok.recorded, ok.violation, ok.decision) == (True, "", "ALLOW")
    assert (bad.violation, bad.decision) == ("decision_denied", "DENY")
    assert never.violation == "decision_unknown"
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    recorded = [e for e in map(json.loads, lines) if e["kind"] == "outcome"]
    assert len(recorded) == 3  # under a fixed clock, outcomes say so as decisions do
    assert {e["note"] for e in recorded} == {
        "non-production: fixed clock 2026-11-25T10:00:00.000000Z"
    }
    verified = cli("audit", "verify", str(tmp_path / "audit.jsonl"), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_decision_in_another_chain_of_the_directory_is_found(tmp_path: Path) -> None:
    """Another worker's chain (`audit.w1.jsonl`) beside the configured trail."""
    other = tmp_path / "other"
    other.mkdir()
    with running_sidecar(other) as worker, StepguardClient(worker.tcp) as client:
        decision_id = client.authorize(grant_request()).decision_id
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "audit.w1.jsonl").write_bytes(worker.audit.read_bytes())
    with running_sidecar(mine) as run, StepguardClient(run.tcp) as client:
        report = client.record_outcome(decision_id, "succeeded")
    assert (report.violation, report.decision) == ("", "ALLOW")


def test_redaction_applies_to_outcome_fields(tmp_path: Path) -> None:
    token = "ghp_" + "a" * 40  # looks like a secret wherever it is
    with (
        running_sidecar(
            tmp_path, audit_redact=("effect.identity.id", "effect.credential.id")
        ) as run,
        StepguardClient(run.tcp) as client,
    ):
        decision = client.authorize(grant_request())
        report = client.record_outcome(
            decision.decision_id,
            "succeeded",
            effect={
                "identity": {"type": "User", "id": "maria.secret-person"},
                "target_system": "jira",
                "entitlements_added": [token],
                "credential": {
                    "id": "AKIA" + "B" * 16,
                    "change": "issued",
                    "issued_at": ISSUED,
                    "expires_at": ISSUED + timedelta(minutes=5),
                },
            },
        )
        assert report.recorded
    text = run.audit.read_text()
    for secret in ("maria.secret-person", token, "AKIA" + "B" * 16):
        assert secret not in text
    (event,) = outcomes(run)
    effect = event["effect"]
    assert effect["identity"]["type"] == "User"
    assert effect["identity"]["id"].startswith("redacted:hmac-sha256:")
    assert effect["credential"]["id"].startswith("redacted:hmac-sha256:")
    assert effect["entitlements_added"][0].startswith("redacted:hmac-sha256:")
    assert effect["credential"]["expires_at"] == "2026-11-25T10:04:00.000000Z"  # kept
    assert effect["target_system"] == "jira"


BAD: list[tuple[pb.RecordOutcomeRequest, str]] = [
    (pb.RecordOutcomeRequest(status=pb.OUTCOME_STATUS_SUCCEEDED), "decision_id"),
    (
        pb.RecordOutcomeRequest(decision_id="not-an-id", status=pb.OUTCOME_STATUS_SUCCEEDED),
        "decision_id",
    ),
    (pb.RecordOutcomeRequest(decision_id="01a24a69-8228-7000-8f19-46017a570b02"), "status"),
    (
        pb.RecordOutcomeRequest(
            decision_id="01a24a69-8228-7000-8f19-46017a570b02",
            status=cast(pb.OutcomeStatus.ValueType, 17),  # a number no version defines
        ),
        "status",
    ),
    (
        pb.RecordOutcomeRequest(
            decision_id="01a24a69-8228-7000-8f19-46017a570b02", status=pb.OUTCOME_STATUS_FAILED
        ),
        "error_class",
    ),
    (
        pb.RecordOutcomeRequest(
            decision_id="01a24a69-8228-7000-8f19-46017a570b02",
            status=pb.OUTCOME_STATUS_SUCCEEDED,
            effect=pb.Effect(entitlements_added=["e"] * 65),
        ),
        "effect.entitlements_added",
    ),
    (
        pb.RecordOutcomeRequest(
            decision_id="01a24a69-8228-7000-8f19-46017a570b02",
            status=pb.OUTCOME_STATUS_SUCCEEDED,
            effect=pb.Effect(identity=pb.EntityRef(type="not a type", id="x")),
        ),
        "effect.identity.type",
    ),
]


def _expires_before_issued() -> pb.RecordOutcomeRequest:
    msg = pb.RecordOutcomeRequest(
        decision_id="01a24a69-8228-7000-8f19-46017a570b02", status=pb.OUTCOME_STATUS_SUCCEEDED
    )
    cred = msg.effect.credential
    cred.id, cred.change = "k", pb.CREDENTIAL_CHANGE_ISSUED
    cred.issued_at.FromDatetime(BUSINESS_HOURS)
    cred.expires_at.FromDatetime(BUSINESS_HOURS - timedelta(seconds=1))
    return msg


BAD.append((_expires_before_issued(), "effect.credential.expires_at"))


@pytest.mark.parametrize("server_mode", ["sync", "asyncio"])
def test_bad_input_is_invalid_argument_naming_the_field_and_the_server_keeps_serving(
    tmp_path: Path, server_mode: str
) -> None:
    with running_sidecar(tmp_path, server_mode=server_mode) as run:
        raw = stub(run)
        for msg, field in BAD:
            with pytest.raises(grpc.RpcError) as err:
                raw.RecordOutcome(msg, timeout=10)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert str(err.value.details()).startswith(f"{field}: "), err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # bytes that are no message at all
            channel = grpc.insecure_channel(run.tcp)
            call = channel.unary_unary(
                "/stepguard.v1.Authorizer/RecordOutcome",
                request_serializer=None,
                response_deserializer=None,
            )
            call(b"\xff\xff", timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        batch = raw.RecordOutcomes(
            pb.RecordOutcomesRequest(items=[BAD[0][0], BAD[2][0]]), timeout=10
        )
        assert [r.error.message.split(":")[0] for r in batch.results] == [
            "items[0].decision_id",
            "items[1].status",
        ]
        assert all(r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for r in batch.results)
        with StepguardClient(run.tcp) as client:  # still serving, decisions and outcomes
            decision = client.authorize(grant_request())
            assert decision.allowed
            assert client.record_outcome(decision.decision_id, "succeeded").recorded
        assert [e["kind"] for e in run.audit_events()][-2:] == ["decision", "outcome"]
        assert len(outcomes(run)) == 1  # no refused outcome reached the trail


def test_batch_records_each_item_in_order(tmp_path: Path) -> None:
    with running_sidecar(tmp_path, server_mode="asyncio", audit_durability="fsync") as run:
        with StepguardClient(run.tcp) as client:
            allowed = client.authorize(grant_request()).decision_id
            denied = client.authorize(grant_request(approver=None)).decision_id
        answer = stub(run).RecordOutcomes(
            pb.RecordOutcomesRequest(
                items=[
                    pb.RecordOutcomeRequest(
                        decision_id=allowed, status=pb.OUTCOME_STATUS_SUCCEEDED
                    ),
                    pb.RecordOutcomeRequest(decision_id=denied, status=pb.OUTCOME_STATUS_SUCCEEDED),
                    pb.RecordOutcomeRequest(decision_id=allowed),
                ]
            ),
            timeout=10,
        )
    first, second, third = answer.results
    assert first.response.violation == pb.VIOLATION_NONE
    assert second.response.violation == pb.VIOLATION_DECISION_DENIED
    assert third.error.message.startswith("items[2].status: ")
    recorded = outcomes(run)
    assert [e["id"] for e in recorded] == [first.response.outcome_id, second.response.outcome_id]


def test_audit_query_filters_outcomes(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
        allowed = client.authorize(grant_request()).decision_id
        denied = client.authorize(grant_request(approver=None)).decision_id
        ok = client.record_outcome(allowed, "succeeded")
        bad = client.record_outcome(denied, "succeeded")

    def query(*args: str) -> list[dict[str, Any]]:
        done = cli("audit", "query", str(run.audit), "--format", "json", *args)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    assert [e["id"] for e in query("--type", "outcome")] == [ok.outcome_id, bad.outcome_id]
    assert [e["id"] for e in query("--decision-id", allowed)] == [allowed, ok.outcome_id]
    assert [e["id"] for e in query("--violation")] == [bad.outcome_id]
    assert [e["id"] for e in query("--type", "outcome", "--workflow", "onboarding")] == [
        ok.outcome_id,
        bad.outcome_id,
    ]
    assert [e["kind"] for e in query()] == ["decision", "decision"]  # the default: decisions
    table = cli("audit", "query", str(run.audit), "--type", "outcome")
    assert "OUTCOME" in table.stdout and "VIOLATION decision_denied" in table.stdout


def test_outcomes_rotate_with_the_trail_and_the_directory_verifies(tmp_path: Path) -> None:
    """Every commit ends a segment: decisions and outcomes spread over many files."""
    with running_sidecar(tmp_path, audit_rotate_bytes=1) as run, StepguardClient(run.tcp) as c:
        ids = [c.authorize(grant_request()).decision_id for _ in range(3)]
        reports = [c.record_outcome(d, "succeeded") for d in ids]
    assert all(r.recorded and r.violation == "" for r in reports)
    assert len(list(tmp_path.glob("audit.jsonl.0*"))) >= 5
    verified = cli("audit", "verify", str(tmp_path), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    found = cli("audit", "query", str(tmp_path), "--type", "outcome", "--format", "json")
    assert [json.loads(line)["id"] for line in found.stdout.splitlines()] == [
        r.outcome_id for r in reports
    ]


def test_an_outcome_the_trail_cannot_take_is_unavailable_and_not_recorded(tmp_path: Path) -> None:
    """gRPC UNAVAILABLE, HTTP 503, the client's report not recorded and retryable."""
    sink = MemorySink()
    with running_sidecar(tmp_path, sink=sink, authzen_listen="127.0.0.1:0") as run:
        assert run.authzen
        pdp = Pdp(run.authzen)
        try:
            with StepguardClient(run.tcp) as client:
                decision = client.authorize(grant_request())
                assert decision.allowed
                sink.fail_with = "disk full"
                report = client.record_outcome(decision.decision_id, "succeeded")
                reply = pdp.post(
                    "/stepguard/v1/outcome",
                    {"decision_id": decision.decision_id, "status": "succeeded"},
                )
                sink.fail_with = None
                again = client.record_outcome(decision.decision_id, "succeeded")
        finally:
            pdp.close()
    assert not report.recorded and report.kind is not None and report.kind.retryable
    assert report.code is grpc.StatusCode.UNAVAILABLE and "disk full" in report.reason
    assert reply.status == 503 and "outcome not recorded: disk full" in reply.text
    assert again.recorded
    assert [e["kind"] for e in sink.events] == ["decision", "outcome"]
