"""RecordOutcomes' answer (serving/outcomeanswer.py) says, slot by slot, what the
recorder recorded: each recorded item's response is `recorded_response` of it
(the batch's loop fills the slots itself, without a call per item), and a
refused item is its error, in the items' order."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.audit.redact import Redactor
from sidecar.audit.sink import MemorySink
from sidecar.core.bundle import load_bundle
from sidecar.core.errors import InvalidRequest
from sidecar.core.event import CallMeta
from sidecar.core.jsonreq import request_from_json
from sidecar.core.outcome import Outcome
from sidecar.core.validate import Limits
from sidecar.decision.decider import Decider
from sidecar.decision.metrics import Metrics
from sidecar.decision.outcomes import DecisionIndex, OutcomeRecorder, Recorded, indexing
from sidecar.serving.outcomeanswer import outcomes_response, recorded_response
from tests.helpers import BUSINESS_HOURS, POLICIES, grant_request

BUNDLE = load_bundle(POLICIES)
UNKNOWN = "01a24a69-8228-7000-8f19-46017a570b02"


class KeepingRecorder(OutcomeRecorder):
    """The real recorder; it keeps what `record_many` answered, to compare with."""

    answered: list[Recorded | Exception]

    def record_many(
        self, outcomes: Sequence[Outcome], meta: CallMeta
    ) -> list[Recorded | Exception]:
        self.answered = super().record_many(outcomes, meta)
        return self.answered


def _setup() -> tuple[KeepingRecorder, str, str]:
    sink, index, metrics = MemorySink(), DecisionIndex(), Metrics()
    clock = lambda: BUSINESS_HOURS  # noqa: E731
    decider = Decider(indexing(sink, index), metrics, clock, redactor=Redactor())
    ids = []
    for request in (grant_request(), grant_request(approver=None)):
        decided = decider.decide_message(
            BUNDLE, request_from_json(request), CallMeta(), Limits(), started=0.0
        )
        ids.append(decided.decision_id)
    recorder = KeepingRecorder(sink, metrics, clock, index=index, redactor=Redactor())
    return recorder, ids[0], ids[1]


RECORDER, ALLOWED, DENIED = _setup()
_ITEMS = st.sampled_from(
    [
        (ALLOWED, pb.OUTCOME_STATUS_SUCCEEDED, ""),
        (ALLOWED, pb.OUTCOME_STATUS_SKIPPED, ""),
        (DENIED, pb.OUTCOME_STATUS_SUCCEEDED, ""),
        (DENIED, pb.OUTCOME_STATUS_TIMED_OUT, "E"),
        (UNKNOWN, pb.OUTCOME_STATUS_FAILED, "E"),
        (UNKNOWN, pb.OUTCOME_STATUS_SKIPPED, ""),
        (ALLOWED, pb.OUTCOME_STATUS_FAILED, ""),  # refused: a failed step names its class
        ("not-an-id", pb.OUTCOME_STATUS_SUCCEEDED, ""),  # refused
    ]
)


@settings(max_examples=60, deadline=None)
@given(drawn=st.lists(_ITEMS, min_size=1, max_size=6))
def test_each_slot_is_what_was_recorded_or_why_not(
    drawn: list[tuple[str, pb.OutcomeStatus.ValueType, str]],
) -> None:
    items = [
        pb.RecordOutcomeRequest(decision_id=d, status=s, error_class=e, attempt=1)
        for d, s, e in drawn
    ]
    refused: list[InvalidRequest] = []
    answer = outcomes_response(items, RECORDER, CallMeta(peer="p"), refused.append)
    assert len(answer.results) == len(items)
    recorded = iter(RECORDER.answered)
    for i, slot in enumerate(answer.results):
        if slot.WhichOneof("result") == "response":
            got = next(recorded)
            assert isinstance(got, Recorded)
            assert slot.response == recorded_response(got)
        else:
            assert slot.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert slot.error.message.startswith(f"items[{i}].")
    assert next(recorded, None) is None  # every recorded outcome has its slot
    assert len(refused) == sum(1 for r in answer.results if r.WhichOneof("result") == "error")
