"""The AuthZEN API over the shared decider: parsed JSON in, response JSON out.

No HTTP here (that is `wsgi.py`): handlers take one bundle snapshot per call,
translate (`translate.py`, `mapping.py`), and hand every Cedar request to the same
`Decider` as the gRPC API, so each answer, search candidates included, is
evaluated, audited and counted exactly like an `Authorize` call. A request
that cannot be understood raises `InvalidRequest` (HTTP 400); inside a batch
it voids only its item, which answers `"decision": false` with the error.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from sidecar.core.bundle import Bundle
from sidecar.core.errors import InvalidRequest
from sidecar.core.event import CallMeta
from sidecar.core.model import AuthzRequest, EntityUid
from sidecar.core.validate import Limits, effective_now_ms, to_ms
from sidecar.decision.decider import Decided, Decider
from sidecar.decision.identity import CallerContext
from sidecar.decision.metrics import Metrics
from sidecar.serving.authzen.mapping import Mapper
from sidecar.serving.authzen.schema import SchemaView, view_of
from sidecar.serving.authzen.translate import (
    RESERVED_CONTEXT,
    Action,
    Evaluation,
    Search,
    SearchKind,
    explain_requested,
    parse_evaluation,
    parse_evaluations,
    parse_options,
    parse_search,
)

log = logging.getLogger(__name__)
DEFAULT_PAGE_SIZE: Final = 100
_TOKEN_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class _Call:
    """One HTTP request's view of the world: one bundle, one caller, one clock reading."""

    mapper: Mapper
    meta: CallMeta
    at: datetime
    started: float


@dataclass(frozen=True, slots=True)
class _Index:
    """What searches and mapping need from one bundle, computed once per bundle."""

    bundle: Bundle
    view: SchemaView
    ids_by_type: Mapping[str, tuple[str, ...]]


class AuthzenService:
    def __init__(
        self,
        bundle: Callable[[], Bundle],
        decider: Decider,
        limits: Limits,
        metrics: Metrics,
    ) -> None:
        self._bundle = bundle
        self._decider = decider
        self._limits = limits
        self._metrics = metrics
        self._index: _Index | None = None
        self._caller = CallerContext()  # `context.caller` where the schema declares it

    # -- evaluation

    @property
    def bundle(self) -> Callable[[], Bundle]:
        """The bundle holder's snapshot function (stepguard's plan path reads it too)."""
        return self._bundle

    @property
    def limits(self) -> Limits:
        return self._limits

    def evaluation(self, body: Mapping[str, Any], meta: CallMeta, started: float) -> dict[str, Any]:
        """Access Evaluation: `{"decision": bool}`; a deny is an answer, not an error."""
        return self._single(parse_evaluation(body), explain_requested(body), meta, started)

    def _single(
        self, ev: Evaluation, explain: bool, meta: CallMeta, started: float
    ) -> dict[str, Any]:
        call = self._call(meta, started)
        return _answer(self._decide(call, call.mapper.request(ev)), explain)

    def evaluations(
        self, body: Mapping[str, Any], meta: CallMeta, started: float
    ) -> dict[str, Any]:
        """Access Evaluations: one answer per item, in order, cut short as the semantic says."""
        parsed = parse_evaluations(body, self._limits)
        if isinstance(parsed, Evaluation):  # no items: the backwards-compatible single form
            return self._single(parsed, parse_options(body).explain, meta, started)
        semantic, explain = parsed.options.semantic, parsed.options.explain
        call = self._call(meta, started)
        out: list[dict[str, Any]] = []
        for i, item in enumerate(parsed.items):
            answer = self._item(call, i, item, explain)
            out.append(answer)
            if semantic == "deny_on_first_deny" and not answer["decision"]:
                note = answer.setdefault("context", {})
                if "error" not in note:
                    note["code"] = "200"
                note["reason"] = "deny_on_first_deny"
                break
            if semantic == "permit_on_first_permit" and answer["decision"]:
                break
        return {"evaluations": out}

    def _item(
        self, call: _Call, i: int, item: Evaluation | InvalidRequest, explain: bool
    ) -> dict[str, Any]:
        """One batch item; whatever goes wrong denies this item only."""
        try:
            if isinstance(item, InvalidRequest):
                raise item
            decided = self._decide(call, call.mapper.request(item))
        except InvalidRequest as exc:
            self.count_invalid(exc.field)
            prefix = "" if exc.field.startswith("evaluations[") else f"evaluations[{i}]."
            return _error(400, f"{prefix}{exc}")
        except Exception:  # this item fails closed; the rest go on
            log.exception("AuthZEN evaluations item %d failed", i)
            return _error(500, f"evaluations[{i}]: internal error; not authorized")
        return _answer(decided, explain)

    # -- search
    def search(
        self, kind: SearchKind, body: Mapping[str, Any], meta: CallMeta, started: float
    ) -> dict[str, Any]:
        """Subject, Resource or Action Search: the permitted candidates, a page at a time.

        Candidates come from the entity store (subjects, resources) or the
        schema (actions that apply to the subject's and resource's types), in
        id order. Each is decided like an evaluation. A page ends when it holds
        `page.limit` results (default 100) or when `max_batch_items` candidates
        were evaluated for this call; `next_token` then resumes after the last
        candidate looked at.
        """
        query = parse_search(kind, body)
        # Checked here too, not only when a candidate is mapped: a search with no
        # candidates must refuse the same requests as one with some.
        for name, why in RESERVED_CONTEXT.items():
            if name in query.context:
                raise InvalidRequest(f"context.{name}", f"{why}; rename it")
        index = self._current()
        call = self._call(meta, started, index)
        after = _read_token(query)
        limit = DEFAULT_PAGE_SIZE
        if query.page is not None and query.page.limit is not None:
            limit = query.page.limit
        limit = min(limit, self._limits.max_batch_items)
        keys, permitted, render = self._candidates(query, index, call)
        pos = 0 if after is None else bisect.bisect_right(keys, after)
        results: list[dict[str, str]] = []
        looked = 0
        while pos < len(keys) and len(results) < limit and looked < self._limits.max_batch_items:
            key = keys[pos]
            pos += 1
            looked += 1
            if permitted(key):
                results.append(render(key))
        more = pos < len(keys)
        out: dict[str, Any] = {}
        if query.page is not None or more:
            cursor = keys[pos - 1] if looked else after
            out["page"] = {
                "next_token": _token(query, cursor) if more else "",
                "count": len(results),
            }
        out["results"] = results
        return out

    def _candidates(
        self, query: Search, index: _Index, call: _Call
    ) -> tuple[tuple[str, ...], Callable[[str], bool], Callable[[str], dict[str, str]]]:
        """Sorted candidate keys, a decision for one key, and its rendering as a result."""
        mapper = call.mapper

        def decide(request: AuthzRequest) -> bool:
            return self._decide(call, request).result.allowed

        if query.kind == "action":
            subject = mapper.entity(query.subject, "subject")
            resource = mapper.entity(query.resource, "resource")
            names = sorted(
                sig.uid.id
                for sig in index.view.actions.values()
                if sig.applies_to(query.subject.type, query.resource.type)
                and index.view.action_uid(sig.uid.id) == sig.uid
            )

            def action_permitted(name: str) -> bool:
                uid = mapper.action_uid(name)
                context = mapper.context(query.context, Action(name, {}), uid)
                return decide(mapper.assemble(subject, uid, resource, context))

            return tuple(names), action_permitted, lambda name: {"name": name}

        assert query.action is not None
        action = mapper.action_uid(query.action.name)
        context = mapper.context(query.context, query.action, action)
        searched = query.subject if query.kind == "subject" else query.resource
        fixed = (
            mapper.entity(query.resource, "resource")
            if query.kind == "subject"
            else mapper.entity(query.subject, "subject")
        )
        keys = index.ids_by_type.get(searched.type, ())

        def entity_permitted(key: str) -> bool:
            try:
                candidate = mapper.entity(replace(searched, id=key), query.kind)
            except InvalidRequest:
                return False  # the store contradicts the searched-for properties: no match
            if query.kind == "subject":
                return decide(mapper.assemble(candidate, action, fixed, context))
            return decide(mapper.assemble(fixed, action, candidate, context))

        type_ = searched.type
        return keys, entity_permitted, lambda key: {"type": type_, "id": key}

    # -- shared
    def _decide(self, call: _Call, request: AuthzRequest) -> Decided:
        """The gRPC API's decider: same evaluation, audit event and metrics."""
        return self._decider.decide(
            call.mapper.bundle, request, call.meta, at=call.at, started=call.started
        )

    def _current(self) -> _Index:
        bundle = self._bundle()
        index = self._index
        if index is None or index.bundle is not bundle:
            ids: dict[str, list[str]] = {}
            for uid in bundle.entity_json:
                ids.setdefault(uid.type, []).append(uid.id)
            index = _Index(
                bundle,
                view_of(bundle.schema),
                MappingProxyType({t: tuple(sorted(v)) for t, v in ids.items()}),
            )
            self._index = index  # one reference store: safe across worker threads
        return index

    def _call(self, meta: CallMeta, started: float, index: _Index | None = None) -> _Call:
        """One bundle snapshot and one clock reading for everything this request decides."""
        index = index or self._current()
        at = self._decider.now()

        at_ms, granularity = to_ms(at), self._decider.now_granularity_ms

        def now_ms(not_before_ms: int | None, not_after_ms: int | None) -> int:
            return effective_now_ms(at_ms, granularity, not_before_ms, not_after_ms)

        bundle = index.bundle

        def caller(action: EntityUid) -> Mapping[str, str] | None:
            return self._caller.context_for(bundle, action, meta.identity)

        mapper = Mapper(index.bundle, index.view, self._limits, now_ms, caller)
        return _Call(mapper, meta, at, started)

    def count_invalid(self, field: str) -> None:
        top = field.split("[", 1)[0].split(".", 1)[0] or "request"
        self._metrics.invalid_requests.labels(api="authzen", field=top).inc()

    def metadata(self, base: str) -> dict[str, Any]:
        """PDP metadata (`/.well-known/authzen-configuration`) for a PDP at `base`."""
        return {
            "policy_decision_point": base,
            "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
            "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
            "search_subject_endpoint": f"{base}/access/v1/search/subject",
            "search_resource_endpoint": f"{base}/access/v1/search/resource",
            "search_action_endpoint": f"{base}/access/v1/search/action",
        }


def _answer(decided: Decided, explain: bool) -> dict[str, Any]:
    """A Decision: only `decision` unless the caller asked for the explanation, or the
    ALLOW binds the step to obligations (a duty for the PEP, so never left out)."""
    result = decided.result
    out: dict[str, Any] = {"decision": result.allowed}
    duties = result.obligations
    if duties.max_credential_ttl is not None or duties.revoke_within is not None:
        out["context"] = {"obligations": duties.to_json()}
    if explain:
        context: dict[str, Any] = {
            "decision_id": decided.decision_id,
            "policy_revision": result.revision,
            "policy_errors": result.policy_errors.value,
            "reason": result.summary(),
            "determining_policies": [{"id": r.id, "source": r.source} for r in result.reasons],
        }
        if result.errors:
            context["errors"] = [
                {"policy": e.policy_id, "message": e.message} for e in result.errors
            ]
        if "context" in out:
            context["obligations"] = out["context"]["obligations"]
        out["context"] = context
    return out


def _error(status: int, message: str) -> dict[str, Any]:
    return {"decision": False, "context": {"error": {"status": status, "message": message}}}


def _token(query: Search, after: str | None) -> str:
    data = json.dumps({"v": _TOKEN_VERSION, "q": query.fingerprint, "after": after})
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def _read_token(query: Search) -> str | None:
    """Where the previous page stopped; a token from another query is refused."""
    token = query.page.token if query.page is not None else None
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("page.token", "is not a token this PDP issued") from exc
    if not isinstance(data, dict) or data.get("v") != _TOKEN_VERSION:
        raise InvalidRequest("page.token", "is not a token this PDP issued")
    if data.get("q") != query.fingerprint:
        raise InvalidRequest(
            "page.token",
            "was issued for a different query; repeat the request unchanged but for page.token",
        )
    after = data.get("after")
    if after is not None and not isinstance(after, str):
        raise InvalidRequest("page.token", "is not a token this PDP issued")
    return after
