"""Outcome events for the evidence tests, built as the sidecar builds them.

The outcome is checked by `check_outcome` (the checks both transports share,
sidecar/core/outcome.py), judged by `judge` against its decision as the
sidecar reads a decision event back from its trail (`facts_of`), and built by
the sidecar's own `build_outcome_event`: the events are exactly what a
sidecar's RecordOutcome would write for that report, so an outcome the
sidecar would refuse (a failed step without its error class, an issued
credential without its times) cannot be written here either.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sidecar.core.event import CallMeta, build_outcome_event
from sidecar.core.ids import DecisionIds
from sidecar.core.outcome import check_outcome, judge
from sidecar.decision.outcomes import facts_of

_IDS = DecisionIds()
_CALLER = CallMeta(peer="ipv4:127.0.0.1:5000")


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
    """An effect as an orchestrator reports it (`identity` is a bare User id)."""
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
            cred["issued_at"] = issued_at
        if expires_at is not None:
            cred["expires_at"] = expires_at
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
    """The outcome event of the step `decision` (a decision event; None: a decision
    never seen, named by `decision_id`), reported and recorded at `at`.

    `violation` is what the caller expects the sidecar to judge (checked: the
    event carries the sidecar's own judgement)."""
    outcome = check_outcome(
        "",
        decision_id=decision["id"] if decision is not None else decision_id,
        status=status,
        error_class=error_class,
        effect=effect,
        attempt=attempt,
        finished_at=at,
    )
    facts = facts_of(decision) if decision is not None else None
    judged = judge(outcome, facts, at)
    assert judged == violation, f"the sidecar judges this outcome {judged!r}, not {violation!r}"
    return build_outcome_event(_IDS.next(), at, outcome, _CALLER, facts=facts, violation=judged)
