"""stepguard's extension paths on the AuthZEN server: outcomes over HTTP (JSON).

    POST /stepguard/v1/outcome    one outcome  -> what was recorded
    POST /stepguard/v1/outcomes   {"items": [...]} -> {"results": [...]}, in order

The body is the RecordOutcomeRequest as JSON (sidecar/core/outcomejson.py,
`outcome_from_json`): the proto's field names, enums as lower-case words,
times as RFC 3339. Validation and answers are the gRPC API's: 400 naming the
field, 503 when the trail cannot take the outcome (not recorded), else 200 with
`outcome_id`, `decision_id`, `decision`, `violation` (null when none), `reason`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sidecar.core.errors import AuditError, InvalidRequest
from sidecar.core.event import CallMeta
from sidecar.core.outcomejson import outcome_from_json
from sidecar.core.validate import member
from sidecar.decision.outcomes import OutcomeRecorder, Recorded, ReportIdReused

ONE: Final = "/stepguard/v1/outcome"
MANY: Final = "/stepguard/v1/outcomes"
PATHS: Final = (ONE, MANY)


class NotRecorded(Exception):
    """The trail refused the outcome: HTTP 503."""


def answer(recorded: Recorded) -> dict[str, Any]:
    return {
        "outcome_id": recorded.outcome_id,
        "decision_id": recorded.decision_id,
        "decision": recorded.decision or None,
        "violation": recorded.violation or None,
        "reason": recorded.reason,
    }


def record_one(
    recorder: OutcomeRecorder, body: Mapping[str, Any], meta: CallMeta
) -> dict[str, Any]:
    outcome = outcome_from_json(body)
    try:
        return answer(recorder.record(outcome, meta))
    except AuditError as exc:
        raise NotRecorded(f"outcome not recorded: {exc}") from exc


def record_many(
    recorder: OutcomeRecorder,
    body: Mapping[str, Any],
    meta: CallMeta,
    *,
    max_items: int,
    count_invalid: Any,
) -> dict[str, Any]:
    """Each item recorded or refused on its own, like RecordOutcomes."""
    items = body.get("items")
    extra = [k for k in body if k != "items"]
    if extra:
        raise InvalidRequest(member("", str(extra[0])), "unknown field; known: items")
    if not isinstance(items, list):
        raise InvalidRequest("items", "must be a list of outcomes")
    if len(items) > max_items:
        raise InvalidRequest("items", f"{len(items)} items, over the limit of {max_items}")
    results: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            try:
                results.append(
                    answer(recorder.record(outcome_from_json(item, f"items[{i}]."), meta))
                )
            except ReportIdReused as exc:
                raise ReportIdReused(f"items[{i}].report_id") from exc
        except InvalidRequest as exc:
            count_invalid(exc.field)
            results.append({"error": {"status": 400, "message": str(exc)}})
        except AuditError as exc:
            results.append(
                {"error": {"status": 503, "message": f"items[{i}]: outcome not recorded: {exc}"}}
            )
    return {"results": results}
