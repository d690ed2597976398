"""Pure evaluation: (bundle, request) -> Result. No I/O, no clock, never raises.

Anything that goes wrong while deciding, in cedarpy or here, becomes a DENY
whose diagnostics say what happened. Only a Cedar `Allow` is ever an ALLOW,
and under the default `PolicyErrors.DENY` only one with no policy errors:
Cedar skips a policy whose evaluation errors, so a `forbid` that errors would
otherwise let a permit through (docs/api.md, "Policies that error").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import cedarpy
import orjson

from sidecar.core.bundle import Bundle
from sidecar.core.entitystore import encode, named_in, reachable, slice_text
from sidecar.core.model import (
    AuthzRequest,
    Decision,
    EntityData,
    EntityUid,
    EvalError,
    Obligations,
    PolicyErrors,
    PolicyRef,
    Result,
)

_POLICY_ERROR = re.compile(r"error while evaluating policy `(?P<id>[^`]*)`: (?P<msg>.*)", re.DOTALL)


def evaluate(
    bundle: Bundle,
    request: AuthzRequest,
    *,
    indexed: bool = True,
    policy_errors: PolicyErrors = PolicyErrors.DENY,
) -> Result:
    """Decide `request`. `indexed=False` evaluates every policy (the index's reference).

    `policy_errors` says what an erroring policy does: under `DENY` (the
    default) Cedar's ALLOW stands only when no evaluated policy errored. The
    index leaves out only policies whose scope cannot match, and Cedar never
    evaluates the conditions of those, so the errors are the same either way.
    """
    try:
        return _evaluate(bundle, request, indexed, policy_errors)
    except Exception as exc:  # noqa: BLE001 - fail closed on anything
        message = f"evaluation failed: {type(exc).__name__}: {exc}"
        return deny(bundle.revision, message, policy_errors)


def deny(revision: str, message: str, policy_errors: PolicyErrors = PolicyErrors.DENY) -> Result:
    """A DENY carrying one diagnostic and no determining policy."""
    return Result(
        Decision.DENY, (), (EvalError("", message),), Obligations(), revision, policy_errors
    )


def evaluate_many(
    bundle: Bundle,
    requests: Sequence[AuthzRequest],
    *,
    policy_errors: PolicyErrors = PolicyErrors.DENY,
) -> list[Result]:
    """Decide every request, in order: exactly `[evaluate(bundle, r) for r in requests]`.

    One cedarpy call per distinct (policy set, entity set) among the requests,
    not one per request: an `AuthorizeBatch` or a stream window pays the call's
    fixed cost once. Cedar decides each request of a call on its own. A request
    that cannot be batched (validation's denial, entities rejected, a context
    orjson cannot encode) gets `evaluate`'s answer; if a call fails as a whole,
    each of its requests is decided alone, so one request never changes another's.
    """
    results: list[Result | None] = [None] * len(requests)
    groups: dict[tuple[int, int], _Group] = {}
    for i, request in enumerate(requests):
        try:
            prepared = _prepare(bundle, request, True, policy_errors)
        except Exception:  # noqa: BLE001 - decided alone, failing closed there
            prepared = None
        if isinstance(prepared, Result):
            results[i] = prepared
            continue
        if prepared is None or prepared.context_json is None:
            results[i] = evaluate(bundle, request, policy_errors=policy_errors)
            continue
        key = (id(prepared.policy_set), id(prepared.entities))
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(prepared.policy_set, prepared.entities)
        group.indices.append(i)
        group.calls.append(prepared.call())
    for group in groups.values():
        try:
            answers = _is_authorized_many(group, bundle.schema)
            for i, answer in zip(group.indices, answers, strict=True):
                results[i] = _answer(bundle, answer, policy_errors)
        except Exception:  # noqa: BLE001 - each decided alone, failing closed there
            for i in group.indices:
                results[i] = evaluate(bundle, requests[i], policy_errors=policy_errors)
    return [
        r if r is not None else deny(bundle.revision, "not decided", policy_errors) for r in results
    ]


class _Group:
    """Requests decided by one cedarpy call: the same policy set and entity set."""

    __slots__ = ("calls", "entities", "indices", "policy_set")

    def __init__(self, policy_set: cedarpy.PolicySet, entities: cedarpy.Entities) -> None:
        self.policy_set = policy_set
        self.entities = entities
        self.indices: list[int] = []
        self.calls: list[dict[str, Any]] = []


class _Prepared:
    """One request ready for cedarpy: its handles and its Cedar request."""

    __slots__ = ("context", "context_json", "entities", "policy_set", "request")
    entities: cedarpy.Entities  # the request's entity set, set by _prepare before any call

    def __init__(self, request: AuthzRequest, policy_set: cedarpy.PolicySet) -> None:
        self.request = request
        self.policy_set = policy_set
        self.context = dict(request.context)
        try:
            self.context_json: str | None = orjson.dumps(self.context).decode()
        except TypeError:  # what orjson cannot encode goes through cedarpy's own wrapper
            self.context_json = None

    def call(self) -> dict[str, Any]:
        """The request as cedarpy's extension takes it (the context already JSON)."""
        r = self.request
        return {
            "principal": r.principal.to_json(),
            "action": r.action.to_json(),
            "resource": r.resource.to_json(),
            "context": self.context_json if self.context_json is not None else self.context,
        }


def _evaluate(
    bundle: Bundle, request: AuthzRequest, indexed: bool, policy_errors: PolicyErrors
) -> Result:
    prepared = _prepare(bundle, request, indexed, policy_errors)
    if isinstance(prepared, Result):
        return prepared
    return _answer(bundle, _is_authorized(prepared, bundle.schema), policy_errors)


def _prepare(
    bundle: Bundle, request: AuthzRequest, indexed: bool, policy_errors: PolicyErrors
) -> _Prepared | Result:
    """The handles and Cedar request for `request`, or the DENY it gets without Cedar."""
    if request.denial:  # validation's verdict (an unknown resource): no policy is asked
        return deny(bundle.revision, request.denial, policy_errors)
    policy_set = bundle.policy_set
    if indexed and bundle.index is not None:
        policy_set = bundle.index.policy_set_for(request)
    prepared = _Prepared(request, policy_set)
    try:
        prepared.entities = _entities_for(bundle, request)
    except ValueError as exc:
        return deny(bundle.revision, f"request entities rejected: {exc}", policy_errors)
    return prepared


def _answer(bundle: Bundle, answer: cedarpy.AuthzResult, policy_errors: PolicyErrors) -> Result:
    """Cedar's answer as a Result, under `policy_errors`."""
    diagnostics = answer.diagnostics
    errors = tuple(_eval_error(e) for e in diagnostics.errors)
    reasons = tuple(_policy_ref(bundle, pid) for pid in diagnostics.reasons)
    if answer.decision is cedarpy.Decision.Allow:
        if errors and policy_errors is PolicyErrors.DENY:
            # A policy that could apply errored (a forbid, or another permit):
            # the permits alone do not make this an ALLOW. No policy determined
            # the DENY, so none is named; the errors say why.
            return Result(Decision.DENY, (), errors, Obligations(), bundle.revision, policy_errors)
        return Result(
            Decision.ALLOW,
            reasons,
            errors,
            _obligations(bundle, reasons),
            bundle.revision,
            policy_errors,
        )
    if answer.decision is not cedarpy.Decision.Deny and not errors:
        errors = (EvalError("", f"no decision from Cedar ({answer.decision.value})"),)
    return Result(Decision.DENY, reasons, errors, Obligations(), bundle.revision, policy_errors)


def _is_authorized(prepared: _Prepared, schema: cedarpy.Schema) -> cedarpy.AuthzResult:
    """cedarpy.is_authorized for one request with parsed handles, JSON done by orjson.

    cedarpy's wrapper encodes the context and decodes the answer with the
    standard library (about a tenth of a miss); this calls the same extension
    function with the same arguments (cedarpy 4.12.2, pinned) and falls back to
    the wrapper for what orjson cannot encode. The Cedar corpus test runs
    every request through here.
    """
    if prepared.context_json is None:
        return cedarpy.is_authorized(
            prepared.call(), prepared.policy_set, prepared.entities, schema
        )
    answers = cedarpy._internal.is_authorized_batch(
        [prepared.call()], prepared.policy_set, prepared.entities._inner, schema, False
    )
    return cedarpy.AuthzResult(orjson.loads(answers[0]))


def _is_authorized_many(group: _Group, schema: cedarpy.Schema) -> list[cedarpy.AuthzResult]:
    """One cedarpy call for a group's requests (as `_is_authorized` calls it for one)."""
    answers = cedarpy._internal.is_authorized_batch(
        group.calls, group.policy_set, group.entities._inner, schema, False
    )
    if len(answers) != len(group.calls):  # pragma: no cover - cedarpy's contract
        raise ValueError("cedarpy answered a different number of requests")
    return [cedarpy.AuthzResult(orjson.loads(answer)) for answer in answers]


def _added(bundle: Bundle, supplied: Iterable[EntityData]) -> list[dict[str, Any]]:
    """What the request supplies: validation admits data only for entities the store lacks."""
    return [d.to_json() for d in supplied if d.uid not in bundle.entity_json]


# A request's slices are parsed (about 0.1 us a byte) where adding to the parsed
# store clones it (about 0.4 us an entity): slices are used for a store of more
# than SLICE_MIN_ENTITIES entities (below, finding the slices costs more than the
# clone), while the bytes to parse stay under SLICE_BYTES_PER_ENTITY per stored
# entity. Either way the answers are the same (tests/core/test_entity_slices.py).
SLICE_MIN_ENTITIES = 128
SLICE_BYTES_PER_ENTITY = 4


def _entities_for(bundle: Bundle, request: AuthzRequest) -> cedarpy.Entities:
    """The entities `request` is decided with: the parsed store, or, when the request
    brings entities of its own, the stored slices it can reach plus its own.

    Cedar reads an entity only through a request's principal, action, resource
    and context, the policies' own entity literals, and the parents, attributes
    and tags of entities it reads. Every such stored entity is in the slice, with
    its ancestors: the policies' part is parsed at load (`Bundle.policy_store`),
    the request's part comes from the stored JSON slices (entitystore.py), so
    the answers are those of the whole store. Adding to the parsed store instead
    clones it, in time proportional to the whole store; it is still the cheaper
    way for a small store (`SLICE_BYTES_PER_ENTITY`). A slice Cedar refuses is
    built the old way, so a refusal reads as it always has.
    """
    added = _added(bundle, request.entities)
    if not added:
        return bundle.entities
    delta = encode(added)
    base = bundle.policy_store
    if base is not None and len(bundle.entity_slices) > SLICE_MIN_ENTITIES:
        roots: set[EntityUid] = {request.principal, request.action, request.resource}
        named_in(dict(request.context), roots)
        for data in request.entities:
            roots.add(data.uid)
            roots.update(data.parents)
            named_in(dict(data.attrs), roots)
        extra = reachable(roots, bundle.entity_refs) - bundle.policy_entities
        slices = bundle.entity_slices
        size = sum(len(slices.get(uid, "")) for uid in extra)
        if size <= SLICE_BYTES_PER_ENTITY * len(slices):
            try:
                return base.with_added_json_str(
                    slice_text(slices, extra, delta[1:-1]), bundle.schema
                )
            except ValueError:
                pass  # refused: built the old way below, for the old message
    return bundle.entities.with_added_json_str(delta, bundle.schema)


def _eval_error(message: str) -> EvalError:
    m = _POLICY_ERROR.match(message)
    if m:
        return EvalError(m["id"], m["msg"])
    return EvalError("", message)


def _policy_ref(bundle: Bundle, pid: str) -> PolicyRef:
    ref = bundle.refs.get(pid)  # prepared at load
    return ref if ref is not None else PolicyRef(pid, {}, "")


def _obligations(bundle: Bundle, reasons: tuple[PolicyRef, ...]) -> Obligations:
    """The smallest of each obligation among the determining permits: each permit's
    bound holds."""
    if len(reasons) == 1:  # the usual case: the permit's own, prepared at load
        return bundle.obligations.get(reasons[0].id) or Obligations()
    infos = [info for ref in reasons if (info := bundle.policies.get(ref.id))]
    ttls = [i.max_credential_ttl for i in infos if i.max_credential_ttl is not None]
    revokes = [i.revoke_within for i in infos if i.revoke_within is not None]
    return Obligations(
        max_credential_ttl=min(ttls) if ttls else None,
        revoke_within=min(revokes) if revokes else None,
    )
