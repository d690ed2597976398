"""What a guarded task did, reported after it ends: the orchestrator-independent part.

Once the gate has admitted a task attempt (an ALLOW), the integration opens an
`Attempt` for it; when the body returns or raises, the integration queues one
outcome for the decision that attempt got (`Gate.submit`; the client's
reporter sends it in a batch): `succeeded`, `failed` with the exception's
class (`error_class_of`), `skipped` or `timed_out`, with the attempt number
and the effect the step declared. A denied attempt opens none: its body never
ran, so nothing claims it did.

A step declares its effect from inside the task with `record_effect`, the same
call for Airflow, Prefect and Temporal:

    record_effect(identity="bob@example.org", entitlements_added=["engineering"])

Reporting never fails the task: `record_effect` outside a guarded task, or
with a value the sidecar would refuse, logs a warning and returns False; an
outcome that cannot be recorded (sidecar down, too slow; after the reporter's
retries) is a warning in the task's log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sidecar.client import StepDecision, error_class_of
from sidecar.core.outcome import ACCOUNT_CHANGES
from sidecar.core.outcomejson import outcome_from_json
from sidecar.integrations.steps import EntityTypes, RunFacts, Step

# At most this long (and never longer than the decision timeout) for one
# outcome: the task has already done its work, it must not wait on evidence.
OUTCOME_TIMEOUT_S = 1.0
SUCCEEDED, FAILED, SKIPPED, TIMED_OUT = "succeeded", "failed", "skipped", "timed_out"
# Exception class names (any class in the exception's MRO) that mean the
# orchestrator stopped the task for taking too long.
TIMEOUT_CLASSES = frozenset({"TimeoutError", "AirflowTaskTimeout"})

_ANY_ID = "00000000-0000-0000-0000-000000000000"

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    """One admitted task attempt: its decision, ids, start time and declared effect."""

    decision: StepDecision
    facts: RunFacts
    step: Step
    started_at: datetime
    types: EntityTypes = field(default_factory=EntityTypes)
    effect: dict[str, Any] = field(default_factory=dict)
    reported: bool = False

    def outcome(self, status: str, error_class: str = "") -> dict[str, Any]:
        """The `record_outcome` arguments for this attempt ending with `status` (pure)."""
        out: dict[str, Any] = {
            "decision_id": self.decision.decision_id,
            "status": status,
            "attempt": self.facts.attempt,
            "started_at": self.started_at,
        }
        if error_class:
            out["error_class"] = error_class
        if self.effect:
            out["effect"] = {"target_system": self.step.target} | self.effect
        return out


_current: ContextVar[Attempt | None] = ContextVar("stepguard_attempt", default=None)


def begin(
    decision: StepDecision,
    facts: RunFacts,
    step: Step,
    *,
    types: EntityTypes | None = None,
    now: datetime | None = None,
) -> tuple[Attempt, Token[Attempt | None]]:
    """Open the attempt an ALLOW admitted; `record_effect` in the body adds to it."""
    attempt = Attempt(decision, facts, step, now or datetime.now(UTC), types or EntityTypes())
    return attempt, _current.set(attempt)


def end(token: Token[Attempt | None] | None = None) -> None:
    """Close the current attempt (reset to before `begin`, or to none)."""
    if token is not None:
        try:
            _current.reset(token)
            return
        except ValueError:  # a token from another context: clear instead
            pass
    _current.set(None)


def current_attempt() -> Attempt | None:
    return _current.get()


def status_of(exc: BaseException | None) -> tuple[str, str]:
    """(status, error_class) for an attempt that ended by raising `exc` (None: returned)."""
    if exc is None:
        return SUCCEEDED, ""
    names = {kind.__name__ for kind in type(exc).__mro__}
    if "AirflowSkipException" in names:
        return SKIPPED, ""
    if names & TIMEOUT_CLASSES:
        return TIMED_OUT, error_class_of(exc)
    return FAILED, error_class_of(exc)


def record_effect(
    *,
    identity: str | Mapping[str, str] | None = None,
    target: str | None = None,
    entitlements_added: Iterable[str] = (),
    entitlements_removed: Iterable[str] = (),
    credential_issued: str | None = None,
    credential_revoked: str | None = None,
    issued_at: datetime | str | None = None,
    expires_at: datetime | str | None = None,
    account: str | None = None,
) -> bool:
    """Declare what this guarded task changed; sent with its outcome when it ends.

    `identity`: the user affected (an id, typed as the policy's user type, or
    `{"type": ..., "id": ...}`); `target`: the system changed (default: the
    step's target); `entitlements_added` / `entitlements_removed`; a credential
    by id, `credential_issued` (with `issued_at` / `expires_at`) or
    `credential_revoked`; `account`: created, disabled or deleted. Several
    calls add up: entitlements accumulate, a later value replaces an earlier
    one. Returns False, with a warning, outside a guarded task or when a value
    would be refused: declaring evidence never fails the task.
    """
    attempt = _current.get()
    if attempt is None:
        log.warning(
            "stepguard: record_effect() called outside a guarded task attempt; effect not recorded"
        )
        return False
    try:
        merged = _merge(
            attempt.effect,
            _declared(
                attempt.types,
                identity=identity,
                target=target,
                entitlements_added=entitlements_added,
                entitlements_removed=entitlements_removed,
                credential_issued=credential_issued,
                credential_revoked=credential_revoked,
                issued_at=issued_at,
                expires_at=expires_at,
                account=account,
            ),
        )
        # The sidecar's own rules for an effect, checked now so that the outcome
        # is not refused later (the decision id is checked when it is sent).
        outcome_from_json(
            _jsonable({"decision_id": _ANY_ID, "status": SUCCEEDED, "effect": merged})
        )
    except Exception as exc:  # noqa: BLE001 - never fail the task over its evidence
        log.warning("stepguard: effect not recorded, it would be refused: %s", exc)
        return False
    attempt.effect = merged
    return True


def _declared(types: EntityTypes, **given: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    identity = given["identity"]
    if isinstance(identity, str):
        out["identity"] = {"type": types.user, "id": identity}
    elif identity is not None:
        out["identity"] = dict(identity)
    if given["target"] is not None:
        out["target_system"] = given["target"]
    for name in ("entitlements_added", "entitlements_removed"):
        values = given[name]
        if isinstance(values, str):
            raise ValueError(f"{name} must be a list of entitlements, not one string")
        if values := list(values):
            out[name] = values
    issued, revoked = given["credential_issued"], given["credential_revoked"]
    if issued is not None and revoked is not None:
        raise ValueError("a step declares one credential: issued or revoked, not both")
    if issued is not None or revoked is not None:
        credential: dict[str, Any] = {
            "id": issued if issued is not None else revoked,
            "change": "issued" if issued is not None else "revoked",
        }
        for name in ("issued_at", "expires_at"):
            if given[name] is not None:
                credential[name] = given[name]
        out["credential"] = credential
    elif given["issued_at"] is not None or given["expires_at"] is not None:
        raise ValueError("issued_at / expires_at belong to a credential: give credential_issued")
    if given["account"] is not None:
        if given["account"] not in ACCOUNT_CHANGES:
            raise ValueError(
                f"account must be one of {', '.join(ACCOUNT_CHANGES)}, got {given['account']!r}"
            )
        out["account"] = given["account"]
    return out


def _merge(before: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(before)
    for key, value in new.items():
        if key.startswith("entitlements_"):
            out[key] = list(dict.fromkeys([*out.get(key, []), *value]))
        else:
            out[key] = value
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
