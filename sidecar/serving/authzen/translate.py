"""AuthZEN JSON -> engine requests, or an `InvalidRequest` naming the field.

Two steps, both pure (no I/O, no clock):

1. *Shape*: `parse_*` check what the AuthZEN 1.0 information model requires
   (objects, strings, required keys) and ignore every key it does not define.
2. *Mapping* (`Mapper`): subject and resource become Cedar entities
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
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sidecar.core.bundle import Bundle
from sidecar.core.errors import InvalidRequest
from sidecar.core.model import AuthzRequest, CedarJson, EntityData, EntityUid
from sidecar.core.validate import (
    RESERVED_KEYS,
    Limits,
    admitted_attributes,
    cedar_datetime,
    check_long,
    check_text,
    member,
    parse_cedar_datetime,
    reserved_message,
    time_bound_ms,
    to_ms,
    unknown_entity_denial,
)
from sidecar.serving.authzen.schema import EMPTY, CedarType, Record, SchemaView, SetOf

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


# -- mapping -----------------------------------------------------------------------------

_DROP: Final = object()


class Mapper:
    """Maps parsed AuthZEN requests onto one bundle's Cedar requests.

    `now_ms` gives `context.now` where the schema declares it; None leaves it
    out (for tests of the mapping alone).
    """

    def __init__(
        self,
        bundle: Bundle,
        view: SchemaView,
        limits: Limits,
        now_ms: NowMs | None = None,
        caller: CallerFor | None = None,
    ) -> None:
        self.bundle = bundle
        self.view = view
        self._depth = limits.max_attribute_depth
        self._now_ms = now_ms
        self._caller = caller

    def action_uid(self, name: str) -> EntityUid:
        """The schema's action of that name; otherwise `Action::"name"`, which Cedar refuses."""
        return self.view.action_uid(name) or EntityUid("Action", name)

    def entity(self, entity: Entity, field: str) -> EntityData:
        """The entity as Cedar sees it for this call.

        An entity the store does not hold gets, as attributes, the properties
        `request-entities.yaml` admits for its type, as the gRPC API admits its
        `attributes` (issue 16: a request never grants itself rights); AuthZEN
        must accept any properties, so the others are ignored where gRPC
        refuses them. For one it holds, the store is the source of truth, as
        on the gRPC API: properties may restate it and one that contradicts it
        is refused; one it does not give the entity is ignored (adding it
        would let a PEP grant a stored subject a role), where gRPC refuses it.
        """
        uid = EntityUid(entity.type, entity.id)
        stored = self.bundle.entity_json.get(uid)
        if stored is None:
            plain = self._plain(entity.properties, f"{field}.properties", 0)
            return EntityData(uid, admitted_attributes(uid, self.bundle, plain))
        attrs = self._record(
            entity.properties, self.view.shape(entity.type), f"{field}.properties", 0
        )
        known = stored.get("attrs") or {}
        for name, value in attrs.items():
            if name in known and known[name] != value:
                raise InvalidRequest(
                    f"{field}.properties.{name}",
                    f"conflicts with the value the entity store holds for {uid}",
                )
        return EntityData(uid)

    def context(self, context: Mapping[str, Any], action: Action, uid: EntityUid) -> dict[str, Any]:
        """The Cedar context: `context` as sent, action properties, `now`, `caller`.

        Every context key reaches Cedar, as the gRPC API's attributes do: one the
        action's schema context does not declare makes Cedar refuse the request,
        a deny on both APIs (issue 16: AuthZEN used to drop it and allow).
        Only `action.properties`, which gRPC cannot send, keep just what the
        schema declares under `context.action_properties`.
        """
        for name, why in RESERVED_CONTEXT.items():
            if name in context:
                raise InvalidRequest(f"context.{name}", f"{why}; rename it")
        sig = self.view.actions.get(uid)
        shape = sig.context if sig is not None else EMPTY
        out = self._plain(context, "context", 0)
        declared = shape.attrs.get(ACTION_PROPERTIES)
        if declared is not None and action.properties:
            value = self._keep(action.properties, declared, "action.properties", 0)
            if value is not _DROP:
                out[ACTION_PROPERTIES] = value
        bounds = _time_bound_ms(out)
        if self._now_ms is not None and "now" in shape.attrs:
            out["now"] = cedar_datetime(self._now_ms(*bounds))
        if self._caller is not None and (caller := self._caller(uid)):
            out.update(caller)
        return out

    def request(self, ev: Evaluation) -> AuthzRequest:
        principal = self.entity(ev.subject, "subject")
        resource = self.entity(ev.resource, "resource")
        action = self.action_uid(ev.action.name)
        context = self.context(ev.context, ev.action, action)
        return self.assemble(principal, action, resource, context)

    def assemble(
        self,
        principal: EntityData,
        action: EntityUid,
        resource: EntityData,
        context: dict[str, Any],
    ) -> AuthzRequest:
        """The Cedar request. A subject or resource the store lacks, of a type its
        request-entities.yaml does not admit, is a DENY saying so (AuthZEN answers an
        unknown subject with a decision, not an error; gRPC refuses such a principal)."""
        denial = unknown_entity_denial("subject", principal.uid, self.bundle)
        denial = denial or unknown_entity_denial("resource", resource.uid, self.bundle)
        supplied = tuple(e for e in (principal, resource) if e.attrs)
        # `context` holds the bound in the one form `context()` rewrote it to.
        bound = time_bound_ms(context)
        return AuthzRequest(principal.uid, action, resource.uid, context, supplied, denial, *bound)

    # -- values
    def _plain(self, obj: Mapping[str, Any], field: str, depth: int) -> dict[str, Any]:
        """A record as sent, but for null members and elements (absent); depth-checked.

        Its keys are data: Cedar's escape keys (`__entity`, `__extn`, `__expr`)
        are refused here, where they are not the one key of an exact escape.
        """
        out: dict[str, Any] = {}
        for name, value in obj.items():
            check_text(name, field)
            if name in RESERVED_KEYS:  # data, never an escape (issue 16)
                raise InvalidRequest(member(field, name), reserved_message(name))
            if value is not None:
                out[name] = self._plain_value(value, member(field, name), depth + 1)
        return out

    def _plain_value(self, value: Any, field: str, depth: int) -> Any:
        if depth > self._depth:
            raise InvalidRequest(field, "nests deeper than the attribute depth limit")
        if isinstance(value, dict) and not _is_escape(value):
            return self._plain(value, field, depth)
        if isinstance(value, list):
            return [
                self._plain_value(item, f"{field}[{i}]", depth + 1)
                for i, item in enumerate(value)
                if item is not None
            ]
        self._check_depth(value, field, depth)
        return value

    def _record(
        self, obj: Mapping[str, Any], record: Record, field: str, depth: int
    ) -> dict[str, CedarJson]:
        out: dict[str, CedarJson] = {}
        for name, value in obj.items():
            declared = record.attrs.get(name)
            if declared is None:
                continue  # not in the schema: no policy can read it
            kept = self._keep(value, declared, member(field, name), depth + 1)
            if kept is not _DROP:
                out[name] = kept
        return out

    def _keep(self, value: Any, typ: CedarType, field: str, depth: int) -> Any:
        """The declared part of a value; null means absent. Types are Cedar's to judge."""
        if depth > self._depth:
            raise InvalidRequest(field, "nests deeper than the attribute depth limit")
        if value is None:
            return _DROP
        typ = self.view.resolve(typ)
        if isinstance(typ, Record) and isinstance(value, dict) and not _is_escape(value):
            return self._record(value, typ, field, depth)
        if isinstance(typ, SetOf) and isinstance(value, list):
            kept = (
                self._keep(item, typ.element, f"{field}[{i}]", depth + 1)
                for i, item in enumerate(value)
            )
            return [k for k in kept if k is not _DROP]
        self._check_depth(value, field, depth)
        return value

    def _check_depth(self, value: Any, field: str, depth: int) -> None:
        """Depth, and what the audit trail can record (the trail records every kept value)."""
        if depth > self._depth:
            raise InvalidRequest(field, "nests deeper than the attribute depth limit")
        if isinstance(value, str):
            check_text(value, field)
        elif isinstance(value, int) and not isinstance(value, bool):
            check_long(value, field)
        elif isinstance(value, dict):
            escape = _is_escape(value)
            for name, item in value.items():
                check_text(name, field)
                if name in RESERVED_KEYS and not escape:  # data, never an escape (issue 16)
                    raise InvalidRequest(member(field, name), reserved_message(name))
                self._check_depth(item, member(field, name), depth + 1)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._check_depth(item, f"{field}[{i}]", depth + 1)


def _time_bound_ms(context: dict[str, Any]) -> tuple[int | None, int | None]:
    """`context.time_bound` in ms, its bounds rewritten in the one form Cedar then reads.

    The `now` clamp (validate.effective_now_ms) must see the instant Cedar will
    compare with `now`, whatever form the PEP wrote it in: a string, a
    `datetime` call with `arg` or `args`, an `offset(datetime, duration)`
    (validate.parse_cedar_datetime). So each bound is parsed here, refused (400)
    when it cannot be, and replaced by the canonical `datetime("...Z")` of the
    same instant, which is all Cedar gets.
    """
    bound = context.get("time_bound")
    if not isinstance(bound, dict) or _is_escape(bound):
        return None, None  # absent, or not a record: Cedar refuses it (a deny)
    bound = context["time_bound"] = dict(bound)
    out: list[int | None] = []
    for name in ("not_before", "not_after"):
        value = bound.get(name)
        if value is None:
            out.append(None)
            continue
        ms = parse_cedar_datetime(value)
        if ms is None or not _MIN_MS <= ms <= _MAX_MS:
            raise InvalidRequest(
                f"context.time_bound.{name}",
                "is not a datetime stepguard can read: send an RFC 3339 instant in Cedar's "
                'form, such as "2026-11-25T18:00:00Z" or "2026-11-25T18:00:00.000+0100"',
            )
        bound[name] = cedar_datetime(ms)
        out.append(ms)
    return out[0], out[1]


_MIN_MS: Final = to_ms(datetime(1, 1, 1, tzinfo=UTC))
_MAX_MS: Final = to_ms(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC))


def _is_escape(value: Mapping[str, Any]) -> bool:
    """Cedar's JSON escapes for entity references and extension values."""
    return len(value) == 1 and next(iter(value)) in ("__entity", "__extn")
