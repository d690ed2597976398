"""The audit event: what was asked, by whom, what was decided and why.

Schema version 1 (documented in docs/audit.md). The event id is the decision
id. Chain fields are added by the sink that orders events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar.model import AuthzRequest, Result

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class CallMeta:
    """Facts about the caller that the transport knows."""

    peer: str = ""
    identity: str = ""  # authenticated identity (TLS), when there is one
    trace_id: str = ""  # from a W3C traceparent header


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
) -> dict[str, Any]:
    ctx = dict(request.context)
    event: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "id": decision_id,
        "time": at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "caller": {"peer": meta.peer, "identity": meta.identity},
        "principal": request.principal.to_json(),
        "action": request.action.to_json(),
        "resource": request.resource.to_json(),
        "context": ctx,
        "entities": [e.to_json() for e in request.entities],
        "decision": result.decision.value,
        "reasons": [{"policy": r.id, "source": r.source} for r in result.reasons],
        "errors": [{"policy": e.policy_id, "message": e.message} for e in result.errors],
        "obligations": {},
        "policy_revision": result.revision,
        "cached": cached,
        "latency_us": round(latency_s * 1e6),
        "workflow_id": ctx.get("workflow_id", ""),
        "run_id": ctx.get("run_id", ""),
        "step_id": ctx.get("step_id", ""),
    }
    ttl = result.obligations.max_credential_ttl
    if ttl is not None:
        event["obligations"]["max_credential_ttl_s"] = ttl.total_seconds()
    if meta.trace_id:
        event["trace_id"] = meta.trace_id
    if audit_note:
        event["note"] = audit_note
    return event
