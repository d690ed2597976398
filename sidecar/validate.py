"""Protobuf request -> engine request, or an `InvalidRequest` naming the field.

This is the only place wire types meet the model. It checks everything a
caller can get wrong before Cedar sees it: presence of required fields, entity
types and actions against the bundle's schema, value shapes, and size limits.
What only Cedar can judge (types of attributes against the schema) is left to
Cedar, whose refusal is a DENY with diagnostics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.bundle import Bundle
from sidecar.errors import InvalidRequest
from sidecar.model import AuthzRequest, CedarJson, EntityData, EntityUid, datetime_text
from sidecar.suggest import did_you_mean

_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*")
EXTENSION_FUNCTIONS = frozenset({"ip", "decimal", "datetime", "duration", "offset"})
SENSITIVITY = {
    pb.SENSITIVITY_LOW: "low",
    pb.SENSITIVITY_MEDIUM: "medium",
    pb.SENSITIVITY_HIGH: "high",
    pb.SENSITIVITY_CRITICAL: "critical",
}
# Context names set by typed fields or by the server; free-form attributes may not use them.
RESERVED_CONTEXT = frozenset(
    {
        "now",
        "caller",
        "requester",
        "workflow_id",
        "run_id",
        "step_id",
        "attempt",
        "target_system",
        "sensitivity",
        "time_bound",
        "approval",
    }
)


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
    extra_context: Mapping[str, CedarJson] | None = None,
) -> AuthzRequest:
    """Translate and check one request.

    `now` is the server's clock, injected as `context.now`; `extra_context`
    carries other server-side facts (the authenticated caller). The Cedar
    conformance corpus passes `now=None`: its schemas declare no `now`.
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
    principal = _entity(msg.principal, "principal", bundle, limits)
    resource = _entity(msg.resource, "resource", bundle, limits)
    action = _uid(msg.action, "action", bundle)
    if action not in bundle.actions:
        hint = did_you_mean(str(action), (str(a) for a in bundle.actions))
        raise InvalidRequest("action", f"{action} is not an action declared by the schema{hint}")
    context = _context(msg.context, bundle, limits) if msg.HasField("context") else {}
    if now is not None:
        context["now"] = _datetime_json(now)
    if extra_context:
        context.update(extra_context)
    supplied = tuple(e for e in (principal, resource) if e.attrs or e.parents)
    return AuthzRequest(principal.uid, action, resource.uid, context, supplied)


def _uid(ref: pb.EntityRef | pb.Entity, field: str, bundle: Bundle | None) -> EntityUid:
    """The reference's uid; `ref` is an EntityRef or an Entity (its type and id)."""
    type_ = ref.type
    if not type_:
        raise InvalidRequest(f"{field}.type", "is required")
    if not _TYPE_NAME.fullmatch(type_):
        raise InvalidRequest(f"{field}.type", f"{type_!r} is not a Cedar entity type name")
    if bundle is not None and field != "action" and type_ not in bundle.entity_types:
        hint = did_you_mean(type_, bundle.entity_types)
        raise InvalidRequest(
            f"{field}.type", f"{type_!r} is not an entity type of the schema{hint}"
        )
    return EntityUid(type_, ref.id)


def _entity(msg: pb.Entity, field: str, bundle: Bundle, limits: Limits) -> EntityData:
    uid = _uid(msg, field, bundle)
    attrs = {
        name: _value(value, f"{field}.attributes[{name!r}]", limits.max_attribute_depth)
        for name, value in sorted(msg.attributes.items())
    }
    parents = tuple(_uid(p, f"{field}.parents[{i}]", bundle) for i, p in enumerate(msg.parents))
    stored = bundle.entity_json.get(uid)
    if stored is not None:
        _check_agrees_with_store(field, uid, stored, attrs, parents)
        return EntityData(uid)
    return EntityData(uid, attrs, parents)


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


def _value(msg: pb.Value, field: str, depth: int) -> CedarJson:
    if depth <= 0:
        raise InvalidRequest(field, "nests deeper than the attribute depth limit")
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
        return [_value(v, f"{field}[{i}]", depth - 1) for i, v in enumerate(msg.set_value.values)]
    if kind == "record_value":
        fields = msg.record_value.fields
        return {name: _value(v, f"{field}.{name}", depth - 1) for name, v in sorted(fields.items())}
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
            _value(v, f"{field}.extension_value.arguments[{i}]", depth - 1)
            for i, v in enumerate(ext.arguments)
        ]
        return {"__extn": {"fn": ext.function, "args": args}}
    return {"__extn": {"fn": ext.function, "arg": ext.argument}}


def _context(msg: pb.StepContext, bundle: Bundle, limits: Limits) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
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
        ctx["time_bound"] = _time_bound(msg.time_bound)
    if msg.HasField("approval"):
        ctx["approval"] = _approval(msg.approval, bundle)
    for name, value in sorted(msg.attributes.items()):
        field = f"context.attributes[{name!r}]"
        if name in RESERVED_CONTEXT:
            raise InvalidRequest(field, "is reserved for a typed field or the server; rename it")
        ctx[name] = _value(value, field, limits.max_attribute_depth)
    return ctx


def _time_bound(msg: pb.TimeBound) -> dict[str, Any]:
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
    return bound


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
