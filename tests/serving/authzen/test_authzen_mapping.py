"""AuthZEN -> Cedar, without a server: the schema view and the request mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import cedarpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.bundle import Source, build_bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.errors import InvalidRequest
from sidecar.core.model import EntityData, EntityUid
from sidecar.core.validate import Limits, to_ms
from sidecar.serving.authzen.schema import EMPTY, Named, Record, SetOf, view_of
from sidecar.serving.authzen.translate import (
    Batch,
    Mapper,
    Options,
    parse_evaluation,
    parse_evaluations,
    parse_search,
)
from tests.helpers import POLICIES
from tests.serving.authzen.authzen_client import CERT, TODO

NAMESPACED = """
namespace Acme {
  @doc("a person")
  entity User in [Team] = { "first name": String, manager?: User, tags_: Set<{a: Long}> }
    tags String;
  entity Team;
  entity Color enum ["red", "blue"];
  type Ctx = { ip?: ipaddr, inner: Inner };
  type Inner = { x: Long };
  entity Doc { owner: User, meta?: { size: Long, label?: String } };
  action "view", edit appliesTo { principal: User, resource: [Doc, Team], context: Ctx };
  action group1;
  action "x y" in [group1] appliesTo { principal: User, resource: Doc };
}
namespace Other {
  entity O;
  action edit appliesTo { principal: O, resource: O };
}
entity Global = { n: Long };
action read appliesTo { principal: Global, resource: Global, context: { n?: Long } };
"""
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def test_the_view_reads_namespaces_common_types_and_action_signatures() -> None:
    view = view_of(cedarpy.Schema.from_str(NAMESPACED))
    user = view.shape("Acme::User")
    assert set(user.attrs) == {"first name", "manager", "tags_"}
    assert user.attrs["manager"] == Named("Acme::User")
    assert user.attrs["tags_"] == SetOf(Record({"a": Named("Long")}))
    assert view.shape("Acme::Color") == EMPTY and view.shape("Nope") == EMPTY
    edit = view.actions[EntityUid("Acme::Action", "edit")]
    assert edit.principals == {"Acme::User"} and edit.resources == {"Acme::Doc", "Acme::Team"}
    assert set(edit.context.attrs) == {"ip", "inner"}  # Ctx resolved
    assert view.resolve(edit.context.attrs["inner"]) == Record({"x": Named("Long")})
    assert edit.applies_to("Acme::User", "Acme::Team") and not edit.applies_to(
        "Global", "Acme::Doc"
    )
    assert EntityUid("Acme::Action", "group1") not in view.actions  # a group applies to nothing
    assert view.actions[EntityUid("Acme::Action", "x y")].context == EMPTY


def test_action_names_resolve_to_the_one_action_of_that_name() -> None:
    view = view_of(cedarpy.Schema.from_str(NAMESPACED))
    assert view.action_uid("read") == EntityUid("Action", "read")
    assert view.action_uid("view") == EntityUid("Acme::Action", "view")
    assert view.action_uid("x y") == EntityUid("Acme::Action", "x y")
    assert view.action_uid("edit") is None  # Acme and Other: ambiguous
    assert view.action_uid("group1") is None and view.action_uid("fly") is None


@pytest.mark.parametrize("directory", [POLICIES, TODO, CERT], ids=["policies", "todo", "cert"])
def test_the_view_agrees_with_the_schema_cedar_enforces(directory: Any) -> None:
    """Every action the schema declares with appliesTo is in the view, nothing else."""
    bundle = load_bundle(directory)
    view = view_of(bundle.schema)
    assert set(view.actions) <= set(bundle.actions)
    assert set(view.entities) == set(bundle.entity_types)


def test_the_example_policies_context_type() -> None:
    view = view_of(load_bundle(POLICIES).schema)
    notify = view.actions[EntityUid("Action", "notify")]
    assert {"now", "requester", "workflow_id", "approval", "time_bound"} <= set(
        notify.context.attrs
    )
    assert view.resolve(notify.context.attrs["approval"]) == Record(
        {"approved_at": Named("datetime"), "approver": Named("User"), "ticket": Named("String")}
    )


@pytest.fixture(scope="module")
def cert() -> Mapper:
    bundle = load_bundle(CERT)
    return Mapper(bundle, view_of(bundle.schema), Limits())


def _eval(**parts: Any) -> Any:
    body = {
        "subject": {"type": "user", "id": "carol"},
        "action": {"name": "read"},
        "resource": {"type": "record", "id": "record-9"},
    }
    return parse_evaluation({**body, **parts})


def test_properties_of_an_entity_the_store_lacks_become_its_attributes(cert: Mapper) -> None:
    """Those request-entities.yaml admits for its type (user: role, record: status), as
    gRPC admits `attributes`; AuthZEN must accept the others, so they are ignored."""
    ev = _eval(
        subject={"type": "user", "id": "carol", "properties": {"role": "admin", "shoe": 42}},
        resource={
            "type": "record",
            "id": "record-9",
            "properties": {"status": "open", "x": 1, "owner": None},
        },
    )
    request = cert.request(ev)
    assert request.entities == (
        EntityData(EntityUid("user", "carol"), {"role": "admin"}),
        EntityData(EntityUid("record", "record-9"), {"status": "open"}),
    )
    assert request.context == {}


def test_the_store_is_authoritative_for_the_entities_it_holds(cert: Mapper) -> None:
    bob = {"type": "user", "id": "bob"}
    restated = cert.entity(parse_evaluation_entity({**bob, "properties": {"role": "admin"}}), "s")
    assert restated == EntityData(EntityUid("user", "bob"))  # nothing supplied: the store has it
    alice = {"type": "user", "id": "alice", "properties": {"role": "admin"}}
    assert cert.entity(parse_evaluation_entity(alice), "s") == EntityData(
        EntityUid("user", "alice")
    )
    with pytest.raises(InvalidRequest, match="conflicts with the value the entity store holds"):
        cert.entity(parse_evaluation_entity({**bob, "properties": {"role": "viewer"}}), "subject")


def parse_evaluation_entity(entity: dict[str, Any]) -> Any:
    return parse_evaluation(
        {"subject": entity, "action": {"name": "read"}, "resource": {"type": "r", "id": "r"}}
    ).subject


def test_action_properties_reach_the_context_only_where_declared(cert: Mapper) -> None:
    soft = _eval(action={"name": "delete", "properties": {"soft": True, "reason": "tidy"}})
    assert cert.request(soft).context == {"action_properties": {"soft": True}}
    read = _eval(action={"name": "read", "properties": {"soft": True}})
    assert cert.request(read).context == {}


def test_now_follows_the_deciders_rule_where_the_schema_declares_it() -> None:
    """Like gRPC: `now_ms` (the decider's clock rule) gets the request's time bound."""
    asked: list[tuple[int | None, int | None]] = []

    def now_ms(not_before: int | None, not_after: int | None) -> int:
        asked.append((not_before, not_after))
        return to_ms(AT)

    todo = load_bundle(TODO)
    mapper = Mapper(todo, view_of(todo.schema), Limits(), now_ms)
    ev = parse_evaluation(
        {
            "subject": {"type": "user", "id": "u"},
            "action": {"name": "can_read_todos"},
            "resource": {"type": "todo", "id": "t"},
            "context": {"time": "later", "mood": "fine"},
        }
    )
    now = {"__extn": {"fn": "datetime", "arg": "2026-11-25T10:00:00.000Z"}}
    # Undeclared context keys reach Cedar (which refuses them), as on gRPC.
    assert mapper.request(ev).context == {"time": "later", "mood": "fine", "now": now}
    assert asked == [(None, None)]
    example = load_bundle(POLICIES)
    mapper = Mapper(example, view_of(example.schema), Limits(), now_ms)
    bound = {
        "not_before": "2026-11-25T09:00:00Z",
        "not_after": {"__extn": {"fn": "datetime", "arg": "2026-11-25T11:00:00Z"}},
    }
    ev = parse_evaluation(
        {
            "subject": {"type": "Workload", "id": "w"},
            "action": {"name": "notify"},
            "resource": {"type": "TargetSystem", "id": "slack"},
            "context": {"time_bound": bound, "workflow_id": "onboarding", "ip": "1.2.3.4"},
        }
    )
    context = mapper.request(ev).context
    canonical = {  # the bounds as Cedar gets them: one form, whatever was sent
        "not_before": {"__extn": {"fn": "datetime", "arg": "2026-11-25T09:00:00.000Z"}},
        "not_after": {"__extn": {"fn": "datetime", "arg": "2026-11-25T11:00:00.000Z"}},
    }
    assert context == {
        "time_bound": canonical,
        "workflow_id": "onboarding",
        "ip": "1.2.3.4",
        "now": now,
    }
    assert asked[-1] == (to_ms(AT) - 3_600_000, to_ms(AT) + 3_600_000)
    assert Mapper(example, view_of(example.schema), Limits()).request(ev).context.keys() == {
        "time_bound",
        "workflow_id",
        "ip",
    }


@pytest.mark.parametrize("name", ["now", "caller", "action_properties"])
def test_server_set_context_names_are_refused(cert: Mapper, name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        cert.request(_eval(context={name: "x"}))
    assert info.value.field == f"context.{name}"


def test_properties_deeper_than_the_limit_are_refused() -> None:
    bundle = load_bundle(CERT)
    mapper = Mapper(bundle, view_of(bundle.schema), Limits(max_attribute_depth=3))
    deep: Any = "x"
    for _ in range(4):
        deep = [deep]
    with pytest.raises(InvalidRequest, match="deeper than the attribute depth limit"):
        mapper.request(_eval(subject={"type": "user", "id": "c", "properties": {"role": deep}}))
    mapper.request(_eval(subject={"type": "user", "id": "c", "properties": {"role": [["x"]]}}))


def test_an_unknown_type_or_action_is_a_deny_with_diagnostics_not_an_error(cert: Mapper) -> None:
    for ev in (
        _eval(subject={"type": "spaceship", "id": "s", "properties": {"role": "x"}}),
        _eval(action={"name": "fly"}),
        _eval(resource={"type": "no such type!", "id": "r"}),
    ):
        result = evaluate(cert.bundle, cert.request(ev))
        assert not result.allowed and result.errors


def test_batch_items_take_top_level_defaults_whole() -> None:
    batch = parse_evaluations(
        {
            "subject": {"type": "user", "id": "a", "properties": {"p": 1}},
            "action": {"name": "read"},
            "context": {"c": 1},
            "evaluations": [
                {"resource": {"type": "r", "id": "1"}},
                {"resource": {"type": "r", "id": "2"}, "subject": {"type": "user", "id": "b"}},
                {"resource": {"type": "r", "id": "3"}, "context": {"d": 2}},
                {"subject": {"type": "user", "id": "c"}},
            ],
        },
        Limits(),
    )
    assert isinstance(batch, Batch) and batch.options == Options("execute_all", False)
    first, second, third, fourth = batch.items
    assert not isinstance(first, InvalidRequest) and first.subject.properties == {"p": 1}
    assert not isinstance(second, InvalidRequest) and second.subject.properties == {}
    assert not isinstance(third, InvalidRequest) and third.context == {"d": 2}
    assert isinstance(fourth, InvalidRequest) and fourth.field == "evaluations[3].resource"


def test_search_fingerprints_ignore_only_the_token() -> None:
    body: dict[str, Any] = {
        "subject": {"type": "user"},
        "action": {"name": "read"},
        "resource": {"type": "record", "id": "1"},
        "page": {"limit": 2},
    }
    a = parse_search("subject", body)
    b = parse_search("subject", {**body, "page": {"limit": 2, "token": "t"}, "extra": 1})
    c = parse_search("subject", {**body, "page": {"limit": 3}})
    d = parse_search("resource", {**body, "subject": {"type": "user", "id": "x"}})
    assert a.fingerprint == b.fingerprint
    assert len({a.fingerprint, c.fingerprint, d.fingerprint}) == 3


# -- property: what is kept is exactly the declared, non-null part ---------------------------

SCHEMA = """
entity T = { s?: String, n?: Long, flags?: Set<String>, rec?: { a?: Long, b?: { c?: String } } };
action act appliesTo { principal: T, resource: T };
"""
# A request may describe a T the store lacks by every attribute (request-entities.yaml).
ADMIT_T = "entity_types: {T: {attributes: [s, n, flags, rec]}}"
_BUNDLE = build_bundle(
    [Source("p.cedar", "permit(principal, action, resource);")],
    Source("s.cedarschema", SCHEMA),
    request_entities=Source("request-entities.yaml", ADMIT_T),
)
_MAPPER = Mapper(_BUNDLE, view_of(_BUNDLE.schema), Limits())

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)
_keys = st.sampled_from(["s", "n", "flags", "rec", "a", "b", "c", "zz"])
_props = st.recursive(
    st.dictionaries(_keys, _json, max_size=5),
    lambda inner: st.dictionaries(_keys, inner | _json, max_size=5),
    max_leaves=12,
)


def _non_null(value: Any) -> Any:
    """What reaches Cedar: the value as sent, null members and elements left out."""
    if isinstance(value, dict) and not (
        len(value) == 1 and next(iter(value)) in ("__entity", "__extn")
    ):
        return {k: _non_null(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_non_null(v) for v in value if v is not None]
    return value


@settings(max_examples=200, deadline=None)
@given(_props)
def test_mapping_keeps_exactly_the_non_null_properties(props: dict[str, Any]) -> None:
    ev = parse_evaluation(
        {
            "subject": {"type": "T", "id": "new", "properties": props},
            "action": {"name": "act"},
            "resource": {"type": "T", "id": "r"},
        }
    )
    request = _MAPPER.request(ev)
    kept = request.entities[0].attrs if request.entities else {}
    # the properties request-entities.yaml admits for T, as sent, nulls left out
    admitted = {"s", "n", "flags", "rec"}
    assert kept == {k: v for k, v in _non_null(props).items() if k in admitted}
