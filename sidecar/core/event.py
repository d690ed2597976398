"""The audit event: what was asked, by whom, what was decided and why.

Pure: the events are built here, from the request model and the result;
sidecar/audit chains, writes and reads them.

Schema version 1, documented in docs/audit.md and sidecar/audit/event.schema.json.
The event id is the decision id. Chain fields (seq, prev, hash) are added by
the sink that orders events; the sink also writes the other kinds of record
(segment headers, recoveries, outages, shutdowns) built by `system_event`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sidecar.core.ids import DecisionIds
from sidecar.core.model import AuthzRequest, Result
from sidecar.core.outcome import DecisionFacts, Outcome
from sidecar.core.plan import StepVerdict
from sidecar.core.planreq import Plan


class Redactor(Protocol):
    """What the event builders ask of a redactor (sidecar/audit/redact.py is the one).

    The events are built here, in the pure core; the redactor, which holds a
    key and its settings, stays with the trail that reads them.
    """

    def apply(self, event: Mapping[str, Any]) -> dict[str, Any]: ...

    def touches(self, fields: Iterable[str]) -> bool: ...

    def stampable(self, request_id: str) -> bool: ...

    def by_value(self, value: Any) -> Any: ...

    def clean_texts(self, texts: Iterable[str]) -> bool: ...

    def reaches(self, event: Mapping[str, Any]) -> bool: ...


SCHEMA_VERSION = 1
KINDS = ("decision", "outcome", "plan", "segment", "recovery", "outage", "shutdown")
_SYSTEM_IDS = DecisionIds()


def timestamp(at: datetime) -> str:
    """RFC 3339, UTC, microseconds, `Z`: sorts as text.

    Every event is stamped: for the server's clock (already UTC) the text is
    formatted by hand at half isoformat's cost; the same characters
    (tests/audit/test_audit_event.py).
    """
    if at.tzinfo is not UTC:
        return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 - the fastest here
        at.year,
        at.month,
        at.day,
        at.hour,
        at.minute,
        at.second,
        at.microsecond,
    )


@dataclass(frozen=True, slots=True)
class CallMeta:
    """Facts about the caller that the transport knows."""

    peer: str = ""
    identity: str = ""  # authenticated identity (TLS), when there is one
    trace_id: str = ""  # from a W3C traceparent header
    request_id: str = ""  # the caller's X-Request-ID / x-request-id, when well-formed


def recorded_request_id(value: object) -> str:
    """A caller's request id as the trail records it: 1 to 128 printable ASCII
    characters, else nothing (like a malformed traceparent, it is ignored)."""
    if isinstance(value, str) and 0 < len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return ""


def build_event(
    decision_id: str,
    at: datetime,
    request: AuthzRequest,
    result: Result,
    meta: CallMeta,
    *,
    cached: bool,
    latency_s: float,
    audit_note: str = "",
    redactor: Redactor | None = None,
) -> dict[str, Any]:
    """The decision event, redacted when a redactor is given (the server always gives one)."""
    event: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": "decision",
        "id": decision_id,
        "time": timestamp(at),
        "caller": {"peer": meta.peer, "identity": meta.identity},
        "principal": request.principal.to_json(),
        "action": request.action.to_json(),
        "resource": request.resource.to_json(),
        "context": dict(request.context),
        "entities": [e.to_json() for e in request.entities],
        "decision": result.decision.value,
        "reason": result.summary(),
        "reasons": [{"policy": r.id, "source": r.source} for r in result.reasons],
        "errors": [{"policy": e.policy_id, "message": e.message} for e in result.errors],
        "obligations": result.obligations.to_json(),
        "policy_revision": result.revision,
        "policy_errors": result.policy_errors.value,
        "cached": cached,
        "latency_us": round(latency_s * 1e6),
    }
    _call_fields(event, meta, audit_note)
    if redactor is not None:
        event = redactor.apply(event)
    ctx = event.get("context", {})
    for name in ("workflow_id", "run_id", "step_id"):
        value = ctx.get(name, "")
        event[name] = value if isinstance(value, str) else ""
    return event


# The fields of a decision event that differ between calls answered the same way.
PER_CALL = frozenset({"id", "time", "caller", "cached", "latency_us", "trace_id", "request_id"})


def template(event: Mapping[str, Any]) -> dict[str, Any]:
    """A (redacted) decision event without its per-call fields, to stamp cache hits from."""
    return {k: v for k, v in event.items() if k not in PER_CALL}


def stamp(
    template: Mapping[str, Any],
    decision_id: str,
    at: datetime,
    meta: CallMeta,
    *,
    latency_s: float,
    now: Any = None,
) -> dict[str, Any]:
    """A cache hit's event: the template of the decision it repeats plus this call's facts.

    Equal to what `build_event` would build for the hit (tests/audit/test_audit_event.py),
    without walking the request again: hits are the hot path. `now`, when
    given, replaces `context.now` (a server-side `now` the policies do not read).
    Only valid when no redaction path names a per-call field, or `context`
    when `now` is replaced (Redactor.touches).
    """
    event = dict(template)
    event["id"] = decision_id
    event["time"] = timestamp(at)
    event["caller"] = {"peer": meta.peer, "identity": meta.identity}
    event["cached"] = True
    event["latency_us"] = round(latency_s * 1e6)
    if meta.trace_id:
        event["trace_id"] = meta.trace_id
    if meta.request_id:
        event["request_id"] = meta.request_id
    if now is not None:
        event["context"] = {**event["context"], "now": now}
    return event


def decision_event(
    decision_id: str,
    at: datetime,
    request: AuthzRequest,
    result: Result,
    meta: CallMeta,
    *,
    cached: bool,
    latency_s: float,
    stamp_from: Mapping[str, Any] | None = None,
    now: Any = None,
    stamp_now: bool = True,
    with_template: bool = False,
    audit_note: str = "",
    redactor: Redactor | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A decision's event, and its template when `with_template` (a miss that fills the cache).

    A hit (`stamp_from`, the entry's template) is stamped with this call's
    facts when redaction cannot reach them (no redaction path names a per-call
    field, nor `context` when `now` replaces the entry's, `stamp_now`); else,
    like a miss, its event is built anew from the request and the result.
    """
    if (
        stamp_from is not None
        and (now is None or stamp_now)
        and (redactor is None or redactor.stampable(meta.request_id))
    ):
        return stamp(stamp_from, decision_id, at, meta, latency_s=latency_s, now=now), None
    event = build_event(
        decision_id,
        at,
        request,
        result,
        meta,
        cached=cached,
        latency_s=latency_s,
        audit_note=audit_note,
        redactor=redactor,
    )
    return event, template(event) if with_template else None


def build_outcome_event(
    outcome_id: str,
    at: datetime,
    outcome: Outcome,
    meta: CallMeta,
    *,
    facts: DecisionFacts | None,
    violation: str,
    redactor: Redactor | None = None,
    audit_note: str = "",
    stamped: str = "",
) -> dict[str, Any]:
    """The outcome event: what a decided step did, beside its decision in the trail.

    `stamped`: `timestamp(at)` when the caller has it already (a batch's outcomes,
    received together, share one time).

    What the decision said about the step (principal, action, resource,
    workflow/run/step, revision) is copied from the decision's own (redacted)
    event, so `audit query` finds outcomes by the same filters. `decided` is the
    decision it was matched with (ALLOW, DENY), UNKNOWN when none was found
    (named apart from a decision event's `decision`, so that a reader keying on
    that field never takes an outcome for a decision). `violation`
    is present only when the outcome is one; `report_id` only when the client sent
    one. Redaction: the configured paths
    (e.g. `effect.identity.id`, `effect.credential.id`) and, in `effect`, any
    value that looks like a secret (rule 2 of redact.py).
    """
    if facts is not None:
        event: dict[str, Any] = {  # one display: no insert per field
            "schema": SCHEMA_VERSION,
            "kind": "outcome",
            "id": outcome_id,
            "time": stamped or timestamp(at),
            "caller": {"peer": meta.peer, "identity": meta.identity},
            "decision_id": outcome.decision_id,
            "decided": facts.decision,
            "status": outcome.status,
            "attempt": outcome.attempt,
            "workflow_id": facts.workflow_id,
            "run_id": facts.run_id,
            "step_id": facts.step_id,
            "principal": facts.principal,
            "action": facts.action,
            "resource": facts.resource,
            "policy_revision": facts.policy_revision,
        }
        if facts.principal is None:
            del event["principal"]
        if facts.action is None:
            del event["action"]
        if facts.resource is None:
            del event["resource"]
    else:
        event = {
            "schema": SCHEMA_VERSION,
            "kind": "outcome",
            "id": outcome_id,
            "time": stamped or timestamp(at),
            "caller": {"peer": meta.peer, "identity": meta.identity},
            "decision_id": outcome.decision_id,
            "decided": "UNKNOWN",
            "status": outcome.status,
            "attempt": outcome.attempt,
            "workflow_id": "",
            "run_id": "",
            "step_id": "",
        }
    if outcome.error_class:
        event["error_class"] = outcome.error_class
    if outcome.report_id:
        event["report_id"] = outcome.report_id
    if outcome.started_at is not None:
        event["started_at"] = timestamp(outcome.started_at)
    if outcome.finished_at is not None:
        event["finished_at"] = timestamp(outcome.finished_at)
    effect = outcome.effect
    if effect is not None:
        value = effect.to_json()
        # Rule 2 on the effect: its strings checked where they are (the effect's own
        # fields, those `to_json` copied), and the value walked only when one may be a
        # secret, or a credential holds its times formatted (`by_value` then reads those).
        if redactor is not None and (
            effect.credential is not None
            or not redactor.clean_texts(
                (
                    effect.target_system,
                    effect.account,
                    *effect.entitlements_added,
                    *effect.entitlements_removed,
                    *(effect.identity or ()),
                )
            )
        ):
            value = redactor.by_value(value)
        event["effect"] = value
    if violation:
        event["violation"] = violation
    if meta.trace_id or meta.request_id or audit_note:
        _call_fields(event, meta, audit_note)
    if redactor is not None and redactor.reaches(event):  # else `apply` would only copy it
        event = redactor.apply(event)
    return event


def build_plan_event(
    plan_id: str,
    at: datetime,
    plan: Plan,
    verdicts: list[StepVerdict],
    meta: CallMeta,
    *,
    revision: str,
    policy_errors: str,
    redactor: Redactor | None = None,
    audit_note: str = "",
) -> dict[str, Any]:
    """The plan event: what a run's steps were predicted, before the run (AuthorizePlan).

    Linked to the run's later decisions by `run_id` (and `workflow_id`), which
    the steps send in their context; each step by its `step_id`. No context
    is recorded (the decisions record theirs): the step's principal, action,
    resource, which fields were unknown, the verdict and the policies that
    settle it or are still open. Redaction: the configured paths of a decision
    (`principal.id`, ...) apply to each step's own fields.
    """
    steps = []
    for step, verdict in zip(plan.steps, verdicts, strict=True):
        entry: dict[str, Any] = {
            "step_id": step.step_id,
            "principal": step.request.principal.to_json(),
            "action": step.request.action.to_json(),
            "resource": step.request.resource.to_json(),
            "unknown": list(step.unknown),
            "verdict": verdict.verdict.value,
            "policies": [r.id for r in verdict.determining],
            "residuals": [r.id for r in verdict.residuals],
            "reason": verdict.reason,
        }
        if redactor is not None:
            entry = redactor.apply(entry)
        steps.append(entry)
    counts = {v: 0 for v in ("ALLOW", "DENY", "DEPENDS")}
    for verdict in verdicts:
        counts[verdict.verdict.value] += 1
    event: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": "plan",
        "id": plan_id,
        "time": timestamp(at),
        "caller": {"peer": meta.peer, "identity": meta.identity},
        "workflow_id": plan.workflow_id,
        "run_id": plan.run_id,
        "policy_revision": revision,
        "policy_errors": policy_errors,
        "verdicts": counts,
        "steps": steps,
    }
    _call_fields(event, meta, audit_note)
    if redactor is not None:
        event = redactor.apply(event)
    return event


def system_event(kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
    """A record that is not a decision: segment header, recovery, outage, shutdown.

    It gets an id of its own (a UUIDv7, like decision ids) so every line has one.
    """
    return {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "id": _SYSTEM_IDS.next(),
        "time": timestamp(at),
        **fields,
    }


def _call_fields(event: dict[str, Any], meta: CallMeta, audit_note: str) -> None:
    """What the call brought (trace and request ids) and the process's note, when present."""
    if meta.trace_id:
        event["trace_id"] = meta.trace_id
    if meta.request_id:
        event["request_id"] = meta.request_id
    if audit_note:
        event["note"] = audit_note
