"""Reporting what a decided step did (RecordOutcome): the report sent, what came
back, and how a failure to report is told without raising."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import grpc.aio

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.client.decisions import CODE_BY_VALUE, DecisionKind, failed_call, kind_of
from sidecar.core.outcome import VIOLATION_OF_PROTO, outcome_to_proto
from sidecar.core.outcomejson import outcome_from_json


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    """What became of a reported outcome. `record_outcome` never raises: when the
    outcome was not recorded, `recorded` is False and `reason` says why; `kind`
    says what kind of failure it was (`kind.retryable`: reporting again may work;
    INVALID_REQUEST: a bug in the report, never sent again as is)."""

    recorded: bool
    reason: str
    outcome_id: str = ""  # the outcome's own audit event id
    decision_id: str = ""
    # Why the sidecar flagged the step as a violation ("" when it did not):
    # decision_denied, decision_unknown, after_time_bound, before_time_bound,
    # credential_ttl_exceeded, caller_mismatch (docs/api.md, "Outcomes").
    violation: str = ""
    decision: str = ""  # the decision it followed: "ALLOW", "DENY", "" when none was found
    kind: DecisionKind | None = None  # None when recorded; else why not (as for decisions)
    code: grpc.StatusCode | None = None


_ERROR_CLASS_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/-"
)


def error_class_of(exc: BaseException) -> str:
    """The `error_class` for a failure hook's exception: its class's qualified name
    (`requests.exceptions.HTTPError`), never its message, fit to what the sidecar
    accepts (1 to 128 of `[A-Za-z0-9_.:/-]`)."""
    kind = type(exc)
    name = (
        f"{kind.__module__}.{kind.__qualname__}"
        if kind.__module__ != "builtins"
        else kind.__qualname__
    )
    cleaned = "".join(c if c in _ERROR_CLASS_CHARS else "_" for c in name)
    return cleaned[-128:] or "Exception"


def outcome_message(
    decision_id: str,
    status: str,
    *,
    effect: Mapping[str, Any] | None,
    error_class: str,
    started_at: datetime | None,
    finished_at: datetime | None,
    attempt: int,
) -> pb.RecordOutcomeRequest:
    """The request, checked here first (the sidecar's own rules, sidecar/core/outcome.py),
    with a fresh `report_id`: sent again (a reporter's resend), it is recorded once."""
    body: dict[str, Any] = {"decision_id": decision_id, "status": status, "attempt": attempt}
    if error_class:
        body["error_class"] = error_class
    if effect is not None:
        body["effect"] = _json_times(effect)
    if started_at is not None:
        body["started_at"] = _json_times(started_at)
    if finished_at is not None:
        body["finished_at"] = _json_times(finished_at)
    msg = outcome_to_proto(outcome_from_json(body))
    msg.report_id = new_report_id()
    return msg


def new_report_id() -> str:
    """A fresh report_id (RecordOutcomeRequest.report_id): a UUID4, 32 hex digits."""
    return uuid.uuid4().hex


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _json_times(value: Any) -> Any:
    """Datetimes (at any depth) as RFC 3339 text, as the JSON form takes them."""
    if type(value) in _PLAIN:  # most values: no ABC check on the reporting path
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _json_times(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_times(v) for v in value]
    return value


def outcome_report(resp: pb.RecordOutcomeResponse) -> OutcomeReport:
    decision = {pb.DECISION_ALLOW: "ALLOW", pb.DECISION_DENY: "DENY"}.get(resp.decision, "")
    return OutcomeReport(
        recorded=True,
        reason=resp.reason,
        outcome_id=resp.outcome_id,
        decision_id=resp.decision_id,
        violation=VIOLATION_OF_PROTO.get(resp.violation, "unknown"),
        decision=decision,
        code=grpc.StatusCode.OK,
    )


def outcome_failure(exc: Exception) -> OutcomeReport:
    """The report for an outcome that was not recorded, saying why (like `failure`)."""
    failed = failed_call(exc)
    return OutcomeReport(
        recorded=False,
        reason=failed.reason.replace("stepguard call failed", "outcome not recorded", 1),
        kind=failed.kind,
        code=failed.code,
    )


class OutcomeBatch:
    """Outcomes to send in one RecordOutcomes call: the ones that convert, and a
    refusal for each that does not (like `Batch` for decisions)."""

    def __init__(self, items: Sequence[Mapping[str, Any]]) -> None:
        self.size = len(items)
        self.local: dict[int, OutcomeReport] = {}
        self.message = pb.RecordOutcomesRequest()
        for i, item in enumerate(items):
            try:
                msg = outcome_to_proto(outcome_from_json(_json_times(item)))
                if not msg.report_id:  # the item's own when it gave one
                    msg.report_id = new_report_id()
                self.message.items.append(msg)
            except Exception as exc:  # noqa: BLE001 - this item is refused, not the batch
                self.local[i] = outcome_failure(exc)

    @classmethod
    def of_messages(cls, messages: Sequence[pb.RecordOutcomeRequest]) -> OutcomeBatch:
        """A batch of requests already built and checked (the reporters')."""
        batch = cls(())
        batch.size = len(messages)
        batch.message.items.extend(messages)
        return batch

    def reports(self, resp: pb.RecordOutcomesResponse) -> list[OutcomeReport]:
        if len(resp.results) != self.size - len(self.local):
            return self.failed(RuntimeError("stepguard answered a different number of results"))
        sent = iter(resp.results)
        out = []
        for i in range(self.size):
            if i in self.local:
                out.append(self.local[i])
                continue
            result = next(sent)
            if result.HasField("response"):
                out.append(outcome_report(result.response))
            else:
                code = CODE_BY_VALUE.get(result.error.code, grpc.StatusCode.UNKNOWN)
                kind = kind_of(code)
                why = "invalid request" if kind is DecisionKind.INVALID_REQUEST else "not recorded"
                reason = f"{why}: {result.error.message}"
                out.append(OutcomeReport(False, reason, kind=kind, code=code))
        return out

    def failed(self, exc: Exception) -> list[OutcomeReport]:
        failure = outcome_failure(exc)
        return [self.local.get(i, failure) for i in range(self.size)]
