"""A plan as received (protobuf, or the JSON/YAML plan file) -> validated `PlannedStep`s.

Each step's request is validated exactly as `Authorize` validates one
(core/validate.py), its refusals re-rooted at `steps[i].request`. The unknown
fields are checked against the schema like any request field: a path must be
plain names (`approval.ticket`), declared by the schema in the action's
context (Cedar's own validator says, on a one-line probe policy), absent from
the request (an unknown is not also given), and a nested path needs its record
in the request (an entity's attributes come from the store, never unknown).
A refusal is INVALID_ARGUMENT naming `steps[i].unknown[j]`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import cedarpy

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.bundle import Bundle
from sidecar.core.errors import InvalidRequest
from sidecar.core.jsonreq import _fill_time, request_from_json
from sidecar.core.model import EntityUid
from sidecar.core.plan import PlannedStep
from sidecar.core.validate import Limits, check_text, member, request_from_proto

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_PATH_DEPTH = 8
# Declared-ness of (revision, action, path), from the probe; bounded.
_DECLARED: dict[tuple[str, EntityUid, str], str] = {}
_DECLARED_MAX = 4096


@dataclass(frozen=True, slots=True)
class Plan:
    run_id: str
    workflow_id: str
    steps: tuple[PlannedStep, ...]


def plan_from_proto(msg: pb.AuthorizePlanRequest, bundle: Bundle, limits: Limits) -> Plan:
    """Validate a whole plan; the first refusal names its field (`steps[3].unknown[0]`)."""
    check_text(msg.run_id, "run_id")
    check_text(msg.workflow_id, "workflow_id")
    if not msg.steps:
        raise InvalidRequest("steps", "is empty: a plan needs at least one step")
    if len(msg.steps) > limits.max_batch_items:
        raise InvalidRequest(
            "steps", f"{len(msg.steps)} steps, over the limit of {limits.max_batch_items}"
        )
    steps = []
    ids: set[str] = set()
    for i, step in enumerate(msg.steps):
        planned = step_from_proto(step, i, bundle, limits)
        if planned.step_id in ids:
            raise InvalidRequest(
                f"steps[{i}].step_id", f"{planned.step_id!r} names an earlier step too"
            )
        ids.add(planned.step_id)
        steps.append(planned)
    return Plan(msg.run_id, msg.workflow_id, tuple(steps))


def step_from_proto(msg: pb.PlanStep, index: int, bundle: Bundle, limits: Limits) -> PlannedStep:
    where = f"steps[{index}]"
    if not msg.HasField("request"):
        raise InvalidRequest(f"{where}.request", "is required")
    at = None
    if msg.HasField("at"):
        try:
            at = msg.at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise InvalidRequest(f"{where}.at", f"is not a valid timestamp: {exc}") from exc
    try:
        request = request_from_proto(msg.request, bundle, limits, now=at)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}.request.{exc.field}", exc.detail) from exc
    step_id = msg.step_id or str(request.context.get("step_id") or "") or f"step-{index}"
    check_text(step_id, f"{where}.step_id")
    unknown: list[str] = []
    for j, path in enumerate(msg.unknown):
        field = f"{where}.unknown[{j}]"
        _check_unknown(path, field, request.context, request.action, bundle, timed=at is not None)
        if path in unknown:
            raise InvalidRequest(field, f"{path!r} is listed twice")
        unknown.append(path)
    if at is None and "now" not in unknown:
        unknown.insert(0, "now")  # the step's time is known only when it runs
    return PlannedStep(step_id, request, tuple(unknown))


def _check_unknown(
    path: str,
    field: str,
    context: Mapping[str, Any],
    action: EntityUid,
    bundle: Bundle,
    *,
    timed: bool,
) -> None:
    names = path.split(".")
    if not path or not all(_NAME.fullmatch(n) for n in names):
        raise InvalidRequest(
            field, f"{path!r} is not a context path of plain names such as approval.ticket"
        )
    if len(names) > MAX_PATH_DEPTH:
        raise InvalidRequest(field, f"nests deeper than {MAX_PATH_DEPTH} names")
    if path == "now" and timed:
        raise InvalidRequest(field, "'now' is unknown only when the step gives no `at`")
    if path == "caller":
        raise InvalidRequest(field, "'caller' is set by the server, never by a plan")
    problem = _declared(bundle, action, names)
    if problem:
        raise InvalidRequest(field, problem)
    record: Any = context
    for depth, name in enumerate(names[:-1]):
        record = record.get(name) if isinstance(record, Mapping) else None
        if not isinstance(record, Mapping) or set(record) & {"__entity", "__extn"}:
            prefix = ".".join(names[: depth + 1])
            raise InvalidRequest(
                field,
                f"context.{prefix} must be a record given in the request to mark {path!r} "
                f"unknown (or mark {prefix!r} unknown as a whole)",
            )
    if isinstance(record, Mapping) and names[-1] in record:
        raise InvalidRequest(
            field, f"context.{path} is given in the request too; leave it out or known"
        )


def _declared(bundle: Bundle, action: EntityUid, names: list[str]) -> str:
    """'' when the schema declares `context.<names>` for `action`, else why not.

    Cedar's validator judges, on `context has a && context.a.b == context.a.b`: an
    undeclared last name is "not found"; an optional one is declared (Cedar only
    says its access is unguarded); any other error (a name under an entity or a
    primitive) refuses the path.
    """
    key = (bundle.revision, action, ".".join(names))
    known = _DECLARED.get(key)
    if known is not None:
        return known
    guards = ["context has " + names[0]]
    for depth in range(1, len(names) - 1):
        guards.append(f"context.{'.'.join(names[:depth])} has {names[depth]}")
    access = "context." + ".".join(names)
    condition = " && ".join([*guards[: len(names) - 1], f"{access} == {access}"])
    text = f"permit(principal, action == {action}, resource) when {{ {condition} }};"
    try:
        result = cedarpy.validate_policies(text, bundle.schema)
        errors = [str(e) for e in result.errors]
    except Exception as exc:  # noqa: BLE001 - a probe that fails refuses the path
        errors = [f"not found ({exc})"]
    # An optional field is declared: Cedar only says the access is unguarded.
    errors = [e for e in errors if "unable to guarantee safety of access to optional" not in e]
    problem = ""
    if any("not found" in e for e in errors):
        problem = (
            f"context.{'.'.join(names)} is not declared by the schema in the context of "
            f"{action}; mark a field the schema declares"
        )
    elif errors:
        problem = f"context.{'.'.join(names)} cannot be unknown: {errors[0]}"
    if len(_DECLARED) >= _DECLARED_MAX:
        _DECLARED.clear()
    _DECLARED[key] = problem
    return problem


# --- the JSON / YAML plan form -------------------------------------------------------------


def plan_from_json(data: Any) -> pb.AuthorizePlanRequest:
    """The plan file's form -> protobuf (then validated as a gRPC plan is):

        {"run_id": "...", "workflow_id": "...",
         "steps": [{"step_id": "grant", "principal": {...}, "action": {...},
                    "resource": {...}, "context": {...}, "unknown": ["now", "approval"],
                    "at": "2026-11-25T10:00:00Z"}]}

    A step's request is the JSON request form (core/jsonreq.py), either at the
    step's top level or under `request`. Unknown keys are refused, naming them.
    """
    if not isinstance(data, dict):
        raise InvalidRequest("plan", f"must be an object, got {type(data).__name__}")
    _known_keys(data, _PLAN_KEYS, "plan")
    msg = pb.AuthorizePlanRequest()
    for name in ("run_id", "workflow_id"):
        if name in data:
            if not isinstance(data[name], str):
                raise InvalidRequest(name, "must be a string")
            setattr(msg, name, data[name])
    steps = data.get("steps")
    if not isinstance(steps, list):
        raise InvalidRequest("steps", "is required and must be a list of steps")
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        if not isinstance(step, dict):
            raise InvalidRequest(where, f"must be an object, got {type(step).__name__}")
        _known_keys(step, _STEP_KEYS, where)
        if "request" in step and set(step) & set(_REQUEST_KEYS):
            raise InvalidRequest(
                where, "give the request under `request` or at the step's top level, not both"
            )
        out = msg.steps.add()
        step_id = step.get("step_id", step.get("id", ""))
        if not isinstance(step_id, str):
            raise InvalidRequest(f"{where}.step_id", "must be a string")
        out.step_id = step_id
        body = step.get("request", {k: v for k, v in step.items() if k in _REQUEST_KEYS})
        try:
            out.request.CopyFrom(request_from_json(body))
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}.request.{exc.field}", exc.detail) from exc
        unknown = step.get("unknown", [])
        if not isinstance(unknown, list) or not all(isinstance(u, str) for u in unknown):
            raise InvalidRequest(f"{where}.unknown", "must be a list of context paths")
        out.unknown.extend(unknown)
        if "at" in step:
            _fill_time(out.at, step["at"], f"{where}.at")
    return msg


_REQUEST_KEYS = ("principal", "action", "resource", "context")
_PLAN_KEYS = ("run_id", "workflow_id", "steps")
_STEP_KEYS = ("step_id", "id", "request", "unknown", "at", *_REQUEST_KEYS)


def _known_keys(obj: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """Unknown keys are refused, naming them: a misspelt `unknwn` would otherwise
    leave a run-time field known, and change the answer."""
    for key in obj:
        if key not in known:
            raise InvalidRequest(
                member(where if where != "plan" else "", str(key)),
                f"is not a field of a plan{' step' if where != 'plan' else ''}",
                near=(str(key)[:64], known),
            )
