"""Plain JSON requests -> protobuf, for the CLI, test suites and the Cedar corpus.

The JSON form mirrors the proto with Cedar's JSON for values, which is what
policy authors already write in entity files:

    {"principal": {"type": "Workload", "id": "spiffe://...", "attributes": {...},
                   "parents": [{"type": "Team", "id": "etl"}]},
     "action": {"type": "Action", "id": "grant_access"},
     "resource": {"type": "Step", "id": "grant"},
     "context": {"requester": {"type": "User", "id": "alice"}, "workflow_id": "...",
                 "sensitivity": "high", "time_bound": {"not_after": "2026-11-25T18:00:00Z"},
                 "approval": {"approver": {...}, "approved_at": "...", "ticket": "..."},
                 "attributes": {"free": "form"}}}

Everything then goes through the same validation as a gRPC request.

Typed values: a JSON object that is exactly `{"__entity": {"type", "id"}}` becomes
`Value.entity_value` and exactly `{"__extn": {"fn", "arg" | "args"}}` becomes
`Value.extension_value`, the forms Cedar's own JSON (and the Cedar corpus) uses.
Any other object is a record, and a record with one of those keys (or `__expr`)
among others is refused by validation, naming the field: free-form values are
data, and only the typed fields carry entity references and extension values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.errors import InvalidRequest
from sidecar.core.validate import check_long, check_text, member

_SENSITIVITY = {
    "low": pb.SENSITIVITY_LOW,
    "medium": pb.SENSITIVITY_MEDIUM,
    "high": pb.SENSITIVITY_HIGH,
    "critical": pb.SENSITIVITY_CRITICAL,
}
# Far beyond any attribute depth limit; stops runaway recursion on hostile JSON.
MAX_JSON_DEPTH = 256


def request_from_json(data: Any) -> pb.AuthorizeRequest:
    obj = _object(data, "request")
    msg = pb.AuthorizeRequest()
    if "principal" in obj:
        _fill_entity(msg.principal, obj["principal"], "principal")
    if "action" in obj:
        _fill_ref(msg.action, obj["action"], "action")
    if "resource" in obj:
        _fill_entity(msg.resource, obj["resource"], "resource")
    if "context" in obj:
        _fill_context(msg.context, obj["context"])
    return msg


def value_to_proto(value: Any, field: str, depth: int = 0) -> pb.Value:
    """Cedar JSON -> Value. `{"__extn": ...}` and `{"__entity": ...}` keep their meaning."""
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequest(field, f"nests deeper than {MAX_JSON_DEPTH} levels")
    out = pb.Value()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        check_long(value, field)
        out.long_value = value
    elif isinstance(value, str):
        check_text(value, field)
        out.string_value = value
    elif isinstance(value, list):
        out.set_value.SetInParent()
        for i, item in enumerate(value):
            out.set_value.values.append(value_to_proto(item, f"{field}[{i}]", depth + 1))
    elif isinstance(value, dict) and set(value) == {"__extn"}:
        ext = _object(value["__extn"], f"{field}.__extn")
        out.extension_value.function = _string(ext.get("fn"), f"{field}.__extn.fn")
        if "args" in ext:
            args = ext["args"]
            if not isinstance(args, list):
                raise InvalidRequest(f"{field}.__extn.args", "must be a list of values")
            for i, arg in enumerate(args):
                item = value_to_proto(arg, f"{field}.__extn.args[{i}]", depth + 1)
                out.extension_value.arguments.append(item)
        else:
            out.extension_value.argument = _string(ext.get("arg"), f"{field}.__extn.arg")
    elif isinstance(value, dict) and set(value) == {"__entity"}:
        _fill_ref(out.entity_value, value["__entity"], f"{field}.__entity")
    elif isinstance(value, dict):
        out.record_value.SetInParent()
        for name, item in value.items():
            check_text(name, field)
            out.record_value.fields[name].CopyFrom(
                value_to_proto(item, member(field, name), depth + 1)
            )
    else:
        raise InvalidRequest(field, f"{type(value).__name__} is not a Cedar value")
    return out


def _fill_ref(out: pb.EntityRef, data: Any, field: str) -> None:
    obj = _object(data, field)
    if "__entity" in obj:
        obj = _object(obj["__entity"], f"{field}.__entity")
    out.type = _string(obj.get("type"), f"{field}.type")
    out.id = _string(obj.get("id"), f"{field}.id")


def _fill_entity(out: pb.Entity, data: Any, field: str) -> None:
    obj = _object(data, field)
    ref = pb.EntityRef()
    _fill_ref(ref, obj, field)
    out.type, out.id = ref.type, ref.id
    for name, value in _object(obj.get("attributes", {}), f"{field}.attributes").items():
        check_text(name, f"{field}.attributes")
        out.attributes[name].CopyFrom(value_to_proto(value, f"{field}.attributes.{name}"))
    parents = obj.get("parents", [])
    if not isinstance(parents, list):
        raise InvalidRequest(f"{field}.parents", "must be a list of entity references")
    for i, parent in enumerate(parents):
        _fill_ref(out.parents.add(), parent, f"{field}.parents[{i}]")


def _fill_context(out: pb.StepContext, data: Any) -> None:
    obj = _object(data, "context")
    out.SetInParent()
    if "requester" in obj:
        _fill_ref(out.requester, obj["requester"], "context.requester")
    for name in ("workflow_id", "run_id", "step_id", "target_system"):
        if name in obj:
            setattr(out, name, _string(obj[name], f"context.{name}"))
    if "attempt" in obj:
        attempt = obj["attempt"]
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            raise InvalidRequest("context.attempt", "must be an integer")
        check_long(attempt, "context.attempt")
        out.attempt = attempt
    if "sensitivity" in obj:
        level = obj["sensitivity"]
        if level not in _SENSITIVITY:
            raise InvalidRequest(
                "context.sensitivity", f"{level!r} is not one of low, medium, high, critical"
            )
        out.sensitivity = _SENSITIVITY[level]
    if "time_bound" in obj:
        bound = _object(obj["time_bound"], "context.time_bound")
        out.time_bound.SetInParent()
        for name in ("not_before", "not_after"):
            if name in bound:
                _fill_time(getattr(out.time_bound, name), bound[name], f"context.time_bound.{name}")
    if "approval" in obj:
        approval = _object(obj["approval"], "context.approval")
        out.approval.SetInParent()
        if "approver" in approval:
            _fill_ref(out.approval.approver, approval["approver"], "context.approval.approver")
        if "approved_at" in approval:
            _fill_time(
                out.approval.approved_at, approval["approved_at"], "context.approval.approved_at"
            )
        if "ticket" in approval:
            out.approval.ticket = _string(approval["ticket"], "context.approval.ticket")
    attrs = _object(obj.get("attributes", {}), "context.attributes")
    for name, value in attrs.items():
        check_text(name, "context.attributes")
        out.attributes[name].CopyFrom(value_to_proto(value, f"context.attributes.{name}"))


def _fill_time(out: timestamp_pb2.Timestamp, value: Any, field: str) -> None:
    text = _string(value, field)
    try:
        out.FromJsonString(text)
    except ValueError as exc:
        raise InvalidRequest(field, f"{text!r} is not an RFC 3339 timestamp: {exc}") from exc


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(field, f"must be a JSON object, got {type(value).__name__}")
    return value


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(field, "is required and must be a string")
    check_text(value, field)
    return value


def nesting_path(text: str, limit: int = MAX_JSON_DEPTH) -> str | None:
    """The path of the first JSON container nested more than `limit` levels deep, else None.

    Without recursion, so that it works where `json.loads` gives up (its RecursionError
    names no field): `subject.properties.a[0].b`. Only called on a refused body.
    """
    frames: list[tuple[str, str | int | None]] = []  # open containers: kind, name in parent
    indices: list[int] = []  # the current element of each open array
    key: str | None = None  # the last key read in the innermost object
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            raw, i = text[i : end + 1], end + 1
            if frames and frames[-1][0] == "{" and text[i:].lstrip().startswith(":"):
                try:
                    key = str(json.loads(raw))
                except ValueError:
                    key = raw.strip('"')
            continue
        if ch in "{[":
            segment: str | int | None = None
            if frames:
                segment = (key or "") if frames[-1][0] == "{" else indices[-1]
            frames.append((ch, segment))
            if ch == "[":
                indices.append(0)
            if len(frames) > limit:
                return _render([s for _, s in frames if s is not None]) or "request"
            key = None
        elif ch in "}]" and frames:
            if frames.pop()[0] == "[":
                indices.pop()
        elif ch == "," and frames and frames[-1][0] == "[":
            indices[-1] += 1
        i += 1
    return None


def _render(segments: list[str | int]) -> str:
    out = ""
    for segment in segments:
        if isinstance(segment, int):
            out += f"[{segment}]"
        else:
            out += f".{segment}" if out else segment
    return out
