"""Protobuf request -> engine request, or an `InvalidRequest` naming the field.

This is the only place wire types meet the model. It checks everything a
caller can get wrong before Cedar sees it: presence of required fields, entity
types and actions against the bundle's schema, value shapes, and size limits.
What only Cedar can judge (types of attributes against the schema) is left to
Cedar, whose refusal is a DENY with diagnostics.

Who an entity is comes from the entity store, not from the request:

- the principal must be in the store, unless the bundle's
  `request-entities.yaml` admits its type, or workload binding is on (then
  only the caller's own workload is decided, store or not); otherwise
  INVALID_ARGUMENT;
- a resource the store lacks, of a type not admitted, is a DENY saying so
  (`AuthzRequest.denial`);
- an entity the store lacks may carry only the attributes and parent types
  the declaration lists for its type; one the store holds may only restate it.

Free-form values are data: a record with a key Cedar would read as an escape
(`__entity`, `__extn`, `__expr`) is refused, so entity references and
extension values arrive only through `Value.entity_value` / `extension_value`
and the audit trail can always tell a record from an entity.

Time is read here too: Cedar's datetime forms, the request's time bound and
`context.now` (the clock rounded to its granularity, never across the bound).
The decision cache (a hit on raw bytes resolves its own `now`) and the AuthZEN
mapping use the same functions. That makes this module about 600 lines, past
the 500 lines of issue 17 on purpose: a request is read without leaving it
(tests/decision/test_decision_order.py holds validation to that, so the time
functions stay here rather than in a module of their own). Naming the field
of bytes the protobuf decoder refused is apart (core/decoderefusal.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.bundle import REQUEST_ENTITIES_FILE, Bundle
from sidecar.core.errors import InvalidRequest
from sidecar.core.model import AuthzRequest, CedarJson, EntityData, EntityUid

_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*")
EXTENSION_FUNCTIONS = frozenset({"ip", "decimal", "datetime", "duration", "offset"})
# Keys Cedar's JSON reads as escapes (entity reference, extension value, expression):
# never allowed as record keys or attribute names of free-form values.
RESERVED_KEYS = frozenset({"__entity", "__extn", "__expr"})
SENSITIVITY = {
    pb.SENSITIVITY_LOW: "low",
    pb.SENSITIVITY_MEDIUM: "medium",
    pb.SENSITIVITY_HIGH: "high",
    pb.SENSITIVITY_CRITICAL: "critical",
}
# The context names StepContext's typed fields set (all of its fields but `attributes`).
TYPED_CONTEXT = tuple(f.name for f in pb.StepContext.DESCRIPTOR.fields if f.name != "attributes")
# Context names set by typed fields or by the server; free-form attributes may not use them.
RESERVED_CONTEXT = frozenset({"now", "caller", *TYPED_CONTEXT})


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int = 64 * 1024
    max_attribute_depth: int = 12
    max_batch_items: int = 1000


def request_from_proto(
    msg: pb.AuthorizeRequest,
    bundle: Bundle,
    limits: Limits,
    *,
    now: datetime | None,
    now_granularity_ms: int = 1,
    extra_context: Mapping[str, CedarJson] | None = None,
    principal_bound: bool = False,
    cedar_entities: bool = False,
) -> AuthzRequest:
    """Translate and check one request.

    `now` is the server's clock reading, injected as `context.now` after
    rounding down to `now_granularity_ms`, never across the request's own time
    bound (`effective_now_ms` below); the request carries that bound and `now`
    in ms, so nothing downstream reads or resolves them again. `extra_context`
    carries other server-side facts (the authenticated caller). The Cedar conformance corpus
    passes `now=None`: its schemas declare no `now`.

    `principal_bound`: workload binding is on, so the decider denies any
    principal but the caller's own workload, which may be absent from the
    store (it still may not describe itself beyond the declaration); the
    principal's store membership is not checked here. `cedar_entities` keeps Cedar's own rules
    for entity references, for Cedar's own test corpus only: empty ids and
    entities the store lacks are evaluated, not refused.
    """
    size = msg.ByteSize()
    if size > limits.max_request_bytes:
        raise InvalidRequest(
            "request", f"is {size} bytes, over the limit of {limits.max_request_bytes} bytes"
        )
    if not msg.HasField("principal"):
        raise InvalidRequest("principal", "is required")
    if not msg.HasField("action"):
        raise InvalidRequest("action", "is required")
    if not msg.HasField("resource"):
        raise InvalidRequest("resource", "is required")
    need_id = not cedar_entities
    principal = _entity(msg.principal, "principal", bundle, limits, need_id)
    resource = _entity(msg.resource, "resource", bundle, limits, need_id)
    action = _uid(msg.action, "action", bundle, need_id=need_id)
    denial = ""
    if not cedar_entities:
        if not principal_bound:
            check_principal_known("principal", principal.uid, bundle)
        denial = unknown_resource_denial(resource.uid, bundle)
    if action not in bundle.actions:
        raise InvalidRequest(
            "action",
            f"{action} is not an action declared by the schema",
            near=(str(action), [str(a) for a in bundle.actions]),
        )
    context, bound = (
        _context(msg.context, bundle, limits) if msg.HasField("context") else ({}, _NO_BOUND)
    )
    now_ms = None
    if now is not None:
        now_ms = effective_now_ms(to_ms(now.astimezone(UTC)), now_granularity_ms, *bound)
        context["now"] = cedar_datetime(now_ms)
    if extra_context:
        context.update(extra_context)
    supplied = tuple(e for e in (principal, resource) if e.attrs or e.parents)
    return AuthzRequest(
        principal.uid, action, resource.uid, context, supplied, denial, *bound, now_ms
    )


def _unknown(uid: EntityUid, bundle: Bundle) -> bool:
    """Neither in the store nor of a type the bundle lets requests name without it."""
    return uid not in bundle.entity_json and bundle.request_entities.admits(uid.type) is None


def check_principal_known(field: str, uid: EntityUid, bundle: Bundle) -> None:
    """A principal must be one the store holds, or of a type the bundle admits without it."""
    if _unknown(uid, bundle):
        raise InvalidRequest(
            field,
            f"{uid} is not in the entity store, and the bundle's {REQUEST_ENTITIES_FILE} "
            f"does not admit {uid.type} principals the store lacks; add it to the store",
        )


def unknown_resource_denial(uid: EntityUid, bundle: Bundle) -> str:
    """The DENY reason for a resource the store lacks (of a type not admitted), else ''."""
    return unknown_entity_denial("resource", uid, bundle)


def unknown_entity_denial(role: str, uid: EntityUid, bundle: Bundle) -> str:
    """The DENY reason for a `role` entity the store lacks (of a type not admitted), else ''."""
    if not _unknown(uid, bundle):
        return ""
    return f"{role} {uid} is not in the entity store (unknown entity); add it to the store"


def admitted_attributes(
    uid: EntityUid, bundle: Bundle, attrs: Mapping[str, CedarJson]
) -> dict[str, CedarJson]:
    """The attributes of an entity the store lacks that `request-entities.yaml` admits.

    For AuthZEN, which must accept any properties and ignore those it does not
    use (as it ignores properties of stored entities): the rest never reach Cedar.
    """
    declared = bundle.request_entities.admits(uid.type)
    allowed = declared.attributes if declared else frozenset()
    return {name: value for name, value in attrs.items() if name in allowed}


def _uid(
    ref: pb.EntityRef | pb.Entity, field: str, bundle: Bundle | None, *, need_id: bool = False
) -> EntityUid:
    """The reference's uid; `ref` is an EntityRef or an Entity (its type and id)."""
    type_ = ref.type
    if not type_:
        raise InvalidRequest(f"{field}.type", "is required")
    if not _TYPE_NAME.fullmatch(type_):
        raise InvalidRequest(f"{field}.type", f"{type_!r} is not a Cedar entity type name")
    if bundle is not None and field != "action" and type_ not in bundle.entity_types:
        raise InvalidRequest(
            f"{field}.type",
            f"{type_!r} is not an entity type of the schema",
            near=(type_, bundle.entity_types),
        )
    if need_id and not ref.id:
        raise InvalidRequest(f"{field}.id", "is required and must not be empty")
    return EntityUid(type_, ref.id)


def _entity(
    msg: pb.Entity, field: str, bundle: Bundle, limits: Limits, need_id: bool
) -> EntityData:
    uid = _uid(msg, field, bundle, need_id=need_id)
    attrs: dict[str, CedarJson] = {}
    for name, value in sorted(msg.attributes.items()):
        where = f"{field}.attributes[{name!r}]"
        if name in RESERVED_KEYS:
            raise InvalidRequest(where, reserved_message(name))
        attrs[name] = _value(value, where, limits.max_attribute_depth)
    parents = tuple(_uid(p, f"{field}.parents[{i}]", bundle) for i, p in enumerate(msg.parents))
    stored = bundle.entity_json.get(uid)
    if stored is not None:
        _check_agrees_with_store(field, uid, stored, attrs, parents)
        return EntityData(uid)
    _check_declared(uid, bundle, attrs, parents, field=field)
    return EntityData(uid, attrs, parents)


def _check_declared(
    uid: EntityUid,
    bundle: Bundle,
    attrs: Mapping[str, CedarJson],
    parents: tuple[EntityUid, ...],
    *,
    field: str,
) -> None:
    """An entity the store lacks carries only what `request-entities.yaml` lets it carry.

    Anything else would let a caller describe itself into rights: a parent
    group, `shared: false`, a low sensitivity.
    """
    declared = bundle.request_entities.admits(uid.type)
    allowed_parents = declared.parents if declared else frozenset()
    allowed_attrs = declared.attributes if declared else frozenset()
    for i, parent in enumerate(parents):
        if parent.type not in allowed_parents:
            raise InvalidRequest(
                f"{field}.parents[{i}]",
                f"{uid} is not in the entity store, and the bundle's {REQUEST_ENTITIES_FILE} "
                f"does not let a request place a {uid.type} in a {parent.type}; "
                "a request cannot grant an entity group membership",
            )
    for name in attrs:
        if name not in allowed_attrs:
            raise InvalidRequest(
                f"{field}.attributes[{name!r}]",
                f"{uid} is not in the entity store, and the bundle's {REQUEST_ENTITIES_FILE} "
                f"does not let a request give a {uid.type} the attribute {name!r}; "
                "put the entity in the store",
            )


def _check_agrees_with_store(
    field: str,
    uid: EntityUid,
    stored: Mapping[str, Any],
    attrs: Mapping[str, CedarJson],
    parents: tuple[EntityUid, ...],
) -> None:
    """The entity store is the source of truth for the entities it holds.

    A caller may restate what the store holds but not add to it: an extra
    parent or attribute would let a workload grant itself group membership.
    """
    known = stored.get("attrs") or {}
    for name, value in attrs.items():
        if name not in known:
            raise InvalidRequest(
                f"{field}.attributes[{name!r}]",
                f"{uid} is in the entity store, which does not give it this attribute; "
                "a request cannot add attributes to a stored entity",
            )
        if known[name] != value:
            raise InvalidRequest(
                f"{field}.attributes[{name!r}]",
                f"conflicts with the value the entity store holds for {uid}",
            )
    stored_parents = [
        p.get("__entity", p) for p in stored.get("parents") or [] if isinstance(p, dict)
    ]
    for i, parent in enumerate(parents):
        if parent.to_json() not in stored_parents:
            raise InvalidRequest(
                f"{field}.parents[{i}]",
                f"{uid} is in the entity store, which does not place it in {parent}; "
                "a request cannot add parents to a stored entity",
            )


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def member(field: str, name: str) -> str:
    """The path of record member `name` under `field`: `.name` for a plain name, else
    `[repr]`, so that a refusal names its field unambiguously and carries no control
    character (a key may hold a newline; the message is printed and logged). Under
    no field (a top-level key), the plain name alone, else `[repr]`."""
    if _PLAIN_NAME.fullmatch(name):
        return f"{field}.{name}" if field else name
    return f"{field}[{name!r}]"


def _value(msg: pb.Value, field: str, depth: int, limit: int | None = None) -> CedarJson:
    limit = depth if limit is None else limit
    if depth <= 0:
        raise InvalidRequest(field, depth_message(limit))
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise InvalidRequest(field, "value has no kind set")
    if kind == "bool_value":
        return msg.bool_value
    if kind == "long_value":
        return msg.long_value
    if kind == "string_value":
        return msg.string_value
    if kind == "set_value":
        values = msg.set_value.values
        return [_value(v, f"{field}[{i}]", depth - 1, limit) for i, v in enumerate(values)]
    if kind == "record_value":
        fields = msg.record_value.fields
        record: dict[str, CedarJson] = {}
        for name, v in sorted(fields.items()):
            if name in RESERVED_KEYS:
                raise InvalidRequest(member(field, name), reserved_message(name))
            record[name] = _value(v, member(field, name), depth - 1, limit)
        return record
    if kind == "entity_value":
        return {"__entity": _uid(msg.entity_value, f"{field}.entity_value", None).to_json()}
    ext = msg.extension_value
    if ext.function not in EXTENSION_FUNCTIONS:
        allowed = ", ".join(sorted(EXTENSION_FUNCTIONS))
        raise InvalidRequest(
            f"{field}.extension_value.function",
            f"{ext.function!r} is not an extension function (one of: {allowed})",
        )
    if ext.arguments:
        args = [
            _value(v, f"{field}.extension_value.arguments[{i}]", depth - 1, limit)
            for i, v in enumerate(ext.arguments)
        ]
        return {"__extn": {"fn": ext.function, "args": args}}
    return {"__extn": {"fn": ext.function, "arg": ext.argument}}


def depth_message(limit: int) -> str:
    return f"nests deeper than the attribute depth limit ({limit})"


def reserved_message(name: str) -> str:
    return (
        f"{name!r} is reserved: Cedar would read this record as an escape, not as data; "
        "send entity references and extension values (decimal, ip, datetime, ...) as typed "
        "values: Value.entity_value / Value.extension_value, or in JSON exactly "
        '{"__entity": {...}} / {"__extn": {...}}'
    )


_NO_BOUND: tuple[int | None, int | None] = (None, None)


def _context(
    msg: pb.StepContext, bundle: Bundle, limits: Limits
) -> tuple[dict[str, Any], tuple[int | None, int | None]]:
    """The Cedar context, and its time bound in ms (not_before, not_after)."""
    ctx: dict[str, Any] = {}
    bound = _NO_BOUND
    if msg.HasField("requester"):
        ctx["requester"] = {"__entity": _uid(msg.requester, "context.requester", bundle).to_json()}
    for name in ("workflow_id", "run_id", "step_id", "target_system"):
        value = getattr(msg, name)
        if value:
            ctx[name] = value
    if msg.attempt < 0:
        raise InvalidRequest("context.attempt", f"must not be negative, got {msg.attempt}")
    if msg.attempt:
        ctx["attempt"] = msg.attempt
    if msg.sensitivity != pb.SENSITIVITY_UNSPECIFIED:
        if msg.sensitivity not in SENSITIVITY:
            raise InvalidRequest("context.sensitivity", f"unknown value {msg.sensitivity}")
        ctx["sensitivity"] = SENSITIVITY[msg.sensitivity]
    if msg.HasField("time_bound"):
        ctx["time_bound"], bound = _time_bound(msg.time_bound)
    if msg.HasField("approval"):
        ctx["approval"] = _approval(msg.approval, bundle)
    for name, value in sorted(msg.attributes.items()):
        field = f"context.attributes[{name!r}]"
        if name in RESERVED_CONTEXT:
            raise InvalidRequest(field, "is reserved for a typed field or the server; rename it")
        if name in RESERVED_KEYS:
            raise InvalidRequest(field, reserved_message(name))
        ctx[name] = _value(value, field, limits.max_attribute_depth)
    return ctx, bound


def _time_bound(msg: pb.TimeBound) -> tuple[dict[str, Any], tuple[int | None, int | None]]:
    """The bound as Cedar reads it, and in ms (the instants `now` is resolved against)."""
    bound: dict[str, Any] = {}
    start = end = None
    if msg.HasField("not_before"):
        start = _timestamp(msg.not_before, "context.time_bound.not_before")
        bound["not_before"] = _datetime_json(start)
    if msg.HasField("not_after"):
        end = _timestamp(msg.not_after, "context.time_bound.not_after")
        bound["not_after"] = _datetime_json(end)
    if start and end and start > end:
        raise InvalidRequest("context.time_bound", "not_before is after not_after")
    return bound, (_ms(start), _ms(end))


def _ms(value: datetime | None) -> int | None:
    return None if value is None else to_ms(value)


def _approval(msg: pb.Approval, bundle: Bundle) -> dict[str, Any]:
    if not msg.HasField("approver"):
        raise InvalidRequest("context.approval.approver", "is required when approval is set")
    if not msg.HasField("approved_at"):
        raise InvalidRequest("context.approval.approved_at", "is required when approval is set")
    approval: dict[str, Any] = {
        "approver": {"__entity": _uid(msg.approver, "context.approval.approver", bundle).to_json()},
        "approved_at": _datetime_json(_timestamp(msg.approved_at, "context.approval.approved_at")),
    }
    if msg.ticket:
        approval["ticket"] = msg.ticket
    return approval


def _timestamp(ts: Any, field: str) -> datetime:
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidRequest(field, f"nanos {ts.nanos} out of range 0..999999999")
    try:
        value: datetime = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(field, f"is not a valid timestamp: {exc}") from exc
    return value


def _datetime_json(value: datetime) -> dict[str, Any]:
    """A Cedar `datetime` at millisecond precision (Cedar's resolution)."""
    return {"__extn": {"fn": "datetime", "arg": datetime_text(value)}}


# --- time: Cedar datetimes in milliseconds, and `context.now` ---------------------------
#
# Here, where validation reads them: the request's time bound as Cedar reads it
# (`parse_cedar_datetime`) and `context.now` (the clock rounded to its granularity,
# never across the bound: `effective_now_ms`). The decision cache (a hit on raw
# bytes resolves its own `now`) and the AuthZEN mapping use these same functions.


def datetime_text(value: datetime) -> str:
    """`YYYY-MM-DDThh:mm:ss.sssZ` in UTC, the form Cedar's `datetime` parses.

    Formatted by hand: strftime is slower, and pads no year before 1000.
    """
    u = value.astimezone(UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond // 1000:03d}Z"
    )


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
    """A Cedar `datetime` value for an instant (the form `context.now` is written in)."""
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


# Cedar's Long; also what the audit trail's encoder can write (docs/audit.md).
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


def check_text(value: str, field: str) -> None:
    """Refuse text the audit trail could not record: a lone surrogate (JSON's `\\u`
    escapes can carry one; UTF-8 cannot). Checked before any decision is made."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidRequest(
                field,
                f"is not valid Unicode text (a lone surrogate at position {exc.start}); "
                "the audit trail could not record it",
            ) from None


def check_long(value: int, field: str) -> None:
    """Refuse an integer outside Cedar's 64-bit Long, which the trail could not record."""
    if not LONG_MIN <= value <= LONG_MAX:
        raise InvalidRequest(
            field,
            "is an integer outside Cedar's 64-bit Long range; the audit trail could not record it",
        )
