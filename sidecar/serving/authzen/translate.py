"""AuthZEN JSON -> engine requests, or an `InvalidRequest` naming the field.

Two steps, both pure (no I/O, no clock):

1. *Shape*: `parse_*` check what the AuthZEN 1.0 information model requires
   (objects, strings, required keys) and ignore every key it does not define.
2. *Mapping* (`Mapper`, mapping.py): subject and resource become Cedar entities
   `type::"id"`; their `properties` become the attributes of entities the
   entity store does not hold, as far as the bundle's `request-entities.yaml`
   admits them (for those it holds, the store is the source of truth: see
   `Mapper.entity`); a subject or resource the store lacks, of a type not
   admitted, is a DENY saying so; `action.name` names an action of the schema;
   `context` becomes the Cedar context, with `action.properties` under
   `context.action_properties` and the server's clock under `context.now`.
   Only what the schema declares is kept (see `schema.py` for why).

What only Cedar can judge (a value of the wrong type for its declared
attribute, an unknown entity type, an action the principal type may not take)
is left to Cedar, whose refusal is an audited DENY with diagnostics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sidecar.core.errors import InvalidRequest
from sidecar.core.model import EntityUid
from sidecar.core.validate import (
    Limits,
    check_text,
)

ACTION_PROPERTIES: Final = "action_properties"
# Context names the server sets; a PEP may not send them.
RESERVED_CONTEXT: Final = {
    "now": "is set by the server from its own clock",
    "caller": "is set by the server from the caller's authenticated identity",
    ACTION_PROPERTIES: "is where action.properties go; send them there",
}
SEMANTICS: Final = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
SearchKind = Literal["subject", "resource", "action"]
# The request's time bound (ms, when it has one) -> `context.now` in ms: the
# decider's rule (clock granularity, never across the bound), as on gRPC.
NowMs = Callable[[int | None, int | None], int]
# An action -> `{"caller": identity}` when its context takes the authenticated
# caller (identity.CallerContext), as on gRPC; None otherwise.
CallerFor = Callable[[EntityUid], Mapping[str, str] | None]


@dataclass(frozen=True, slots=True)
class Entity:
    """An AuthZEN Subject or Resource."""

    type: str
    id: str
    properties: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    properties: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One Access Evaluation request, defaults already applied."""

    subject: Entity
    action: Action
    resource: Entity
    context: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Options:
    """`options` of an Access Evaluations request (and, as an extension, of a single one)."""

    semantic: str = "execute_all"
    # stepguard extension: decision context (id, revision, reasons) in every answer.
    explain: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    """An Access Evaluations request: each item is an evaluation or the error that voids it."""

    items: tuple[Evaluation | InvalidRequest, ...]
    options: Options


@dataclass(frozen=True, slots=True)
class Page:
    token: str | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Search:
    """A Subject, Resource or Action Search request.

    The searched-for entity keeps only its type (and properties): its id is
    ignored, as the spec requires. For an action search, `action` is None.
    """

    kind: SearchKind
    subject: Entity
    action: Action | None
    resource: Entity
    context: Mapping[str, Any]
    page: Page | None
    fingerprint: str  # identifies the query across pages


# -- shape -------------------------------------------------------------------------------


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(field, f"must be a JSON object, got {_kind(value)}")
    return value


def _string(obj: Mapping[str, Any], key: str, field: str, *, empty: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        raise InvalidRequest(f"{field}.{key}", "is required")
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}.{key}", f"must be a string, got {_kind(value)}")
    if not value and not empty:
        raise InvalidRequest(f"{field}.{key}", "must not be empty")
    check_text(value, f"{field}.{key}")
    return value


def _optional_object(obj: Mapping[str, Any], key: str, field: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return {} if value is None else _object(value, f"{field}.{key}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _required(body: Mapping[str, Any], key: str, field: str) -> Any:
    value = body.get(key)
    if value is None:
        raise InvalidRequest(field, "is required")
    return value


def parse_entity(value: Any, field: str, *, need_id: bool = True) -> Entity:
    obj = _object(value, field)
    type_ = _string(obj, "type", field)
    id_ = _string(obj, "id", field, empty=True) if need_id else ""
    return Entity(type_, id_, _optional_object(obj, "properties", field))


def parse_action(value: Any, field: str) -> Action:
    obj = _object(value, field)
    return Action(_string(obj, "name", field), _optional_object(obj, "properties", field))


def parse_context(value: Any, field: str) -> Mapping[str, Any]:
    return {} if value is None else _object(value, field)


def parse_evaluation(body: Mapping[str, Any], prefix: str = "") -> Evaluation:
    """A complete evaluation: subject, action and resource are required."""
    return Evaluation(
        parse_entity(_required(body, "subject", prefix + "subject"), prefix + "subject"),
        parse_action(_required(body, "action", prefix + "action"), prefix + "action"),
        parse_entity(_required(body, "resource", prefix + "resource"), prefix + "resource"),
        parse_context(body.get("context"), prefix + "context"),
    )


def explain_requested(body: Mapping[str, Any]) -> bool:
    """`options.stepguard_explain` on a single evaluation, whose spec has no `options`:
    read if well formed, otherwise ignored like any unknown field."""
    options = body.get("options")
    return isinstance(options, dict) and options.get("stepguard_explain") is True


def parse_options(body: Mapping[str, Any]) -> Options:
    """`options` of an Access Evaluations request, where the spec defines it."""
    value = body.get("options")
    options = {} if value is None else _object(value, "options")
    semantic = options.get("evaluations_semantic", "execute_all")
    if semantic not in SEMANTICS:
        raise InvalidRequest(
            "options.evaluations_semantic", f"{semantic!r} is not one of {', '.join(SEMANTICS)}"
        )
    explain = options.get("stepguard_explain", False)
    if not isinstance(explain, bool):
        raise InvalidRequest(
            "options.stepguard_explain", f"must be a boolean, got {_kind(explain)}"
        )
    return Options(semantic, explain)


def parse_evaluations(body: Mapping[str, Any], limits: Limits) -> Evaluation | Batch:
    """An Access Evaluations request; without items it is a single evaluation.

    Top-level `subject`, `action`, `resource` and `context` are defaults; an
    item's own key replaces the default whole. Malformed defaults void the
    whole request; a malformed or incomplete item voids that item only.
    """
    options = parse_options(body)
    items = body.get("evaluations")
    if items is None or items == []:
        return parse_evaluation(body)
    if not isinstance(items, list):
        raise InvalidRequest("evaluations", f"must be an array, got {_kind(items)}")
    if len(items) > limits.max_batch_items:
        raise InvalidRequest(
            "evaluations", f"{len(items)} items, over the limit of {limits.max_batch_items}"
        )
    defaults: dict[str, Any] = {"context": parse_context(body.get("context"), "context")}
    for key in ("subject", "resource"):
        if body.get(key) is not None:
            defaults[key] = parse_entity(body[key], key)
    if body.get("action") is not None:
        defaults["action"] = parse_action(body["action"], "action")
    out: list[Evaluation | InvalidRequest] = []
    for i, item in enumerate(items):
        try:
            out.append(_item(item, f"evaluations[{i}]", defaults))
        except InvalidRequest as exc:
            out.append(exc)
    return Batch(tuple(out), options)


def _item(value: Any, field: str, defaults: Mapping[str, Any]) -> Evaluation:
    obj = _object(value, field)

    def part(key: str, parse: Any) -> Any:
        if obj.get(key) is not None:
            return parse(obj[key], f"{field}.{key}")
        if key in defaults:
            return defaults[key]
        raise InvalidRequest(f"{field}.{key}", "is required, in the item or at the top level")

    return Evaluation(
        part("subject", parse_entity),
        part("action", parse_action),
        part("resource", parse_entity),
        part("context", parse_context),
    )


def parse_search(kind: SearchKind, body: Mapping[str, Any]) -> Search:
    """A search request: the searched-for entity needs only its type; inputs are complete."""
    subject = parse_entity(
        _required(body, "subject", "subject"), "subject", need_id=kind != "subject"
    )
    action = None
    if kind != "action":
        action = parse_action(_required(body, "action", "action"), "action")
    resource = parse_entity(
        _required(body, "resource", "resource"), "resource", need_id=kind != "resource"
    )
    context = parse_context(body.get("context"), "context")
    page = _page(body.get("page"))
    query = {
        "kind": kind,
        "subject": body["subject"],
        "action": body.get("action") if kind != "action" else None,
        "resource": body["resource"],
        "context": context,
        "limit": page.limit if page else None,
    }
    canonical = json.dumps(query, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate is refused with 400 when mapped, not here with 500
    fingerprint = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return Search(kind, subject, action, resource, context, page, fingerprint)


def _page(value: Any) -> Page | None:
    if value is None:
        return None
    obj = _object(value, "page")
    token = obj.get("token")
    if token is not None and not isinstance(token, str):
        raise InvalidRequest("page.token", f"must be a string, got {_kind(token)}")
    limit = obj.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        # 0 would answer an empty page whose next_token resumes where it started:
        # a PEP following the tokens would loop forever.
        raise InvalidRequest("page.limit", "must be a positive integer (1 or more)")
    if "properties" in obj:
        _optional_object(obj, "properties", "page")
    return Page(token or None, limit)
