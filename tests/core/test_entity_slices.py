"""A request bringing entities of its own is decided with the stored slices it can
reach, and the answers are those of the whole store.

Adding to the parsed store clones all of it per request, so a large store is
cut to what Cedar can read: the policies' own entities (parsed at load) plus
the entities the request's principal, action, resource, context and supplied
entities lead to, through parents, attributes and tags (engine.py
`_entities_for`). These tests force that path on small generated stores and
compare every answer with the whole store's (the old path, unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.workload import example_json
from sidecar.core import engine
from sidecar.core.bundle import Bundle, Source, build_bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import AuthzRequest, EntityData, EntityUid, PolicyErrors, Result
from sidecar.core.validate import Limits, request_from_proto
from tests.core.test_index import SCHEMA, entity_graphs, policy_sets, requests

ROOT = Path(__file__).resolve().parents[2]


def _outcome(result: Result) -> tuple[Any, ...]:
    return (
        result.decision,
        frozenset(r.id for r in result.reasons),
        frozenset(result.errors),
        result.obligations,
    )


def _both(bundle: Bundle, request: AuthzRequest, mode: PolicyErrors) -> tuple[Result, Result]:
    """The answer from slices (forced) and from the whole store (slices off)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "SLICE_MIN_ENTITIES", 0)
        mp.setattr(engine, "SLICE_BYTES_PER_ENTITY", 10**9)
        sliced = evaluate(bundle, request, policy_errors=mode)
        mp.setattr(engine, "SLICE_MIN_ENTITIES", 10**9)
        whole = evaluate(bundle, request, policy_errors=mode)
    return sliced, whole


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    policies=policy_sets(),
    entities=entity_graphs(),
    batch=st.lists(requests(), min_size=1, max_size=8),
    cedar=st.booleans(),
)
def test_slices_decide_as_the_whole_store(
    policies: str, entities: list[dict[str, Any]], batch: list[AuthzRequest], cedar: bool
) -> None:
    bundle = build_bundle(
        [Source("gen.cedar", policies)],
        Source("gen.cedarschema", SCHEMA),
        [Source("gen.entities.json", json.dumps(entities))],
        validate=False,
    )
    mode = PolicyErrors.CEDAR if cedar else PolicyErrors.DENY
    for request in batch:
        sliced, whole = _both(bundle, request, mode)
        assert _outcome(sliced) == _outcome(whole), request


def _small_bundle(entities: list[dict[str, Any]], policies: str) -> Bundle:
    return build_bundle(
        [Source("p.cedar", policies)],
        Source("s.cedarschema", SCHEMA),
        [Source("e.entities.json", json.dumps(entities))],
        validate=False,
    )


def _uid(type_: str, id_: str) -> dict[str, str]:
    return {"type": type_, "id": id_}


def test_a_stored_entity_under_a_supplied_parent() -> None:
    """The store's u1 is in a group the store lacks; the request supplies that group
    inside g0. Both ways u1 is (or is not) in g0 alike, and the document it owns too."""
    entities: list[dict[str, Any]] = [
        {"uid": _uid("Group", "g0"), "attrs": {}, "parents": []},
        {"uid": _uid("User", "u1"), "attrs": {"level": 3}, "parents": [_uid("Group", "gx")]},
        {
            "uid": _uid("Doc", "d0"),
            "attrs": {"owner": {"__entity": _uid("User", "u1")}},
            "parents": [],
        },
    ]
    policies = (
        '@id("in-g0") permit (principal, action, resource) when { principal in Group::"g0" };\n'
        '@id("owner") permit (principal, action, resource is Doc) when '
        '{ resource has owner && resource.owner in Group::"g0" };'
    )
    bundle = _small_bundle(entities, policies)
    gx = EntityData(EntityUid("Group", "gx"), {}, (EntityUid("Group", "g0"),))
    for principal, resource in [("u1", "d0"), ("u9", "d0")]:
        request = AuthzRequest(
            EntityUid("User", principal),
            EntityUid("Action", "read"),
            EntityUid("Doc", resource),
            {},
            (gx,),
        )
        sliced, whole = _both(bundle, request, PolicyErrors.DENY)
        assert _outcome(sliced) == _outcome(whole)
        # Cedar puts u1 in g0 through the supplied gx, both ways.
        expected = {"in-g0", "owner"} if principal == "u1" else {"owner"}
        assert {r.id for r in sliced.reasons} == expected


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundle]:
    """The example bundle with 2,000 more workloads in its store."""
    work = tmp_path_factory.mktemp("big")
    for path in (ROOT / "policies").iterdir():
        if path.is_file():
            (work / path.name).write_bytes(path.read_bytes())
    stored = json.loads((work / "entities.json").read_text())
    stored += [
        {
            "uid": _uid("Workload", f"spiffe://example.org/ns/team-{i}/sa/job"),
            "attrs": {"shared": False},
            "parents": [_uid("WorkloadGroup", "provisioning")],
        }
        for i in range(2000)
    ]
    (work / "entities.json").write_text(json.dumps(stored))
    yield load_bundle(work)


def test_a_large_store_is_cut_to_what_the_request_reaches(big: Bundle) -> None:
    """The point: a request supplying a workload the store lacks is decided with a few
    dozen entities, not the 2,000-odd of the store, and answered as with all of them."""
    now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    stranger = EntityUid("Workload", "spiffe://example.org/ns/new/sa/job")
    asked = request_from_proto(request_from_json(example_json(now=now)), big, Limits(), now=now)
    cases = [
        AuthzRequest(stranger, asked.action, asked.resource, asked.context, (data,))
        for data in (
            EntityData(stranger, {"shared": False}),
            EntityData(stranger, {"shared": False}, (EntityUid("WorkloadGroup", "provisioning"),)),
            EntityData(stranger, {"shared": True}, (EntityUid("WorkloadGroup", "provisioning"),)),
        )
    ]
    for request in cases:
        used = engine._entities_for(big, request)  # the defaults: sliced at this size
        assert len(used) < 100 < 2000 < len(big.entities)  # the whole store
        sliced, whole = _both(big, request, PolicyErrors.DENY)
        assert _outcome(sliced) == _outcome(whole) == _outcome(evaluate(big, request))
    assert evaluate(big, cases[1]).allowed  # not vacuous: the group's permit applies
    assert not evaluate(big, cases[2]).allowed
