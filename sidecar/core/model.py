"""Plain data that flows through the decision path: no protobuf, no I/O.

Cedar values are carried in Cedar's JSON form (`{"__entity": ...}`,
`{"__extn": ...}`), which is what cedarpy parses with the schema.

Time lives here too, as plain functions on milliseconds: the request's time
bound as Cedar reads it (`parse_cedar_datetime`) and `context.now` (the
clock rounded to its granularity, never across the bound: `effective_now_ms`).
Validation resolves both once, into the `AuthzRequest` the rest of the
decision path reads; the decision cache and the AuthZEN mapping read the same
functions instead of keeping their own.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# A Cedar value in Cedar's JSON entity/context format.
CedarJson = Any


@dataclass(frozen=True, slots=True)
class EntityUid:
    type: str
    id: str

    def __str__(self) -> str:
        escaped = self.id.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.type}::"{escaped}"'

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "id": self.id}


@dataclass(frozen=True, slots=True)
class EntityData:
    """Attributes and parents a request supplies for one entity, for that call only."""

    uid: EntityUid
    attrs: Mapping[str, CedarJson] = field(default_factory=dict)
    parents: tuple[EntityUid, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid.to_json(),
            "attrs": dict(self.attrs),
            "parents": [p.to_json() for p in self.parents],
        }


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """One Cedar request, ready for the engine.

    `denial` is set by validation for a request that is well formed but must be
    denied without asking Cedar (a resource the entity store lacks): the engine
    answers DENY with it as the diagnostic, and the decision is audited as usual.
    """

    principal: EntityUid
    action: EntityUid
    resource: EntityUid
    context: Mapping[str, CedarJson]
    entities: tuple[EntityData, ...] = ()
    denial: str = ""
    # The request's own time bound (`context.time_bound`) in ms, as validation read it:
    # `context.now` was resolved against it, and a cached ALLOW is served only inside it.
    not_before_ms: int | None = None
    not_after_ms: int | None = None


class Decision(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class PolicyErrors(enum.Enum):
    """What a policy that errors does to a decision (docs/api.md, "Policies that error").

    Cedar skips a policy whose evaluation errors, so a `forbid` that cannot be
    evaluated lets a permit through. stepguard's default refuses that: an
    ALLOW stands only when no evaluated policy errored. `CEDAR` keeps Cedar's
    own semantics (the Cedar conformance corpus runs with it).
    """

    DENY = "deny"  # any error in a policy that could apply: DENY (the default)
    CEDAR = "cedar"  # Cedar's semantics: the erroring policy is skipped

    @classmethod
    def parse(cls, text: str) -> PolicyErrors:
        """From a setting or flag (`deny` or `cedar`); ValueError names the choices."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"policy_errors must be one of {choices}, got {text!r}") from None


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """A policy that determined a decision."""

    id: str
    annotations: Mapping[str, str]
    source: str  # file:line


@dataclass(frozen=True, slots=True)
class EvalError:
    policy_id: str  # "" when not tied to one policy
    message: str


@dataclass(frozen=True, slots=True)
class Obligations:
    """What an ALLOW binds the step to: the smallest of each among the determining
    permits (docs/api.md). `revoke_within`: the access the step grants must be removed
    within this long of its end (docs/evidence.md)."""

    max_credential_ttl: timedelta | None = None
    revoke_within: timedelta | None = None

    def to_json(self) -> dict[str, float]:
        """`{"max_credential_ttl_s": 900.0, "revoke_within_s": 86400.0}`, set ones only:
        the audit event's and `check --json`'s `obligations`."""
        out: dict[str, float] = {}
        if self.max_credential_ttl is not None:
            out["max_credential_ttl_s"] = self.max_credential_ttl.total_seconds()
        if self.revoke_within is not None:
            out["revoke_within_s"] = self.revoke_within.total_seconds()
        return out


@dataclass(frozen=True, slots=True)
class Result:
    """What the engine decided, and why. `revision` names the bundle."""

    decision: Decision
    reasons: tuple[PolicyRef, ...]
    errors: tuple[EvalError, ...]
    obligations: Obligations
    revision: str
    # The semantics this decision was made under (fixed per server process).
    policy_errors: PolicyErrors = PolicyErrors.DENY

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW

    def summary(self) -> str:
        """One line for humans: why this decision."""
        ids = ", ".join(r.id for r in self.reasons)
        if self.allowed:
            return f"permitted by {ids}"
        if self.reasons:
            return f"forbidden by {ids}"
        if self.errors:
            return "denied: " + "; ".join(
                f"policy {e.policy_id} errored: {e.message}" if e.policy_id else e.message
                for e in self.errors
            )
        return "denied: no policy permits this request"


def result_json(result: Result) -> dict[str, Any]:
    """A Result as JSON: `stepguard check --json`, and each case's `actual` in `test --format json`.

    Here, beside the model, so both commands (and the test report) share one
    shape without the authoring tools importing the command line.
    """
    return {
        "decision": result.decision.value,
        "reason": result.summary(),
        "determining_policies": [
            {"id": r.id, "source": r.source, "annotations": dict(r.annotations)}
            for r in result.reasons
        ],
        "errors": [{"policy": e.policy_id, "message": e.message} for e in result.errors],
        "obligations": result.obligations.to_json(),
        "policy_revision": result.revision,
        "policy_errors": result.policy_errors.value,
    }


def datetime_text(value: datetime) -> str:
    """`YYYY-MM-DDThh:mm:ss.sssZ` in UTC, the form Cedar's `datetime` parses.

    Formatted by hand: strftime is slower, and pads no year before 1000.
    """
    u = value.astimezone(UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond // 1000:03d}Z"
    )


# --- time: Cedar datetimes in milliseconds, and `context.now` --------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(value: datetime) -> int:
    """Milliseconds since the epoch, rounded down (Cedar's datetime resolution)."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return EPOCH + ms * _MS


def effective_now_ms(
    real_ms: int, granularity_ms: int, not_before_ms: int | None, not_after_ms: int | None
) -> int:
    """`context.now` for a request: the clock rounded down to the granularity, but on
    the same side of the request's time bound as the clock itself. Never later
    than the clock; idempotent."""
    now = real_ms - real_ms % granularity_ms if granularity_ms > 1 else real_ms
    if not_before_ms is not None and not_before_ms <= real_ms:
        now = max(now, not_before_ms)
    if not_after_ms is not None and not_after_ms < real_ms:
        now = max(now, not_after_ms + 1)
    return now


def cedar_datetime(ms: int) -> dict[str, Any]:
    """A Cedar `datetime` value for an instant (the form validation writes `context.now` in)."""
    return {"__extn": {"fn": "datetime", "arg": datetime_text(from_ms(ms))}}


_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{3}))?(?:(Z)|([+-])(\d{2})(\d{2})))?"
)
_DURATION = re.compile(r"(-)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")
_DURATION_MS = (86_400_000, 3_600_000, 60_000, 1000, 1)
_I64 = 2**63


def datetime_text_ms(text: str) -> int | None:
    """Milliseconds of a string in Cedar's `datetime` grammar, else None.

    Exactly the five forms Cedar accepts: `YYYY-MM-DD`, then optionally
    `Thh:mm:ss`, `.SSS` and `Z` or `+hhmm`/`-hhmm` (offset under 24 hours).
    """
    m = _DATETIME.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, milli, _zulu, sign, oh, om = m.groups()
    if hour is not None and not (int(hour) < 24 and int(minute) < 60 and int(second) < 60):
        return None
    if sign is not None and not (int(oh) < 24 and int(om) < 60):
        return None
    try:
        date = datetime(int(year), int(month), int(day), tzinfo=UTC)
    except ValueError:
        return None
    ms = to_ms(date)
    if hour is not None:
        ms += ((int(hour) * 60 + int(minute)) * 60 + int(second)) * 1000 + int(milli or 0)
    if sign is not None:
        offset = (int(oh) * 60 + int(om)) * 60_000
        ms += -offset if sign == "+" else offset
    return ms


def duration_text_ms(text: str) -> int | None:
    """Milliseconds of a string in Cedar's `duration` grammar (`-1d2h3m4s5ms`), else None."""
    m = _DURATION.fullmatch(text)
    if m is None or not any(m.groups()[1:]):
        return None
    ms = sum(int(n) * unit for n, unit in zip(m.groups()[1:], _DURATION_MS, strict=True) if n)
    ms = -ms if m.group(1) else ms
    return ms if -_I64 <= ms < _I64 else None


def _extension(value: Any, fn: str) -> str | list[Any] | None:
    """The argument(s) of a call to extension `fn`, written either way Cedar's JSON
    allows (`{"__extn": {...}}`, or `{"fn": ...}` where the schema expects it), with
    exactly one of `arg` (a string) and `args` (a list); else None."""
    if isinstance(value, Mapping) and set(value) == {"__extn"}:
        value = value["__extn"]
    if not isinstance(value, Mapping) or value.get("fn") != fn or len(value) != 2:
        return None
    if isinstance(value.get("arg"), str):
        return str(value["arg"])
    args = value.get("args")
    return list(args) if isinstance(args, list) else None


def parse_cedar_datetime(value: Any) -> int | None:
    """Milliseconds of the instant Cedar would read from a `datetime` value, else None.

    Every form Cedar accepts where the schema expects a datetime: a string in
    Cedar's grammar; `datetime("...")` as `{"__extn": {"fn": "datetime", "arg"
    (or "args"): ...}}` or without `__extn`; and `offset(datetime, duration)`.
    Anything else, including forms Cedar reads ambiguously (both `arg` and
    `args`, extra keys), is None: callers refuse it or treat it as no bound.
    """
    if isinstance(value, str):
        return datetime_text_ms(value)
    arg = _extension(value, "datetime")
    if isinstance(arg, list):
        arg = arg[0] if len(arg) == 1 and isinstance(arg[0], str) else None
    if isinstance(arg, str):
        return datetime_text_ms(arg)
    args = _extension(value, "offset")
    if not isinstance(args, list) or len(args) != 2:
        return None
    start = parse_cedar_datetime(args[0]) if not isinstance(args[0], str) else None
    span = _extension(args[1], "duration")
    if isinstance(span, list):
        span = span[0] if len(span) == 1 and isinstance(span[0], str) else None
    delta = duration_text_ms(span) if isinstance(span, str) else None
    if start is None or delta is None or not -_I64 <= start + delta < _I64:
        return None
    return start + delta


def time_bound_ms(context: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The request's own time bound (`context.time_bound`), in milliseconds."""
    bound = context.get("time_bound")
    if not isinstance(bound, Mapping):
        return None, None
    return parse_cedar_datetime(bound.get("not_before")), parse_cedar_datetime(
        bound.get("not_after")
    )
