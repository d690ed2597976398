"""Policy indexing decides exactly as full evaluation does.

Indexed evaluation (the default) must give the same decision, the same
determining policies and the same errors as evaluating every policy
(`evaluate(..., indexed=False)`): on the whole Cedar corpus, through the
servicer's request translation, and on generated policy sets, entity graphs
and requests. Reasons and errors are compared as sets: cedarpy reports them
from a hash set, in no stable order, even for two runs of the same set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.bundle import Bundle, Source, build_bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.index import WHOLE_CONTEXT
from sidecar.core.model import AuthzRequest, EntityData, EntityUid, Result
from tests.corpus import EXPECTED_REQUESTS, CorpusFile, corpus_files

ROOT = Path(__file__).resolve().parents[2]


def _outcome(result: Result) -> tuple[str, frozenset[str], frozenset[tuple[str, str]]]:
    return (
        result.decision.value,
        frozenset(r.id for r in result.reasons),
        frozenset((e.policy_id, e.message) for e in result.errors),
    )


def _same(bundle: Bundle, request: AuthzRequest) -> bool:
    """Indexed and full evaluation agree; True when the index evaluated fewer policies."""
    indexed = evaluate(bundle, request)
    full = evaluate(bundle, request, indexed=False)
    assert _outcome(indexed) == _outcome(full), request
    assert indexed.obligations == full.obligations
    assert bundle.index is not None
    chosen = bundle.index.candidates(request)
    return chosen is not None and len(chosen) < bundle.policy_count


def test_corpus_indexed_equals_full() -> None:
    total = narrowed = 0
    for path in corpus_files():
        case = CorpusFile(path)
        bundle = case.bundle()
        for _, request in case.requests(bundle):
            narrowed += _same(bundle, request)
            total += 1
    assert total == EXPECTED_REQUESTS
    # Not vacuous: 994 of the 999 corpus files hold one policy, and for 935
    # requests the index proves it cannot apply, so Cedar decides with none.
    assert narrowed >= 900, f"only {narrowed} of {total} requests were narrowed"


def test_example_policies_are_narrowed() -> None:
    bundle = load_bundle(ROOT / "policies")
    assert bundle.index is not None
    request = AuthzRequest(
        EntityUid("Workload", "spiffe://example.org/ns/comms/sa/notifier"),
        EntityUid("Action", "notify"),
        EntityUid("TargetSystem", "slack"),
        {"now": {"__extn": {"fn": "datetime", "arg": "2026-11-25T10:00:00.000Z"}}},
    )
    chosen = bundle.index.candidates(request)
    assert chosen is not None
    names = {bundle.index.ids[i] for i in chosen}
    # Only the read-only permit and the three forbids on every action can apply.
    assert names == {
        "step-runners-read-and-notify",
        "step-outside-time-bound",
        "shared-accounts-never-act",
        "unregistered-workloads-never-act",
    }
    assert _same(bundle, request)
    assert evaluate(bundle, request).allowed


def test_context_reads() -> None:
    bundle = load_bundle(ROOT / "policies")
    assert "now" in bundle.context_reads
    assert WHOLE_CONTEXT not in bundle.context_reads

    def reads(text: str) -> frozenset[str]:
        built = build_bundle([Source("p.cedar", text)], Source("s.cedarschema", SCHEMA), [])
        return built.context_reads

    assert reads("permit(principal, action, resource);") == frozenset()
    assert reads(
        "permit(principal, action, resource) when { context has flag && context.flag };"
    ) == {"flag"}
    whole = "permit(principal, action, resource) when { context == {} };"
    assert (
        WHOLE_CONTEXT
        in build_bundle(
            [Source("p.cedar", whole)], Source("s.cedarschema", SCHEMA), [], validate=False
        ).context_reads
    )


# --- generated policy sets, entity graphs and requests ----------------------

SCHEMA = """
entity Group in [Group];
entity User in [Group] = { level?: Long };
entity Folder in [Folder];
entity Doc in [Folder] = { owner?: User, level?: Long };
action "edit";
action read, write in ["edit"] appliesTo {
  principal: [User, Group], resource: [Doc, Folder], context: { flag?: Bool, n?: Long }
};
action admin appliesTo {
  principal: [User, Group], resource: [Doc, Folder], context: { flag?: Bool, n?: Long }
};
"""

USERS = [f"u{i}" for i in range(4)]
GROUPS = [f"g{i}" for i in range(3)]
FOLDERS = [f"f{i}" for i in range(3)]
DOCS = [f"d{i}" for i in range(4)]
ACTIONS = ["read", "write", "admin"]


def _ref(type_: str, id_: str) -> str:
    return f'{type_}::"{id_}"'


principal_scopes = st.one_of(
    st.just("principal"),
    st.sampled_from([*USERS, "u9"]).map(lambda u: f"principal == {_ref('User', u)}"),
    st.sampled_from(GROUPS).map(lambda g: f"principal == {_ref('Group', g)}"),
    st.sampled_from(GROUPS).map(lambda g: f"principal in {_ref('Group', g)}"),
    st.sampled_from(USERS).map(lambda u: f"principal in {_ref('User', u)}"),
    st.sampled_from(["User", "Group"]).map(lambda t: f"principal is {t}"),
    st.tuples(st.sampled_from(["User", "Group"]), st.sampled_from(GROUPS)).map(
        lambda tg: f"principal is {tg[0]} in {_ref('Group', tg[1])}"
    ),
)
action_scopes = st.one_of(
    st.just("action"),
    st.sampled_from(ACTIONS).map(lambda a: f"action == {_ref('Action', a)}"),
    st.sampled_from([*ACTIONS, "edit"]).map(lambda a: f"action in {_ref('Action', a)}"),
    st.lists(st.sampled_from([*ACTIONS, "edit"]), min_size=1, max_size=2).map(
        lambda xs: "action in [" + ", ".join(_ref("Action", a) for a in xs) + "]"
    ),
)
resource_scopes = st.one_of(
    st.just("resource"),
    st.sampled_from(DOCS).map(lambda d: f"resource == {_ref('Doc', d)}"),
    st.sampled_from(FOLDERS).map(lambda f: f"resource in {_ref('Folder', f)}"),
    st.sampled_from(FOLDERS).map(lambda f: f"resource == {_ref('Folder', f)}"),
    st.sampled_from(["Doc", "Folder"]).map(lambda t: f"resource is {t}"),
    st.tuples(st.sampled_from(["Doc", "Folder"]), st.sampled_from(FOLDERS)).map(
        lambda tf: f"resource is {tf[0]} in {_ref('Folder', tf[1])}"
    ),
)
# Conditions that hold, fail, or raise an evaluation error (a missing attribute).
conditions = st.sampled_from(
    [
        "",
        " when { true }",
        " when { false }",
        " when { principal.level > 2 }",
        " when { context.flag }",
        " unless { resource.owner == principal }",
        " when { resource has level && resource.level > 1 }",
        " when { context has n && context.n + 1 > 3 }",
        ' when { principal in Group::"g0" }',
    ]
)


@st.composite
def policy_sets(draw: st.DrawFn) -> str:
    count = draw(st.integers(min_value=0, max_value=12))
    texts = []
    for i in range(count):
        effect = draw(st.sampled_from(["permit", "forbid"]))
        scope = ", ".join((draw(principal_scopes), draw(action_scopes), draw(resource_scopes)))
        texts.append(f'@id("p{i}")\n{effect} ({scope}){draw(conditions)};')
    if not texts:  # a bundle needs at least one policy
        texts.append('@id("never")\nforbid (principal, action, resource) when { false };')
    return "\n".join(texts)


@st.composite
def entity_graphs(draw: st.DrawFn) -> list[dict[str, Any]]:
    def uid(type_: str, id_: str) -> dict[str, str]:
        return {"type": type_, "id": id_}

    out: list[dict[str, Any]] = []
    for i, g in enumerate(GROUPS):  # groups only in earlier groups: no cycles
        parents = draw(st.lists(st.sampled_from(GROUPS[:i]), max_size=2)) if i else []
        out.append(
            {"uid": uid("Group", g), "attrs": {}, "parents": [uid("Group", p) for p in parents]}
        )
    for u in USERS:
        attrs = draw(st.fixed_dictionaries({}, optional={"level": st.integers(0, 5)}))
        parents = draw(st.lists(st.sampled_from(GROUPS), max_size=2))
        out.append(
            {"uid": uid("User", u), "attrs": attrs, "parents": [uid("Group", p) for p in parents]}
        )
    for i, f in enumerate(FOLDERS):
        parents = draw(st.lists(st.sampled_from(FOLDERS[:i]), max_size=1)) if i else []
        out.append(
            {"uid": uid("Folder", f), "attrs": {}, "parents": [uid("Folder", p) for p in parents]}
        )
    for d in DOCS:
        doc_attrs: dict[str, Any] = {}
        if draw(st.booleans()):
            doc_attrs["level"] = draw(st.integers(0, 5))
        if draw(st.booleans()):
            doc_attrs["owner"] = {"__entity": uid("User", draw(st.sampled_from(USERS)))}
        parents = draw(st.lists(st.sampled_from(FOLDERS), max_size=2))
        out.append(
            {
                "uid": uid("Doc", d),
                "attrs": doc_attrs,
                "parents": [uid("Folder", p) for p in parents],
            }
        )
    return out


@st.composite
def requests(draw: st.DrawFn) -> AuthzRequest:
    principal = draw(
        st.one_of(
            st.sampled_from([*USERS, "u9"]).map(lambda u: EntityUid("User", u)),
            st.sampled_from(GROUPS).map(lambda g: EntityUid("Group", g)),
        )
    )
    resource = draw(
        st.one_of(
            st.sampled_from([*DOCS, "d9"]).map(lambda d: EntityUid("Doc", d)),
            st.sampled_from(FOLDERS).map(lambda f: EntityUid("Folder", f)),
        )
    )
    context = draw(
        st.fixed_dictionaries({}, optional={"flag": st.booleans(), "n": st.integers(-2, 5)})
    )
    supplied: list[EntityData] = []
    # The request may bring parents for its principal or resource, for this call only.
    if draw(st.booleans()):
        group_type = "Group" if principal.type in ("User", "Group") else "Folder"
        pool = GROUPS if group_type == "Group" else FOLDERS
        parents = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2))
        supplied.append(EntityData(principal, {}, tuple(EntityUid(group_type, p) for p in parents)))
    if draw(st.booleans()):
        parents = draw(st.lists(st.sampled_from(FOLDERS), min_size=1, max_size=2))
        supplied.append(EntityData(resource, {}, tuple(EntityUid("Folder", p) for p in parents)))
    action = EntityUid("Action", draw(st.sampled_from([*ACTIONS, "edit"])))
    return AuthzRequest(principal, action, resource, context, tuple(supplied))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    policies=policy_sets(),
    entities=entity_graphs(),
    batch=st.lists(requests(), min_size=1, max_size=8),
)
def test_indexed_equals_full_on_generated_sets(
    policies: str, entities: list[dict[str, Any]], batch: list[AuthzRequest]
) -> None:
    bundle = build_bundle(
        [Source("gen.cedar", policies)],
        Source("gen.cedarschema", SCHEMA),
        [Source("gen.entities.json", json.dumps(entities))],
        validate=False,
    )
    assert bundle.policy_count > 0  # policy_sets never yields an empty set
    for request in batch:
        _same(bundle, request)


@pytest.mark.parametrize("max_sets", [1, 2])
def test_policy_set_memo_is_bounded(max_sets: int) -> None:
    """Evicted subsets are rebuilt; decisions never depend on what is memoized."""
    text = "\n".join(
        f'@id("p{i}") permit (principal, action == Action::"{a}", resource);'
        for i, a in enumerate(ACTIONS)
    )
    bundle = build_bundle(
        [Source("p.cedar", text)], Source("s.cedarschema", SCHEMA), [], validate=False
    )
    assert bundle.index is not None
    bundle.index._max_sets = max_sets
    for _ in range(2):
        for a in ACTIONS:
            req = AuthzRequest(
                EntityUid("User", "u0"), EntityUid("Action", a), EntityUid("Doc", "d0"), {}
            )
            result = evaluate(bundle, req)
            assert result.allowed and {r.id for r in result.reasons} == {f"p{ACTIONS.index(a)}"}
            assert len(bundle.index._sets) <= max_sets
