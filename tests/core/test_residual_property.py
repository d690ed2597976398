"""core/residual.py's simplifier against Cedar itself, on closed expressions.

Whatever the simplifier settles (to true or false) must be what Cedar
evaluates the same expression to, with no error: generated expressions over
literals (Longs, Strings, Bools, entities of the example store, sets,
records, datetimes and durations) and the operators the simplifier knows,
put in a policy's `when` and decided by `cedarpy.is_authorized` with the
example bundle's entities. What it leaves open is not checked (it may).
"""

from __future__ import annotations

import json
from typing import Any

import cedarpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.model import AuthzRequest, EntityUid
from sidecar.core.plan import _lookup
from sidecar.core.residual import condition_value
from tests.helpers import POLICIES

BUNDLE: Bundle = load_bundle(POLICIES)
ENTITIES = [
    ("User", "ines"),
    ("User", "dana"),
    ("User", "nobody"),  # not in the store
    ("Group", "identity-approvers"),
    ("Group", "break-glass-approvers"),
    ("Workflow", "onboarding"),
    ("Workflow", "legacy-offboarding"),
    ("Calendar", "business-hours"),
]
REQUEST = AuthzRequest(
    EntityUid("Workload", "spiffe://example.org/ns/comms/sa/notifier"),
    EntityUid("Action", "notify"),
    EntityUid("TargetSystem", "slack"),
    {},
)


def value(v: Any) -> dict[str, Any]:
    return {"Value": v}


leaves = st.one_of(
    st.booleans().map(value),
    st.integers(-3, 3).map(value),
    st.sampled_from(["", "BG-1", "bg", "CHG-2"]).map(value),
    st.sampled_from(ENTITIES).map(lambda e: value({"__entity": {"type": e[0], "id": e[1]}})),
    st.sampled_from(["2026-11-25", "2026-11-25T10:00:00Z", "2028-01-01"]).map(
        lambda d: {"datetime": [value(d)]}
    ),
    st.sampled_from(["8h", "18h", "1d"]).map(lambda d: {"duration": [value(d)]}),
)


def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    binary = st.sampled_from(
        [
            "==",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            "in",
            "contains",
            "containsAll",
            "containsAny",
            "&&",
            "||",
        ]
    )
    return st.one_of(
        st.builds(lambda op, a, b: {op: {"left": a, "right": b}}, binary, children, children),
        st.builds(lambda a: {"!": {"arg": a}}, children),
        st.lists(children, max_size=3).map(lambda xs: {"Set": xs}),
        st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=2).map(
            lambda r: {"Record": r}
        ),
        st.builds(
            lambda a, attr, op: {op: {"left": a, "attr": attr}},
            children,
            st.sampled_from(["a", "kind", "owner", "opens_at", "closed_days"]),
            st.sampled_from(["has", "."]),
        ),
        st.builds(
            lambda a, pattern: {"like": {"left": a, "pattern": pattern}},
            children,
            st.sampled_from([[{"Literal": "B"}, {"Literal": "G"}, "Wildcard"], ["Wildcard"]]),
        ),
        st.builds(
            lambda c, t, e: {"if-then-else": {"if": c, "then": t, "else": e}},
            children,
            children,
            children,
        ),
        st.builds(lambda a, fn: {fn: [a]}, children, st.sampled_from(["toDate", "toTime"])),
        st.builds(lambda a, b: {"offset": [a, b]}, children, children),
    )


# Comparisons of two values of one kind, often equal: where `<` and `<=` part.
_KINDS = [
    st.integers(0, 1).map(value),
    st.sampled_from(["2026-11-25", "2026-11-25T00:00:00Z"]).map(lambda d: {"datetime": [value(d)]}),
    st.sampled_from(["8h", "480m"]).map(lambda d: {"duration": [value(d)]}),
]
comparisons = st.one_of(
    *(
        st.builds(
            lambda op, a, b: {op: {"left": a, "right": b}},
            st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
            kind,
            kind,
        )
        for kind in _KINDS
    )
)
expressions = st.one_of(st.recursive(leaves, extend, max_leaves=8), comparisons)


def cedar_says(expr: Any) -> tuple[bool, bool]:
    """(Cedar's value of `expr` is true, evaluating it errored), from a real decision."""
    policy = {
        "effect": "permit",
        "principal": {"op": "All"},
        "action": {"op": "All"},
        "resource": {"op": "All"},
        "conditions": [{"kind": "when", "body": expr}],
    }
    doc = {"staticPolicies": {"p": policy}, "templates": {}, "templateLinks": []}
    try:
        policies = cedarpy.PolicySet.from_json_str(json.dumps(doc))
    except ValueError:
        return False, True  # Cedar refuses the expression itself (e.g. a bad extension call)
    answer = cedarpy.is_authorized(
        {
            "principal": str(REQUEST.principal),
            "action": str(REQUEST.action),
            "resource": str(REQUEST.resource),
            "context": {},
        },
        policies,
        BUNDLE.entities,
    )
    return answer.decision is cedarpy.Decision.Allow, bool(answer.diagnostics.errors)


@settings(max_examples=400, deadline=None)
@given(expressions)
def test_what_the_simplifier_settles_is_what_cedar_evaluates(expr: Any) -> None:
    policy = {
        "effect": "permit",
        "principal": {"op": "All"},
        "action": {"op": "All"},
        "resource": {"op": "All"},
        "conditions": [{"kind": "when", "body": expr}],
    }
    settled, _ = condition_value(policy, _lookup(BUNDLE, REQUEST))
    if settled is None:
        return
    allowed, errored = cedar_says(expr)
    assert not errored, (expr, settled)
    assert allowed is settled, expr
