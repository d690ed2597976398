"""An outcome reported as JSON (AuthZEN's `POST /stepguard/v1/outcome`, the client).

The JSON half of core/outcome.py: it reads the JSON body into the same plain
values `outcome_from_proto` reads a RecordOutcomeRequest into, and hands them
to the same checks (`check_outcome`), so a field is refused with the same
message whichever way it came. Pure: anything malformed is an `InvalidRequest`
naming the field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sidecar.core.errors import InvalidRequest
from sidecar.core.outcome import Outcome, check_outcome, json_str
from sidecar.core.validate import member

_TOP = frozenset(
    {
        "decision_id",
        "status",
        "error_class",
        "effect",
        "started_at",
        "finished_at",
        "attempt",
        "report_id",
    }
)
_EFFECT = frozenset(
    {
        "identity",
        "target_system",
        "entitlements_added",
        "entitlements_removed",
        "credential",
        "account",
    }
)
_CREDENTIAL = frozenset({"id", "change", "issued_at", "expires_at"})


def outcome_from_json(obj: Any, prefix: str = "") -> Outcome:
    """An outcome as JSON (the proto's field names; enums as lower-case words,
    e.g. `"status": "timed_out"`; times as RFC 3339 strings) as the model."""
    top = _object(obj, prefix.rstrip(".") or "request", _TOP, prefix)
    effect: dict[str, Any] | None = None
    if top.get("effect") is not None:
        raw = _object(top["effect"], f"{prefix}effect", _EFFECT, f"{prefix}effect.")
        effect = {k: v for k, v in raw.items() if k != "credential"}
        if raw.get("credential") is not None:
            where = f"{prefix}effect.credential"
            cred = dict(_object(raw["credential"], where, _CREDENTIAL, where + "."))
            for name in ("issued_at", "expires_at"):
                if cred.get(name) is not None:
                    cred[name] = _json_time(cred[name], f"{where}.{name}")
            effect["credential"] = cred
        for name in ("entitlements_added", "entitlements_removed"):
            value = effect.get(name)
            if value is None:
                effect[name] = []
            elif not isinstance(value, list):
                raise InvalidRequest(f"{prefix}effect.{name}", "must be a list of strings")
        account = effect.get("account")
        effect["account"] = "" if account is None else account
        identity = effect.get("identity")
        if identity is not None:
            effect["identity"] = dict(
                _object(
                    identity,
                    f"{prefix}effect.identity",
                    {"type", "id"},
                    f"{prefix}effect.identity.",
                )
            )
    times = {
        name: _json_time(top[name], prefix + name)
        for name in ("started_at", "finished_at")
        if top.get(name) is not None
    }
    attempt = top.get("attempt", 0)
    if attempt is None:
        attempt = 0
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise InvalidRequest(f"{prefix}attempt", "must be an integer")
    return check_outcome(
        prefix,
        decision_id=json_str(top.get("decision_id", ""), f"{prefix}decision_id"),
        status=top.get("status"),
        error_class=json_str(top.get("error_class") or "", f"{prefix}error_class"),
        effect=effect,
        attempt=attempt,
        report_id=json_str(top.get("report_id") or "", f"{prefix}report_id"),
        **times,
    )


def _object(
    obj: Any, field: str, allowed: frozenset[str] | set[str], prefix: str
) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidRequest(field, "must be a JSON object")
    for key in obj:
        if key not in allowed:
            raise InvalidRequest(
                member(prefix.rstrip("."), str(key)),
                f"unknown field; known: {', '.join(sorted(allowed))}",
            )
    return obj


def _json_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidRequest(field, "must be an RFC 3339 time string")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(field, f"{value[:64]!r} is not an RFC 3339 time") from exc
    if at.tzinfo is None:
        raise InvalidRequest(field, "needs a time zone offset (Z or +hh:mm)")
    try:
        return at.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise InvalidRequest(field, f"{value[:64]!r} is out of range") from exc
