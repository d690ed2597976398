"""An outcome: what a decided step did, as the orchestrator reports it (pure).

One model for both transports: `outcome_from_proto` (gRPC RecordOutcome) and
`outcome_from_json` (AuthZEN's `POST /stepguard/v1/outcome`, in
core/outcomejson.py) read their input into the same plain values and check
them in one place (`check_outcome`, here), so a field is refused with the
same message whichever way it came. Anything
malformed is an `InvalidRequest` naming the field path; nothing here looks up
the decision or writes anything (sidecar/decision/outcomes.py does).

Over 500 lines: a protobuf message is read two ways that must agree (straight,
`_accepted`, for the usual report, and the long way, which names the field it
refuses), and both belong beside the checks they must agree with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.errors import InvalidRequest
from sidecar.core.validate import to_ms

STATUSES = ("succeeded", "failed", "skipped", "timed_out")
# A step with one of these statuses ran: only those can be violations.
RAN = frozenset({"succeeded", "failed", "timed_out"})
_WITH_ERROR_CLASS = frozenset({"failed", "timed_out"})
ACCOUNT_CHANGES = ("created", "disabled", "deleted")
CREDENTIAL_CHANGES = ("issued", "revoked")
MAX_ENTITLEMENTS = 64
MAX_TEXT = 256  # target system, entitlement, credential id
MAX_ENTITY_ID = 1024
_DECISION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ERROR_CLASS = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
# A client-chosen report id (RecordOutcomeRequest.report_id): a UUID, as the clients send.
_REPORT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ENTITY_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*")
_LONG_MAX = 2**63 - 1
_ENTITY_TYPES_SEEN: set[str] = set()  # entity types `_ENTITY_TYPE` matched (`_accepted`)

_STATUS_OF_PROTO = {
    pb.OUTCOME_STATUS_SUCCEEDED: "succeeded",
    pb.OUTCOME_STATUS_FAILED: "failed",
    pb.OUTCOME_STATUS_SKIPPED: "skipped",
    pb.OUTCOME_STATUS_TIMED_OUT: "timed_out",
}
_ACCOUNT_OF_PROTO = {
    pb.ACCOUNT_CHANGE_CREATED: "created",
    pb.ACCOUNT_CHANGE_DISABLED: "disabled",
    pb.ACCOUNT_CHANGE_DELETED: "deleted",
}
_CREDENTIAL_OF_PROTO = {
    pb.CREDENTIAL_CHANGE_ISSUED: "issued",
    pb.CREDENTIAL_CHANGE_REVOKED: "revoked",
}


@dataclass(frozen=True, slots=True)
class Credential:
    id: str
    change: str  # one of CREDENTIAL_CHANGES
    issued_at: datetime | None = None
    expires_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "change": self.change}
        if self.issued_at is not None:
            out["issued_at"] = event_time(self.issued_at)
        if self.expires_at is not None:
            out["expires_at"] = event_time(self.expires_at)
        return out


# Not frozen: one of these is built per reported outcome, and a frozen dataclass's
# __init__ sets each field through object.__setattr__ (4x the cost). Treated as values
# all the same: nothing assigns to them after they are made.
@dataclass(slots=True)
class Effect:
    identity: tuple[str, str] | None = None  # (type, id)
    target_system: str = ""
    entitlements_added: tuple[str, ...] = ()
    entitlements_removed: tuple[str, ...] = ()
    credential: Credential | None = None
    account: str = ""  # "" or one of ACCOUNT_CHANGES

    @property
    def empty(self) -> bool:
        return self == Effect()

    def to_json(self) -> dict[str, Any]:
        """Only the fields set, as the audit event records them."""
        out: dict[str, Any] = {}
        if self.identity is not None:
            out["identity"] = {"type": self.identity[0], "id": self.identity[1]}
        if self.target_system:
            out["target_system"] = self.target_system
        if self.entitlements_added:
            out["entitlements_added"] = list(self.entitlements_added)
        if self.entitlements_removed:
            out["entitlements_removed"] = list(self.entitlements_removed)
        if self.credential is not None:
            out["credential"] = self.credential.to_json()
        if self.account:
            out["account"] = self.account
        return out


@dataclass(slots=True)  # not frozen: as Effect
class Outcome:
    decision_id: str
    status: str  # one of STATUSES
    error_class: str = ""
    effect: Effect | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 0
    # The client's id for this report ("" when none): a resend is recorded once
    # (decision/outcomes.py). Part of equality: a report with the same id and
    # other fields is another report.
    report_id: str = ""

    @property
    def ran(self) -> bool:
        """Whether the step ran (a skipped step cannot have run without permission)."""
        return self.status in RAN


def event_time(at: datetime) -> str:
    """RFC 3339, UTC, microseconds, `Z` (the trail's time format)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- protobuf -----------------------------------------------------------------


def outcome_from_proto(msg: pb.RecordOutcomeRequest, prefix: str = "") -> Outcome:
    """A RecordOutcomeRequest as the model; `prefix` (`items[3].`) starts every field path.

    Read straight from the message when every field passes (`_accepted`, the usual
    report); anything it does not accept is read the long way, which refuses it with
    the message naming the field (or, if `_accepted` was only cautious, reads it).
    """
    accepted = _accepted(msg)
    return accepted if accepted is not None else _checked_from_proto(msg, prefix)


def outcomes_from_proto(
    items: Iterable[pb.RecordOutcomeRequest], field: str = "items"
) -> list[Outcome | Exception]:
    """A batch's items as `outcome_from_proto` reads each (`items[3].` starting the
    field paths): per item its outcome, or the error that refuses it (the item fails,
    not the batch)."""
    out: list[Outcome | Exception] = []
    for i, item in enumerate(items):
        accepted = _accepted(item)
        if accepted is None:
            try:
                accepted = _checked_from_proto(item, f"{field}[{i}].")
            except Exception as exc:  # noqa: BLE001 - this item fails, not the batch
                out.append(exc)
                continue
        out.append(accepted)
    return out


def _accepted(msg: pb.RecordOutcomeRequest) -> Outcome | None:
    """The outcome when `msg` passes every check of `check_outcome`, else None (then
    `_checked_from_proto` says why). One pass over the message, no intermediate dicts:
    it runs once per reported outcome. Equal to `_checked_from_proto`'s outcome
    whenever it gives one (tests/core/test_outcome_model.py, a Hypothesis property).
    """
    status = _STATUS_OF_PROTO.get(msg.status)
    decision_id = msg.decision_id
    if status is None or _DECISION_ID.fullmatch(decision_id) is None:
        return None
    error_class = msg.error_class
    if error_class:
        if status not in _WITH_ERROR_CLASS or _ERROR_CLASS.fullmatch(error_class) is None:
            return None
    elif status == "failed":
        return None
    attempt = msg.attempt
    if attempt < 0:  # an int64: never above _LONG_MAX
        return None
    report_id = msg.report_id
    # A UUID's hex (what the clients send) passes the two C-level checks; anything
    # else is matched against `_REPORT_ID`.
    if (
        report_id
        and not (len(report_id) <= 64 and report_id.isascii() and report_id.isalnum())
        and _REPORT_ID.fullmatch(report_id) is None
    ):
        return None
    has = msg.HasField
    started = finished = None
    if has("started_at"):
        started = _time_or_none(msg.started_at)
        if started is None:
            return None
    if has("finished_at"):
        finished = _time_or_none(msg.finished_at)
        if finished is None or (started is not None and started > finished):
            return None
    effect = None
    if has("effect"):
        e = msg.effect
        has_in_effect = e.HasField
        identity = None
        if has_in_effect("identity"):
            ident = e.identity
            kind, name = ident.type, ident.id
            if kind not in _ENTITY_TYPES_SEEN:  # a handful of types, each matched once
                if _ENTITY_TYPE.fullmatch(kind) is None:
                    return None
                if len(_ENTITY_TYPES_SEEN) < 256:  # types come from callers: bounded
                    _ENTITY_TYPES_SEEN.add(kind)
            if not 0 < len(name) <= MAX_ENTITY_ID or not name.isprintable():
                return None
            identity = (kind, name)
        target = e.target_system
        if target and (len(target) > MAX_TEXT or not target.isprintable()):
            return None
        added: tuple[str, ...] | None = ()
        removed: tuple[str, ...] | None = ()
        # Each access makes a new view: once each; a slice copies it in one C call
        # (iterating the view itself costs a call per item).
        listed = e.entitlements_added
        if listed:
            added = _entitlements(listed[:])
        listed = e.entitlements_removed
        if listed:
            removed = _entitlements(listed[:])
        if added is None or removed is None:
            return None
        account = ""
        if e.account:
            account = _ACCOUNT_OF_PROTO.get(e.account, "")
            if not account:
                return None
        credential = None
        if has_in_effect("credential"):
            credential = _credential_accepted(e.credential)
            if credential is None:
                return None
        if identity or target or added or removed or credential or account:
            effect = Effect(identity, target, added, removed, credential, account)
    return Outcome(decision_id, status, error_class, effect, started, finished, attempt, report_id)


def _credential_accepted(c: pb.Credential) -> Credential | None:
    change = _CREDENTIAL_OF_PROTO.get(c.change)
    if change is None or not _fits(c.id, MAX_TEXT):
        return None
    issued = expires = None
    if c.HasField("issued_at"):
        issued = _time_or_none(c.issued_at)
        if issued is None:
            return None
    if c.HasField("expires_at"):
        expires = _time_or_none(c.expires_at)
        if expires is None:
            return None
    if change == "issued" and (issued is None or expires is None):
        return None
    if issued is not None and expires is not None and expires < issued:
        return None
    return Credential(c.id, change, issued, expires)


def _entitlements(values: Iterable[str]) -> tuple[str, ...] | None:
    items = tuple(values)
    if len(items) > MAX_ENTITLEMENTS:
        return None
    for v in items:
        if not 0 < len(v) <= MAX_TEXT or not v.isprintable():
            return None
    return items


def _fits(value: str, limit: int) -> bool:
    """`_text`'s checks, as a yes or no."""
    return 0 < len(value) <= limit and value.isprintable()


def _time_or_none(ts: Any) -> datetime | None:
    """`_proto_time`, None where it would refuse."""
    if not 0 <= ts.nanos < 1_000_000_000:
        return None
    try:
        value: datetime = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None
    return value


def _checked_from_proto(msg: pb.RecordOutcomeRequest, prefix: str) -> Outcome:
    """`outcome_from_proto` the long way: the message read into the plain values the
    JSON form also gives, then `check_outcome`, which names the field it refuses."""
    status: Any = _STATUS_OF_PROTO.get(msg.status, msg.status)
    effect: dict[str, Any] | None = None
    if msg.HasField("effect"):
        e = msg.effect
        effect = {
            "target_system": e.target_system,
            "entitlements_added": list(e.entitlements_added),
            "entitlements_removed": list(e.entitlements_removed),
            "account": _ACCOUNT_OF_PROTO.get(e.account, e.account or ""),
        }
        if e.HasField("identity"):
            effect["identity"] = {"type": e.identity.type, "id": e.identity.id}
        if e.HasField("credential"):
            c = e.credential
            cred: dict[str, Any] = {
                "id": c.id,
                "change": _CREDENTIAL_OF_PROTO.get(c.change, c.change or None),
            }
            for name in ("issued_at", "expires_at"):
                if c.HasField(name):
                    cred[name] = _proto_time(getattr(c, name), f"{prefix}effect.credential.{name}")
            effect["credential"] = cred
    times = {
        name: _proto_time(getattr(msg, name), prefix + name)
        for name in ("started_at", "finished_at")
        if msg.HasField(name)
    }
    return check_outcome(
        prefix,
        decision_id=msg.decision_id,
        status=status or None,
        error_class=msg.error_class,
        effect=effect,
        attempt=msg.attempt,
        report_id=msg.report_id,
        **times,
    )


def _proto_time(ts: Any, field: str) -> datetime:
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidRequest(field, f"nanos {ts.nanos} out of range 0..999999999")
    try:
        value: datetime = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(field, f"is not a valid timestamp: {exc}") from exc
    return value


# --- the checks both transports share --------------------------------------


def json_str(value: Any, field: str) -> str:
    """The value if it is a string; the plain values may come from JSON, which types nothing."""
    if not isinstance(value, str):
        raise InvalidRequest(field, "must be a string")
    return value


def check_outcome(
    prefix: str,
    *,
    decision_id: str,
    status: Any,
    error_class: str,
    effect: Mapping[str, Any] | None,
    attempt: int,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    report_id: str = "",
) -> Outcome:
    if not decision_id:
        raise InvalidRequest(
            f"{prefix}decision_id", "is required: the AuthorizeResponse's decision_id"
        )
    if not _DECISION_ID.fullmatch(decision_id):
        raise InvalidRequest(
            f"{prefix}decision_id",
            f"{_show(decision_id)} is not a decision id (a lower-case UUID, as AuthorizeResponse "
            "carries it)",
        )
    status = _choice(status, STATUSES, f"{prefix}status", required=True)
    if error_class:
        if status not in ("failed", "timed_out"):
            raise InvalidRequest(
                f"{prefix}error_class", f"is only for a failed or timed_out step, not {status}"
            )
        if not _ERROR_CLASS.fullmatch(error_class):
            raise InvalidRequest(
                f"{prefix}error_class",
                f"{_show(error_class)} is not an error class: 1 to 128 characters of "
                "[A-Za-z0-9_.:/-] (a class name, never a message)",
            )
    elif status == "failed":
        raise InvalidRequest(f"{prefix}error_class", "is required for a failed step")
    if not 0 <= attempt <= _LONG_MAX:
        raise InvalidRequest(f"{prefix}attempt", f"{attempt} is out of range 0..{_LONG_MAX}")
    if started_at and finished_at and started_at > finished_at:
        raise InvalidRequest(f"{prefix}finished_at", "is before started_at")
    if report_id and not _REPORT_ID.fullmatch(report_id):
        raise InvalidRequest(
            f"{prefix}report_id",
            f"{_show(report_id)} is not a report id: 1 to 64 characters of [A-Za-z0-9_.:-] "
            "(a UUID, as the clients send)",
        )
    parsed = _effect(effect, f"{prefix}effect") if effect is not None else None
    return Outcome(
        decision_id=decision_id,
        status=status,
        error_class=error_class,
        effect=None if parsed is None or parsed.empty else parsed,
        started_at=started_at,
        finished_at=finished_at,
        attempt=attempt,
        report_id=report_id,
    )


def _effect(raw: Mapping[str, Any], where: str) -> Effect:
    identity = None
    if raw.get("identity") is not None:
        ident = raw["identity"]
        kind = json_str(ident.get("type", ""), f"{where}.identity.type")
        name = json_str(ident.get("id", ""), f"{where}.identity.id")
        if not _ENTITY_TYPE.fullmatch(kind):
            raise InvalidRequest(
                f"{where}.identity.type", f"{_show(kind)} is not an entity type (User, Acme::User)"
            )
        identity = (kind, _text(name, f"{where}.identity.id", MAX_ENTITY_ID))
    target = json_str(raw.get("target_system") or "", f"{where}.target_system")
    if target:
        _text(target, f"{where}.target_system", MAX_TEXT)
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("entitlements_added", "entitlements_removed"):
        items = list(raw.get(name) or ())
        if len(items) > MAX_ENTITLEMENTS:
            raise InvalidRequest(
                f"{where}.{name}", f"{len(items)} items, over the limit of {MAX_ENTITLEMENTS}"
            )
        lists[name] = tuple(
            _text(json_str(v, f"{where}.{name}[{i}]"), f"{where}.{name}[{i}]", MAX_TEXT)
            for i, v in enumerate(items)
        )
    account = _choice(raw.get("account") or "", ACCOUNT_CHANGES, f"{where}.account", required=False)
    credential = None
    if raw.get("credential") is not None:
        credential = _credential(raw["credential"], f"{where}.credential")
    return Effect(
        identity=identity,
        target_system=target,
        entitlements_added=lists["entitlements_added"],
        entitlements_removed=lists["entitlements_removed"],
        credential=credential,
        account=account,
    )


def _credential(raw: Mapping[str, Any], where: str) -> Credential:
    cid = _text(json_str(raw.get("id") or "", f"{where}.id"), f"{where}.id", MAX_TEXT)
    change = _choice(raw.get("change"), CREDENTIAL_CHANGES, f"{where}.change", required=True)
    issued, expires = raw.get("issued_at"), raw.get("expires_at")
    if change == "issued":
        if issued is None:
            raise InvalidRequest(f"{where}.issued_at", "is required for an issued credential")
        if expires is None:
            raise InvalidRequest(f"{where}.expires_at", "is required for an issued credential")
    if issued is not None and expires is not None and expires < issued:
        raise InvalidRequest(f"{where}.expires_at", "is before issued_at")
    return Credential(cid, change, issued, expires)


def _choice(value: Any, allowed: tuple[str, ...], field: str, *, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise InvalidRequest(field, f"is required: one of {', '.join(allowed)}")
        return ""
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRequest(field, f"unknown value {_show(value)}; one of {', '.join(allowed)}")
    return value


def _text(value: str, field: str, limit: int) -> str:
    if not value:
        raise InvalidRequest(field, "is empty")
    if len(value) > limit:
        raise InvalidRequest(field, f"is {len(value)} characters, over the limit of {limit}")
    # isprintable() is False for control characters and for lone surrogates (Cs),
    # the unencodable ones: one C-level pass checks both.
    if not value.isprintable():
        raise InvalidRequest(field, "holds control or unencodable characters")
    return value


def _show(value: Any) -> str:
    """A caller's value in a message: quoted, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def outcome_to_proto(outcome: Outcome) -> pb.RecordOutcomeRequest:
    """The model as a RecordOutcomeRequest (the client sends what it checked)."""
    msg = pb.RecordOutcomeRequest(
        decision_id=outcome.decision_id,
        status=_PROTO_OF_STATUS[outcome.status],
        error_class=outcome.error_class,
        attempt=outcome.attempt,
        report_id=outcome.report_id,
    )
    if outcome.started_at is not None:
        msg.started_at.FromDatetime(outcome.started_at)
    if outcome.finished_at is not None:
        msg.finished_at.FromDatetime(outcome.finished_at)
    effect = outcome.effect
    if effect is not None:
        e = msg.effect
        if effect.identity is not None:
            e.identity.type, e.identity.id = effect.identity
        e.target_system = effect.target_system
        e.entitlements_added.extend(effect.entitlements_added)
        e.entitlements_removed.extend(effect.entitlements_removed)
        if effect.account:
            e.account = _PROTO_OF_ACCOUNT[effect.account]
        c = effect.credential
        if c is not None:
            e.credential.id = c.id
            e.credential.change = _PROTO_OF_CREDENTIAL[c.change]
            if c.issued_at is not None:
                e.credential.issued_at.FromDatetime(c.issued_at)
            if c.expires_at is not None:
                e.credential.expires_at.FromDatetime(c.expires_at)
        msg.effect.SetInParent()
    return msg


_PROTO_OF_STATUS = {v: k for k, v in _STATUS_OF_PROTO.items()}
_PROTO_OF_ACCOUNT = {v: k for k, v in _ACCOUNT_OF_PROTO.items()}
_PROTO_OF_CREDENTIAL = {v: k for k, v in _CREDENTIAL_OF_PROTO.items()}


# --- violations ------------------------------------------------------------------

VIOLATIONS = (
    "decision_unknown",
    "decision_denied",
    "after_time_bound",
    "before_time_bound",
    "credential_ttl_exceeded",
    "caller_mismatch",
)
VIOLATION_TO_PROTO = {
    "": pb.VIOLATION_NONE,
    "decision_unknown": pb.VIOLATION_DECISION_UNKNOWN,
    "decision_denied": pb.VIOLATION_DECISION_DENIED,
    "after_time_bound": pb.VIOLATION_AFTER_TIME_BOUND,
    "before_time_bound": pb.VIOLATION_BEFORE_TIME_BOUND,
    "credential_ttl_exceeded": pb.VIOLATION_CREDENTIAL_TTL_EXCEEDED,
    "caller_mismatch": pb.VIOLATION_CALLER_MISMATCH,
}
VIOLATION_OF_PROTO = {v: k for k, v in VIOLATION_TO_PROTO.items()}


@dataclass(slots=True)  # not frozen: as Effect (one per outcome judged)
class DecisionFacts:
    """What an outcome is judged against: its decision, as the trail recorded it."""

    decision: str  # "ALLOW" or "DENY"
    not_before_ms: int | None = None
    not_after_ms: int | None = None
    max_credential_ttl_s: float | None = None
    # Copied into the outcome's event (already redacted: they come from the decision's).
    principal: Any = None
    action: Any = None
    resource: Any = None
    policy_revision: str = ""
    workflow_id: str = ""
    run_id: str = ""
    step_id: str = ""
    # The authenticated identity of the decision's caller as its event recorded it
    # (redacted like the rest of it); "" when it recorded none.
    caller_identity: str = ""


def judge(
    outcome: Outcome,
    facts: DecisionFacts | None,
    received_at: datetime,
    *,
    caller_mismatch: bool = False,
    received_ms: int | None = None,
) -> str:
    """The violation an outcome is (one of VIOLATIONS, the first that holds), or "".

    Only a step that ran can be one, but for `caller_mismatch`: the reporting
    caller is not the one the decision was made for (decision/outcomes.py
    judges that by the identity rules), so nothing the report says is the
    workload's own, a skipped step included. It comes right after a DENY that
    ran, before the checks that trust the report's times and effect. A step ran
    at `finished_at`, else `started_at`, else (nothing said) at `received_at`: a
    late report of a step that ran in time needs `finished_at` to say so.
    `received_ms`: `to_ms(received_at)` when the caller has it (a batch shares it).
    """
    ran = outcome.status in RAN
    if facts is None:
        return "decision_unknown" if ran else ""
    if ran and facts.decision != "ALLOW":
        return "decision_denied"
    if caller_mismatch:
        return "caller_mismatch"
    if not ran:
        return ""
    start = outcome.started_at
    not_after = facts.not_after_ms
    if not_after is not None:
        ran_at = outcome.finished_at or start
        if ran_at is not None:
            ran_ms = to_ms(ran_at)
        else:
            ran_ms = to_ms(received_at) if received_ms is None else received_ms
        if ran_ms > not_after:
            return "after_time_bound"
    if facts.not_before_ms is not None and start is not None and to_ms(start) < facts.not_before_ms:
        return "before_time_bound"
    effect = outcome.effect
    cred = effect.credential if effect is not None else None
    ttl = facts.max_credential_ttl_s
    if (
        ttl is not None
        and cred is not None
        and cred.issued_at is not None
        and cred.expires_at is not None
        and (cred.expires_at - cred.issued_at).total_seconds() > ttl
    ):
        return "credential_ttl_exceeded"
    return ""
