"""Policy indexing: evaluate only the policies whose scope can match a request.

Cedar evaluates every policy of a set on every request. A policy whose scope
(principal, action and resource constraints) does not match the request is
never satisfied and never reports an error: Cedar evaluates the scope as the
first conjuncts of the policy and stops there. So evaluating only the policies
whose scope matches gives the same decision, the same determining policies and
the same errors as evaluating all of them; tests/test_index*.py check that on
the Cedar corpus and on generated policy sets.

At load the index resolves every action constraint against the action
hierarchy (exact: actions come from the schema), and files each policy under
its principal and resource constraint:

    any                      principal
    ("eq", uid)              principal == uid
    ("is", type)             principal is type
    ("in", uid)              principal in uid
    ("isin", type, uid)      principal is type in uid

A request then looks up the keys its principal and resource can match (its
type, its uid, itself and its ancestors for `in`), which is exactly Cedar's
scope semantics, and intersects. The ancestors come from the entity store plus
the parents the request supplies for this call, as the engine merges them.

The cedarpy `PolicySet` for each distinct candidate subset is built once and
kept (bounded, least recently used); building it is memoization of a pure
function, so evaluation stays pure. Anything the index does not understand
sends the request to the full policy set, which is always correct.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import cedarpy

from sidecar.core.model import AuthzRequest, EntityData, EntityUid

ScopeKey = tuple[Any, ...]
ANY: ScopeKey = ("any",)
DEFAULT_MAX_SETS = 1024


class _Side:
    """Principal or resource constraints of the policies that share one action."""

    __slots__ = ("by_key", "has_in")

    def __init__(self) -> None:
        self.by_key: dict[ScopeKey, set[int]] = {}
        self.has_in = False

    def add(self, key: ScopeKey, policy: int) -> None:
        self.by_key.setdefault(key, set()).add(policy)
        if key[0] in ("in", "isin"):
            self.has_in = True


class PolicyIndex:
    """Candidate policies per request; `policy_set_for` is the entry point."""

    def __init__(
        self,
        policies: Mapping[str, Mapping[str, Any]],
        entities_json: Iterable[Mapping[str, Any]],
        full_set: cedarpy.PolicySet,
        *,
        max_sets: int = DEFAULT_MAX_SETS,
    ) -> None:
        self.ids: tuple[str, ...] = tuple(policies)
        self._json = [json.dumps(body) for body in policies.values()]
        self._full = full_set
        self._max_sets = max_sets
        self._sets: OrderedDict[tuple[int, ...], cedarpy.PolicySet] = OrderedDict()
        self._lock = threading.Lock()
        parents: dict[EntityUid, tuple[EntityUid, ...]] = {}
        for ent in entities_json:
            uid = _uid(ent.get("uid"))
            if uid is not None:
                parents[uid] = tuple(
                    p for p in (_uid(x) for x in ent.get("parents") or ()) if p is not None
                )
        self._parents = parents
        self._ancestors: dict[EntityUid, frozenset[EntityUid]] = {}
        for uid in parents:
            self._ancestors[uid] = _closure(uid, parents.__getitem__)
        actions = {uid for uid in parents if _is_action_type(uid.type)}
        self.action_types = frozenset(a.type for a in actions)
        self._by_action: dict[EntityUid, tuple[_Side, _Side]] = {}
        for action in actions:
            lineage = self._ancestors[action] | {action}
            principals, resources = _Side(), _Side()
            for i, body in enumerate(policies.values()):
                if not _action_matches(body.get("action"), action, lineage):
                    continue
                principals.add(_scope_key(body.get("principal")), i)
                resources.add(_scope_key(body.get("resource")), i)
            self._by_action[action] = (principals, resources)

    def candidates(self, request: AuthzRequest) -> tuple[int, ...] | None:
        """Indices of the policies whose scope can match, or None for "use them all"."""
        sides = self._by_action.get(request.action)
        if sides is None:
            return None
        supplied = {e.uid: e for e in request.entities}
        if any(uid.type in self.action_types for uid in supplied):
            return None
        principals, resources = sides
        matched_p = self._match(principals, request.principal, supplied)
        if not matched_p:
            return ()
        matched_r = self._match(resources, request.resource, supplied)
        return tuple(sorted(matched_p & matched_r))

    def policy_set_for(self, request: AuthzRequest) -> cedarpy.PolicySet:
        """The smallest policy set that decides `request` exactly as the full set does."""
        chosen = self.candidates(request)
        if chosen is None or len(chosen) == len(self.ids):
            return self._full
        with self._lock:
            found = self._sets.get(chosen)
            if found is not None:
                self._sets.move_to_end(chosen)
                return found
        built = self._build(chosen)
        with self._lock:
            self._sets[chosen] = built
            while len(self._sets) > self._max_sets:
                self._sets.popitem(last=False)
        return built

    def _build(self, chosen: tuple[int, ...]) -> cedarpy.PolicySet:
        static = ",".join(f"{json.dumps(self.ids[i])}:{self._json[i]}" for i in chosen)
        return cedarpy.PolicySet.from_json_str(
            '{"staticPolicies":{' + static + '},"templates":{},"templateLinks":[]}'
        )

    def _match(
        self, side: _Side, uid: EntityUid, supplied: Mapping[EntityUid, EntityData]
    ) -> set[int]:
        by_key = side.by_key
        out: set[int] = set()
        for key in (ANY, ("eq", uid), ("is", uid.type)):
            found = by_key.get(key)
            if found:
                out |= found
        if side.has_in:
            lineage = self._lineage(uid, supplied)
            for anc in lineage:
                for key in (("in", anc), ("isin", uid.type, anc)):
                    found = by_key.get(key)
                    if found:
                        out |= found
        return out

    def _lineage(self, uid: EntityUid, supplied: Mapping[EntityUid, EntityData]) -> set[EntityUid]:
        """`uid` and its ancestors, with the parents the request adds for this call."""
        if not supplied:
            return {uid, *self._ancestors.get(uid, ())}

        def parents_of(u: EntityUid) -> tuple[EntityUid, ...]:
            extra = supplied.get(u)
            stored = self._parents.get(u, ())
            return stored + extra.parents if extra is not None else stored

        return {uid, *_closure(uid, parents_of)}


def _closure(start: EntityUid, parents_of: Any) -> frozenset[EntityUid]:
    seen: set[EntityUid] = set()
    todo = list(parents_of(start)) if _known(start, parents_of) else []
    while todo:
        u = todo.pop()
        if u in seen:
            continue
        seen.add(u)
        if _known(u, parents_of):
            todo.extend(parents_of(u))
    return frozenset(seen)


def _known(uid: EntityUid, parents_of: Any) -> bool:
    try:
        parents_of(uid)
    except KeyError:
        return False
    return True


def _is_action_type(type_: str) -> bool:
    return type_ == "Action" or type_.endswith("::Action")


def _uid(raw: Any) -> EntityUid | None:
    if isinstance(raw, Mapping) and "__entity" in raw:
        raw = raw["__entity"]
    if isinstance(raw, Mapping) and isinstance(raw.get("type"), str) and "id" in raw:
        return EntityUid(raw["type"], str(raw["id"]))
    return None


def _scope_key(constraint: Any) -> ScopeKey:
    """Where a principal or resource constraint is filed; ANY when not understood."""
    if not isinstance(constraint, Mapping):
        return ANY
    op = constraint.get("op")
    if op == "==":
        uid = _uid(constraint.get("entity"))
        return ("eq", uid) if uid is not None else ANY
    if op == "in":
        uid = _uid(constraint.get("entity"))
        return ("in", uid) if uid is not None else ANY
    if op == "is" and isinstance(constraint.get("entity_type"), str):
        inside = constraint.get("in")
        if inside is None:
            return ("is", constraint["entity_type"])
        uid = _uid(inside.get("entity")) if isinstance(inside, Mapping) else None
        return ("isin", constraint["entity_type"], uid) if uid is not None else ANY
    return ANY


def _action_matches(constraint: Any, action: EntityUid, lineage: frozenset[EntityUid]) -> bool:
    """Cedar's action scope for one action; True (keep the policy) when not understood."""
    if not isinstance(constraint, Mapping):
        return True
    op = constraint.get("op")
    if op == "All":
        return True
    if op == "==":
        uid = _uid(constraint.get("entity"))
        return uid is None or uid == action
    if op == "in":
        if "entities" in constraint:
            uids = [_uid(e) for e in constraint.get("entities") or ()]
        else:
            uids = [_uid(constraint.get("entity"))]
        return any(u is None or u in lineage for u in uids)
    return True


WHOLE_CONTEXT = "*"


def context_reads(policies: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The `context` attributes the policies can read, by name.

    Returns a set containing WHOLE_CONTEXT when some policy uses `context`
    other than as `context.name` / `context has name` (compares or passes the
    whole record), in which case every attribute counts as read.
    """
    names: set[str] = set()
    for body in policies:
        _visit(body.get("conditions"), names)
    return frozenset(names)


def _visit(node: Any, names: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _visit(item, names)
        return
    if not isinstance(node, Mapping):
        return
    if node.get("Var") == "context":
        names.add(WHOLE_CONTEXT)
        return
    for key, value in node.items():
        if (
            key in (".", "has")
            and isinstance(value, Mapping)
            and value.get("left") == {"Var": "context"}
            and isinstance(value.get("attr"), str)
        ):
            names.add(value["attr"])
            _visit({k: v for k, v in value.items() if k != "left"}, names)
        else:
            _visit(value, names)
