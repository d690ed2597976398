"""RecordOutcome(s) answers: what was recorded, as the protobuf responses say it.

A batch (RecordOutcomes) is read item by item (an invalid item fails only
itself) and its valid outcomes are recorded together (`record_many`: one
trail commit); each result slot is filled in place, in the items' order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import grpc

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.errors import AuditError, InvalidRequest
from sidecar.core.event import CallMeta
from sidecar.core.outcome import VIOLATION_TO_PROTO, Outcome, outcomes_from_proto
from sidecar.decision.outcomes import OutcomeRecorder, Recorded, ReportIdReused

log = logging.getLogger(__name__)
_DECISION_TO_PROTO = {"ALLOW": pb.DECISION_ALLOW, "DENY": pb.DECISION_DENY}


def recorded_response(recorded: Recorded) -> pb.RecordOutcomeResponse:
    out = pb.RecordOutcomeResponse()
    fill(out, recorded)
    return out


def fill(out: pb.RecordOutcomeResponse, recorded: Recorded) -> None:
    """`out` says what was recorded (in place: a batch's result slot, no copy)."""
    out.outcome_id = recorded.outcome_id
    out.decision_id = recorded.decision_id
    out.violation = VIOLATION_TO_PROTO[recorded.violation]
    out.decision = _DECISION_TO_PROTO.get(recorded.decision, pb.DECISION_UNSPECIFIED)
    out.reason = recorded.reason


def outcomes_response(
    items: Sequence[pb.RecordOutcomeRequest],
    recorder: OutcomeRecorder,
    meta: CallMeta,
    count_invalid: Callable[[InvalidRequest], None],
) -> pb.RecordOutcomesResponse:
    """Many outcomes, one result each in order; an invalid item fails only itself."""
    read = outcomes_from_proto(items)
    valid = [o for o in read if isinstance(o, Outcome)]
    try:
        results = iter(recorder.record_many(valid, meta))
    except Exception as exc:  # noqa: BLE001 - none of them is recorded
        results = iter([exc] * len(valid))
    out = pb.RecordOutcomesResponse()
    add = out.results.add
    violation_of, decision_of, unspecified = (
        VIOLATION_TO_PROTO,
        _DECISION_TO_PROTO.get,
        pb.DECISION_UNSPECIFIED,
    )
    for i, outcome in enumerate(read):
        slot = add()
        got = next(results) if isinstance(outcome, Outcome) else outcome
        if isinstance(got, Recorded):  # `fill`, inlined: once per item
            answer = slot.response
            answer.outcome_id = got.outcome_id
            answer.decision_id = got.decision_id
            answer.violation = violation_of[got.violation]
            answer.decision = decision_of(got.decision, unspecified)
            answer.reason = got.reason
        elif isinstance(got, InvalidRequest):
            if isinstance(got, ReportIdReused):  # the recorder's: named as the item's field
                got = ReportIdReused(f"items[{i}].report_id")
            count_invalid(got)
            slot.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            slot.error.message = str(got)
        elif isinstance(got, AuditError):
            slot.error.code = grpc.StatusCode.UNAVAILABLE.value[0]
            slot.error.message = f"items[{i}]: outcome not recorded: {got}"
        else:  # this item is not recorded; the rest go on
            log.error("RecordOutcomes item %d failed", i, exc_info=got)
            slot.error.code = grpc.StatusCode.INTERNAL.value[0]
            slot.error.message = f"items[{i}]: internal error; the outcome is not recorded"
    return out
