"""POST /stepguard/v1/outcome(s): the gRPC RecordOutcome over the AuthZEN server.

The real sidecar serves both APIs; each case is sent to both and must get the
same answer: the same violation and decision when recorded, 400 with exactly
the INVALID_ARGUMENT message when refused.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.client import StepguardClient
from tests.helpers import BUSINESS_HOURS, POLICIES, grant_request
from tests.serving.authzen.authzen_client import serving

ID = "01a24a69-8228-7000-8f19-46017a570b02"
T0 = BUSINESS_HOURS


def ts(at: Any) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    out = Timestamp()
    out.FromDatetime(at)
    return out


# (JSON body, the same as a message, the field a refusal names)
REFUSED: list[tuple[dict[str, Any], pb.RecordOutcomeRequest, str]] = [
    (
        {"status": "succeeded"},
        pb.RecordOutcomeRequest(status=pb.OUTCOME_STATUS_SUCCEEDED),
        "decision_id",
    ),
    (
        {"decision_id": "x", "status": "succeeded"},
        pb.RecordOutcomeRequest(decision_id="x", status=pb.OUTCOME_STATUS_SUCCEEDED),
        "decision_id",
    ),
    ({"decision_id": ID}, pb.RecordOutcomeRequest(decision_id=ID), "status"),
    (
        {"decision_id": ID, "status": "failed"},
        pb.RecordOutcomeRequest(decision_id=ID, status=pb.OUTCOME_STATUS_FAILED),
        "error_class",
    ),
    (
        {"decision_id": ID, "status": "succeeded", "error_class": "X"},
        pb.RecordOutcomeRequest(
            decision_id=ID, status=pb.OUTCOME_STATUS_SUCCEEDED, error_class="X"
        ),
        "error_class",
    ),
    (
        {"decision_id": ID, "status": "succeeded", "effect": {"entitlements_removed": ["e"] * 65}},
        pb.RecordOutcomeRequest(
            decision_id=ID,
            status=pb.OUTCOME_STATUS_SUCCEEDED,
            effect=pb.Effect(entitlements_removed=["e"] * 65),
        ),
        "effect.entitlements_removed",
    ),
    (
        {
            "decision_id": ID,
            "status": "succeeded",
            "effect": {
                "credential": {
                    "id": "k",
                    "change": "issued",
                    "issued_at": "2026-11-25T10:00:00Z",
                    "expires_at": "2026-11-25T09:00:00Z",
                }
            },
        },
        pb.RecordOutcomeRequest(
            decision_id=ID,
            status=pb.OUTCOME_STATUS_SUCCEEDED,
            effect=pb.Effect(
                credential=pb.Credential(
                    id="k",
                    change=pb.CREDENTIAL_CHANGE_ISSUED,
                    issued_at=ts(T0),
                    expires_at=ts(T0 - timedelta(hours=1)),
                )
            ),
        ),
        "effect.credential.expires_at",
    ),
    (
        {"decision_id": ID, "status": "succeeded", "effect": {"account": "renamed"}},
        pb.RecordOutcomeRequest(
            decision_id=ID,
            status=pb.OUTCOME_STATUS_SUCCEEDED,
            effect=pb.Effect(account=cast(pb.AccountChange.ValueType, 9)),
        ),
        "effect.account",
    ),
    (
        {
            "decision_id": ID,
            "status": "succeeded",
            "started_at": "2026-11-25T10:00:00Z",
            "finished_at": "2026-11-25T09:00:00Z",
        },
        pb.RecordOutcomeRequest(
            decision_id=ID,
            status=pb.OUTCOME_STATUS_SUCCEEDED,
            started_at=ts(T0),
            finished_at=ts(T0 - timedelta(hours=1)),
        ),
        "finished_at",
    ),
]


def test_refusals_are_400_with_the_grpc_message(tmp_path: Path) -> None:
    with serving(tmp_path, POLICIES) as (run, pdp):
        stub = pb_grpc.AuthorizerStub(grpc.insecure_channel(run.tcp))
        for body, msg, field in REFUSED:
            reply = pdp.post("/stepguard/v1/outcome", body)
            with pytest.raises(grpc.RpcError) as err:
                stub.RecordOutcome(msg, timeout=10)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert reply.status == 400, reply.text
            assert reply.text.startswith(f"{field}: ")
            if "unknown value" in reply.text:  # the value as each form spells it: "renamed", 9
                assert str(err.value.details()).startswith(f"{field}: unknown value ")
            else:
                assert reply.text.strip() == err.value.details()
        unknown = pdp.post("/stepguard/v1/outcome", {"decision_id": ID, "status": "ok", "x": 1})
        assert unknown.status == 400 and unknown.text.startswith("x: unknown field")
        not_json = pdp.post("/stepguard/v1/outcome", raw=b"{")
        assert not_json.status == 400
        # Still serving: a decision and its outcome go through.
        assert (
            pdp.evaluation(
                {
                    "subject": {
                        "type": "Workload",
                        "id": "spiffe://example.org/ns/comms/sa/notifier",
                    },
                    "action": {"name": "notify"},
                    "resource": {"type": "TargetSystem", "id": "slack"},
                }
            ).status
            == 200
        )
    assert not [e for e in run.audit_events() if e["kind"] == "outcome"]


def test_answers_match_grpc(tmp_path: Path) -> None:
    with serving(tmp_path, POLICIES) as (run, pdp), StepguardClient(run.tcp) as client:
        allowed = client.authorize(grant_request()).decision_id
        denied = client.authorize(grant_request(approver=None)).decision_id
        cases = [
            (allowed, "succeeded"),
            (denied, "succeeded"),
            (denied, "skipped"),
            (ID, "timed_out"),
        ]
        for decision_id, status in cases:
            over_grpc = client.record_outcome(decision_id, status)
            reply = pdp.post(
                "/stepguard/v1/outcome", {"decision_id": decision_id, "status": status}
            )
            assert reply.status == 200, reply.text
            answer = reply.json()
            assert answer["decision_id"] == decision_id
            assert (answer["violation"] or "") == over_grpc.violation
            assert (answer["decision"] or "") == over_grpc.decision
            assert answer["reason"] == over_grpc.reason
        batch = pdp.post(
            "/stepguard/v1/outcomes",
            {"items": [{"decision_id": denied, "status": "failed", "error_class": "E"}, {}]},
        ).json()["results"]
    assert batch[0]["violation"] == "decision_denied"
    assert batch[1]["error"]["status"] == 400
    assert batch[1]["error"]["message"].startswith("items[1].decision_id: ")
    recorded = [e for e in run.audit_events() if e["kind"] == "outcome"]
    assert len(recorded) == 2 * 4 + 1
    http_ones = [e for e in recorded if e["id"] in {batch[0]["outcome_id"]}]
    assert http_ones and http_ones[0]["status"] == "failed"


def test_a_report_id_is_recorded_once_over_http(tmp_path: Path) -> None:
    """AuthZEN takes `report_id` as gRPC does: sent again, the first answer and
    nothing written; reused for another report or malformed, 400 naming the field."""
    with serving(tmp_path, POLICIES) as (run, pdp), StepguardClient(run.tcp) as client:
        allowed = client.authorize(grant_request()).decision_id
        body = {"decision_id": allowed, "status": "succeeded", "report_id": "http-1"}
        first = pdp.post("/stepguard/v1/outcome", body)
        again = pdp.post("/stepguard/v1/outcome", body)
        reused = pdp.post("/stepguard/v1/outcome", {**body, "status": "skipped"})
        batch = pdp.post(
            "/stepguard/v1/outcomes",
            {"items": [body, {**body, "report_id": "a b"}, {**body, "attempt": 2}]},
        )
    assert first.status == 200 and again.status == 200, first.text
    assert again.json() == first.json()
    assert reused.status == 400 and reused.text.startswith("report_id: ")
    results = batch.json()["results"]
    assert results[0] == first.json()
    assert results[1]["error"]["status"] == 400
    assert results[1]["error"]["message"].startswith("items[1].report_id: ")
    assert results[2]["error"]["message"].startswith("items[2].report_id: ")
    recorded = [e for e in run.audit_events() if e["kind"] == "outcome"]
    assert [(e["id"], e["report_id"]) for e in recorded] == [(first.json()["outcome_id"], "http-1")]
