"""Outcome events for the evidence tests, in the shape of the `outcome` audit record.

The one place these are written by hand: the `outcomes` branch adds the real
builder (`sidecar.audit.event.build_outcome_event`, schema in
sidecar/audit/event.schema.json `$defs.outcome`). When it lands, this helper
calls it instead and the tests do not change. Field names, values and
optional parts follow that schema: `decided` ALLOW/DENY/UNKNOWN, `status`
succeeded/failed/skipped/timed_out, `effect` with only the fields reported.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sidecar.audit.event import SCHEMA_VERSION, timestamp


def effect(
    identity: str = "",
    target: str = "",
    *,
    added: tuple[str, ...] = (),
    removed: tuple[str, ...] = (),
    credential: str = "",
    change: str = "",
    issued_at: datetime | None = None,
    expires_at: datetime | None = None,
    account: str = "",
) -> dict[str, Any]:
    """An effect as the outcome event records it (`identity` is a bare User id)."""
    out: dict[str, Any] = {}
    if identity:
        out["identity"] = {"type": "User", "id": identity}
    if target:
        out["target_system"] = target
    if added:
        out["entitlements_added"] = list(added)
    if removed:
        out["entitlements_removed"] = list(removed)
    if credential:
        cred: dict[str, Any] = {"id": credential, "change": change}
        if issued_at is not None:
            cred["issued_at"] = timestamp(issued_at)
        if expires_at is not None:
            cred["expires_at"] = timestamp(expires_at)
        out["credential"] = cred
    if account:
        out["account"] = account
    return out


def outcome_event(
    decision: Mapping[str, Any] | None,
    at: datetime,
    status: str,
    *,
    decision_id: str = "",
    effect: Mapping[str, Any] | None = None,
    error_class: str = "",
    attempt: int = 1,
    violation: str = "",
) -> dict[str, Any]:
    """The outcome of the step `decision` (a decision event; None: a decision never seen)."""
    event: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": "outcome",
        "id": str(uuid.uuid4()),
        "time": timestamp(at),
        "caller": {"peer": "ipv4:127.0.0.1:5000", "identity": ""},
        "decision_id": decision["id"] if decision is not None else decision_id,
        "decided": decision["decision"] if decision is not None else "UNKNOWN",
        "status": status,
        "attempt": attempt,
        "workflow_id": decision["workflow_id"] if decision is not None else "",
        "run_id": decision["run_id"] if decision is not None else "",
        "step_id": decision["step_id"] if decision is not None else "",
    }
    if decision is not None:
        for name in ("principal", "action", "resource", "policy_revision"):
            event[name] = decision[name]
    if error_class:
        event["error_class"] = error_class
    event["finished_at"] = timestamp(at)
    if effect:
        event["effect"] = dict(effect)
    if violation:
        event["violation"] = violation
    return event
