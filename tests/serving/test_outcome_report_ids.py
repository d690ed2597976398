"""A report sent twice is recorded once (RecordOutcomeRequest.report_id, issue 18).

The outcome reporter resends a batch the sidecar answered UNAVAILABLE, and
UNAVAILABLE can come after the sidecar wrote it (the answer lost on the way):
without an id the resend is a second outcome event, and the evidence counts the
step twice. The real server, the real trail, a real gRPC proxy that drops the
answer, real certificates for two callers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.audit.sink import MemorySink
from sidecar.client import (
    AsyncStepguardClient,
    OutcomeReport,
    OutcomeReporter,
    StepguardClient,
)
from tests.helpers import (
    NOTIFIER,
    PROVISIONER,
    assert_trail_verifies,
    grant_request,
    notify_request,
    running_sidecar,
    tls_client,
)
from tests.pki import Pki, make_pki, tls_settings

UNKNOWN = "01a24a69-8228-7000-8f19-46017a570b02"


def _outcomes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("kind") == "outcome"]


def _item(
    decision_id: str,
    report_id: str,
    status: pb.OutcomeStatus.ValueType = pb.OUTCOME_STATUS_SUCCEEDED,
) -> Any:
    return pb.RecordOutcomeRequest(decision_id=decision_id, status=status, report_id=report_id)


def test_a_batch_sent_twice_is_recorded_once(tmp_path: Path) -> None:
    """The same RecordOutcomes request twice: the second answer is the first, item by
    item (same outcome ids, violations, decisions, reasons), and the trail, which
    verifies, holds one outcome event per report, with its report_id."""
    with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
        allowed = client.authorize(grant_request()).decision_id
        denied = client.authorize(grant_request(approver=None)).decision_id
        ids = [uuid.uuid4().hex for _ in range(3)]
        request = pb.RecordOutcomesRequest(
            items=[_item(allowed, ids[0]), _item(denied, ids[1]), _item(UNKNOWN, ids[2])]
        )
        stub = pb_grpc.AuthorizerStub(client._channel)
        first = stub.RecordOutcomes(request, timeout=10)
        second = stub.RecordOutcomes(request, timeout=10)
        events = _outcomes(run.audit_events())
    assert all(r.HasField("response") for r in first.results)
    assert [r.response.violation for r in first.results] == [
        pb.VIOLATION_NONE,
        pb.VIOLATION_DECISION_DENIED,
        pb.VIOLATION_DECISION_UNKNOWN,
    ]
    assert list(second.results) == list(first.results)
    assert [e["id"] for e in events] == [r.response.outcome_id for r in first.results]
    assert [e["report_id"] for e in events] == ids
    assert_trail_verifies(tmp_path)


class _AnswerLost(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # generic only in the stubs
    """A proxy to the sidecar that forwards every call, but loses the answer to the
    first RecordOutcomes after the sidecar recorded it: answers UNAVAILABLE, or
    (`late`) holds it until the caller's deadline has passed."""

    def __init__(self, target: str, late: float = 0.0) -> None:
        self.channel = grpc.insecure_channel(target)
        self.dropped = 0
        self.late = late

    def service(
        self, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = details.method
        forward = self.channel.unary_unary(method, None, None)  # bytes through, as they come

        def handle(raw: bytes, context: grpc.ServicerContext) -> bytes:
            answer: bytes = forward(raw, timeout=10)
            if method.endswith("/RecordOutcomes") and self.dropped == 0:
                self.dropped += 1
                if self.late:
                    time.sleep(self.late)  # the caller's deadline passes meanwhile
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost after the commit")
            return answer

        return grpc.unary_unary_rpc_method_handler(handle)


@contextmanager
def _proxy(target: str, late: float = 0.0) -> Iterator[tuple[str, _AnswerLost]]:
    handler = _AnswerLost(target, late)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", handler
    finally:
        server.stop(grace=None)
        handler.channel.close()


def test_a_resend_after_a_lost_answer_is_recorded_once(tmp_path: Path) -> None:
    """The sidecar recorded the batch but the reporter was answered UNAVAILABLE: it
    sends the batch again (same report ids), the sidecar answers it as recorded and
    writes nothing, so the trail holds each outcome once and the reporter counts
    each recorded."""
    with running_sidecar(tmp_path) as run, _proxy(run.tcp) as (target, proxy):
        with StepguardClient(target) as client:
            ids = [client.authorize(grant_request()).decision_id for _ in range(3)]
            reporter = OutcomeReporter(client, flush_interval_s=0.01, retries=50)
            for d in ids:
                assert reporter.report(d, "succeeded", attempt=1)
            reporter.close(timeout=30)
        events = _outcomes(run.audit_events())
    assert proxy.dropped == 1
    assert sorted(e["decision_id"] for e in events) == sorted(ids)
    assert len({e["report_id"] for e in events}) == 3
    assert reporter.stats.recorded == 3 and reporter.stats.dropped == 0
    assert_trail_verifies(tmp_path)


def test_a_batch_answered_too_late_is_sent_again_and_recorded_once(tmp_path: Path) -> None:
    """The sidecar recorded the batch but its answer came after the client's deadline
    (DEADLINE_EXCEEDED): the reporter sends it again, since the report ids make a
    second copy harmless, and each outcome is recorded once and counted recorded, not
    dropped."""
    with running_sidecar(tmp_path) as run, _proxy(run.tcp, late=2.5) as (target, proxy):
        with StepguardClient(target, timeout=1.0) as client:
            ids = [client.authorize(grant_request()).decision_id for _ in range(3)]
            told: list[OutcomeReport] = []
            reporter = OutcomeReporter(client, flush_interval_s=0.01, retries=5)
            for d in ids:
                assert reporter.report(d, "succeeded", attempt=1, on_result=told.append)
            reporter.close(timeout=30)
        events = _outcomes(run.audit_events())
    assert proxy.dropped == 1
    assert sorted(e["decision_id"] for e in events) == sorted(ids)
    assert len({e["report_id"] for e in events}) == 3
    assert reporter.stats.recorded == 3 and reporter.stats.dropped == 0, reporter.stats
    assert reporter.stats.batches >= 2  # the late one, then its resend
    assert [r.recorded for r in told] == [True] * 3
    assert_trail_verifies(tmp_path)


def test_the_async_reporter_sends_a_late_batch_again_too(tmp_path: Path) -> None:
    """The asyncio client's reporter: the same rule, on its own loop."""

    async def run(target: str) -> tuple[list[str], Any]:
        async with AsyncStepguardClient(target, timeout=1.0) as client:
            ids = [(await client.authorize(grant_request())).decision_id for _ in range(3)]
            client.outcomes.flush_interval_s = 0.01
            for d in ids:
                assert client.report_outcome(d, "succeeded", attempt=1)
            assert await client.flush_outcomes(timeout=30)
            return ids, client.outcomes.stats

    with running_sidecar(tmp_path) as running, _proxy(running.tcp, late=2.5) as (target, proxy):
        ids, stats = asyncio.run(run(target))
        events = _outcomes(running.audit_events())
    assert proxy.dropped == 1
    assert sorted(e["decision_id"] for e in events) == sorted(ids)
    assert stats.recorded == 3 and stats.dropped == 0, stats
    assert_trail_verifies(tmp_path)


def test_a_report_id_reused_or_malformed_is_refused_naming_it(tmp_path: Path) -> None:
    """The same report_id with another report is INVALID_ARGUMENT naming `report_id`
    (alone) or `items[i].report_id` (in a batch), nothing written for it; a malformed
    one is refused naming its field path; the server keeps serving."""
    with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
        one = client.authorize(grant_request()).decision_id
        two = client.authorize(grant_request()).decision_id
        stub = pb_grpc.AuthorizerStub(client._channel)
        first = stub.RecordOutcome(_item(one, "r-1"), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RecordOutcome(_item(two, "r-1"), timeout=10)
        with pytest.raises(grpc.RpcError) as other_status:
            stub.RecordOutcome(_item(one, "r-1", pb.OUTCOME_STATUS_SKIPPED), timeout=10)
        batch = stub.RecordOutcomes(
            pb.RecordOutcomesRequest(
                items=[_item(two, "r 2"), _item(two, "r-1"), _item(two, "r-3")]
            ),
            timeout=10,
        )
        again = stub.RecordOutcome(_item(one, "r-1"), timeout=10)
        assert client.authorize(grant_request()).allowed  # still serving
        events = _outcomes(run.audit_events())
    for err in (refused.value, other_status.value):
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(err.details()).startswith("report_id: ")
    malformed, reused, fine = batch.results
    assert malformed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert malformed.error.message.startswith("items[0].report_id: ")
    assert reused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reused.error.message.startswith("items[1].report_id: ")
    assert fine.HasField("response")
    assert again == first
    assert [(e["decision_id"], e["report_id"]) for e in events] == [(one, "r-1"), (two, "r-3")]


def test_two_reports_in_one_batch_with_one_id_are_recorded_once(tmp_path: Path) -> None:
    """Within a batch, the second item with an id the first used gets its answer."""
    with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
        one = client.authorize(grant_request()).decision_id
        stub = pb_grpc.AuthorizerStub(client._channel)
        batch = stub.RecordOutcomes(
            pb.RecordOutcomesRequest(items=[_item(one, "same"), _item(one, "same")]), timeout=10
        )
        events = _outcomes(run.audit_events())
    assert batch.results[0] == batch.results[1] and batch.results[0].HasField("response")
    assert [e["id"] for e in events] == [batch.results[0].response.outcome_id]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def test_one_caller_cannot_suppress_another_callers_report(tmp_path: Path, pki: Pki) -> None:
    """Two callers (two mTLS identities) send the same report with the same id: each
    is recorded (the second one flagged, as another caller's), neither answered with
    the other's."""
    provisioner = pki.domain.issue(spiffe=PROVISIONER["id"])
    notifier = pki.domain.issue(spiffe=NOTIFIER["id"])
    with running_sidecar(tmp_path, **tls_settings(tmp_path / "tls", pki)) as run:
        with tls_client(tmp_path, run, pki.domain.pem, notifier) as own:
            decided = own.authorize(notify_request())
            assert decided.allowed, decided.reason
            report = _item(decided.decision_id, "shared-id")
            first = pb_grpc.AuthorizerStub(own._channel).RecordOutcome(report, timeout=10)
        with tls_client(tmp_path, run, pki.domain.pem, provisioner) as other:
            second = pb_grpc.AuthorizerStub(other._channel).RecordOutcome(report, timeout=10)
        events = _outcomes(run.audit_events())
    assert first.outcome_id != second.outcome_id
    assert (first.violation, second.violation) == (
        pb.VIOLATION_NONE,
        pb.VIOLATION_CALLER_MISMATCH,
    )
    assert [e["id"] for e in events] == [first.outcome_id, second.outcome_id]
    assert len({e["caller"]["identity"] for e in events}) == 2


def test_a_batch_the_trail_refused_is_recorded_once_when_sent_again(tmp_path: Path) -> None:
    """A report the trail did not take is not remembered: sent again once the trail is
    back, it is recorded (once; a third send writes nothing)."""
    sink = MemorySink()
    with running_sidecar(tmp_path, sink=sink) as run, StepguardClient(run.tcp) as client:
        ids = [client.authorize(grant_request()).decision_id for _ in range(2)]
        request = pb.RecordOutcomesRequest(
            items=[_item(d, f"report-{i}") for i, d in enumerate(ids)]
        )
        stub = pb_grpc.AuthorizerStub(client._channel)
        sink.fail_with = "disk full"
        refused = stub.RecordOutcomes(request, timeout=10)
        alone = None
        try:
            stub.RecordOutcome(_item(ids[0], "alone"), timeout=10)
        except grpc.RpcError as exc:
            alone = exc.code()
        sink.fail_with = None
        recorded = stub.RecordOutcomes(request, timeout=10)
        again = stub.RecordOutcomes(request, timeout=10)
        alone_later = stub.RecordOutcome(_item(ids[0], "alone"), timeout=10)
    assert [r.error.code for r in refused.results] == [grpc.StatusCode.UNAVAILABLE.value[0]] * 2
    assert alone == grpc.StatusCode.UNAVAILABLE
    assert all(r.HasField("response") for r in recorded.results)
    assert again == recorded
    outcomes = [e for e in sink.events if e["kind"] == "outcome"]
    assert [e["report_id"] for e in outcomes] == ["report-0", "report-1", "alone"]
    assert outcomes[2]["id"] == alone_later.outcome_id


def test_the_clients_send_a_report_id_kept_across_resends(tmp_path: Path) -> None:
    """`record_outcome`, `record_outcomes` and `report_outcome` each send a fresh
    report_id (so a resend is the same report), on the blocking client."""
    with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
        d = client.authorize(grant_request()).decision_id
        assert client.record_outcome(d, "succeeded").recorded
        assert all(
            r.recorded for r in client.record_outcomes([{"decision_id": d, "status": "skipped"}])
        )
        assert client.report_outcome(d, "succeeded", attempt=2)
        client.outcomes.close(timeout=10)
        events = _outcomes(run.audit_events())
    ids = [e.get("report_id", "") for e in events]
    assert len(events) == 3 and len(set(ids)) == 3
    assert all(len(i) == 32 for i in ids)


def test_the_async_client_sends_a_report_id_too(tmp_path: Path) -> None:
    """The asyncio client's `record_outcome`, `record_outcomes` and `report_outcome`."""

    async def run(target: str) -> None:
        async with AsyncStepguardClient(target) as client:
            d = (await client.authorize(grant_request())).decision_id
            assert (await client.record_outcome(d, "succeeded")).recorded
            batch = await client.record_outcomes([{"decision_id": d, "status": "skipped"}])
            assert all(r.recorded for r in batch)
            assert client.report_outcome(d, "succeeded", attempt=2)

    with running_sidecar(tmp_path) as running:
        asyncio.run(run(running.tcp))
        events = _outcomes(running.audit_events())
    ids = [e.get("report_id", "") for e in events]
    assert len(events) == 3 and len(set(ids)) == 3
    assert all(len(i) == 32 for i in ids)
