"""`evaluate_many` decides a list of requests exactly as `evaluate` decides each.

One cedarpy call per distinct (policy set, entity set) instead of one per
request must change nothing: the same decision, determining policies, errors
and obligations, in the same order, whatever the mix (requests the index
narrows differently, requests supplying their own entities, validation's
denials, requests Cedar refuses). Reasons and errors are compared as sets:
cedarpy reports them from a hash set, in no stable order, even for two runs of
the same request (tests/core/test_index.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.policies import bundle_dir, spread_bundle_dir
from benchmarks.workload import example_json
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.engine import evaluate, evaluate_many
from sidecar.core.errors import InvalidRequest
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import AuthzRequest, EntityData, EntityUid, PolicyErrors, Result
from sidecar.core.validate import Limits, request_from_proto

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # a Wednesday, inside business hours

WORKLOADS = [
    "spiffe://example.org/ns/identity/sa/provisioner",
    "spiffe://example.org/ns/identity/sa/deprovisioner",
    "spiffe://example.org/ns/identity/sa/default",
    "spiffe://example.org/ns/comms/sa/notifier",
    "spiffe://example.org/ns/etl/sa/worker",
    "spiffe://example.org/ns/other/sa/unknown",
]
ACTIONS = [
    "grant_access",
    "create_account",
    "change_access",
    "issue_credential",
    "revoke_access",
    "verify_revocation",
    "lookup_identity",
    "notify",
]
TARGETS = ["jira", "okta", "github", "aws-prod", "slack", "sys-0", "sys-1", "nowhere"]
USERS = ["maria", "ines", "tom", "dana", "nobody"]


_BUNDLES: dict[str, Bundle] = {}


@pytest.fixture(scope="module", autouse=True)
def _load(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The example bundle and two of the benchmarks' (by name: Hypothesis reports names)."""
    work = tmp_path_factory.mktemp("bundles")
    _BUNDLES["example"] = load_bundle(ROOT / "policies")
    _BUNDLES["pinned"] = load_bundle(bundle_dir(40, work))
    _BUNDLES["spread"] = load_bundle(spread_bundle_dir(60, 10, work))


def _outcome(result: Result) -> tuple[Any, ...]:
    return (
        result.decision,
        frozenset((r.id, r.source, tuple(sorted(r.annotations.items()))) for r in result.reasons),
        frozenset(result.errors),
        result.obligations,
        result.revision,
        result.policy_errors,
    )


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request in the JSON form: the benchmarks' own, varied where the policies look."""
    when = NOW + timedelta(hours=draw(st.integers(-20, 20)))
    data = example_json(run_id=f"run-{draw(st.integers(0, 3))}", now=when)
    data["principal"]["id"] = draw(st.sampled_from(WORKLOADS))
    data["action"]["id"] = draw(st.sampled_from(ACTIONS))
    data["resource"]["id"] = draw(st.sampled_from(TARGETS))
    ctx = data["context"]
    ctx["requester"]["id"] = draw(st.sampled_from(USERS))
    ctx["attempt"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        ctx["approval"]["approver"]["id"] = draw(st.sampled_from(USERS))
    if draw(st.booleans()):
        del ctx["approval"]
    if draw(st.booleans()):
        del ctx["time_bound"]
    return data


@st.composite
def items(draw: st.DrawFn) -> tuple[str, Any]:
    """A validated request, or one the engine gets as is (a denial, an unknown
    entity it is told about, a context Cedar refuses, entities Cedar rejects)."""
    item: tuple[str, Any] = draw(
        st.one_of(
            requests().map(lambda d: ("json", d)),
            st.sampled_from(["denial", "supplied", "refused", "rejected", "no-context"]).map(
                lambda k: (k, None)
            ),
        )
    )
    return item


def _request(kind: str, data: Any, bundle: Bundle) -> AuthzRequest | None:
    if kind == "json":
        try:
            return request_from_proto(request_from_json(data), bundle, Limits(), now=NOW)
        except InvalidRequest:
            return None
    base = request_from_proto(request_from_json(example_json(now=NOW)), bundle, Limits(), now=NOW)
    stranger = EntityUid("Workload", "spiffe://example.org/ns/new/sa/job")
    if kind == "denial":
        return AuthzRequest(base.principal, base.action, base.resource, base.context, denial="no")
    if kind == "supplied":
        ent = EntityData(stranger, {"shared": False})
        return AuthzRequest(stranger, base.action, base.resource, base.context, (ent,))
    if kind == "rejected":  # an attribute the schema does not declare
        ent = EntityData(stranger, {"shared": False, "rogue": 1})
        return AuthzRequest(stranger, base.action, base.resource, base.context, (ent,))
    if kind == "refused":  # `now` missing: Cedar refuses the context
        context = {k: v for k, v in base.context.items() if k != "now"}
        return AuthzRequest(base.principal, base.action, base.resource, context)
    return AuthzRequest(base.principal, base.action, base.resource, {})


@settings(max_examples=60, deadline=None)
@given(
    which=st.sampled_from(["example", "pinned", "spread"]),
    batch=st.lists(items(), min_size=1, max_size=12),
    cedar=st.booleans(),
)
def test_evaluate_many_is_evaluate_of_each(
    which: str, batch: list[tuple[str, Any]], cedar: bool
) -> None:
    bundle = _BUNDLES[which]
    mode = PolicyErrors.CEDAR if cedar else PolicyErrors.DENY
    reqs = [r for kind, data in batch if (r := _request(kind, data, bundle)) is not None]
    many = evaluate_many(bundle, reqs, policy_errors=mode)
    one = [evaluate(bundle, r, policy_errors=mode) for r in reqs]
    assert [_outcome(r) for r in many] == [_outcome(r) for r in one]


def test_a_batch_mixes_every_kind_of_answer() -> None:
    """Not vacuous: one batch holds ALLOWs, DENYs by policy, denials, Cedar's refusals
    and rejected entities, each answered as evaluate answers it alone."""
    bundle = _BUNDLES["example"]
    kinds = ["supplied", "denial", "refused", "rejected", "no-context"]
    allow = request_from_proto(request_from_json(example_json(now=NOW)), bundle, Limits(), now=NOW)
    reqs = [allow, *(r for k in kinds if (r := _request(k, None, bundle)) is not None), allow]
    many = evaluate_many(bundle, reqs)
    assert [_outcome(r) for r in many] == [_outcome(evaluate(bundle, r)) for r in reqs]
    assert many[0].allowed and many[-1].allowed
    assert not any(r.allowed for r in many[1:-1])
    messages = [" ".join(e.message for e in r.errors) for r in many[1:-1]]
    assert "request entities rejected" in messages[3]
    assert any("context" in m for m in messages)


def test_no_requests_no_answers() -> None:
    assert evaluate_many(_BUNDLES["example"], []) == []


def test_one_cedarpy_call_per_policy_set_and_entity_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of it: requests sharing their handles are one cedarpy call (a spy
    counts the real calls), and a request with entities of its own is a call apart."""
    import cedarpy

    bundle = _BUNDLES["example"]
    real = cedarpy._internal.is_authorized_batch
    sizes: list[int] = []

    def spy(calls: list[Any], *args: Any) -> Any:
        sizes.append(len(calls))
        return real(calls, *args)

    monkeypatch.setattr(cedarpy._internal, "is_authorized_batch", spy)
    steps = [
        request_from_proto(
            request_from_json(example_json(run_id=f"run-{i}", now=NOW)), bundle, Limits(), now=NOW
        )
        for i in range(20)
    ]
    supplied = _request("supplied", None, bundle)
    assert supplied is not None
    many = evaluate_many(bundle, [*steps, supplied])
    assert sorted(sizes) == [1, 20]
    assert all(r.allowed for r in many[:20])
    sizes.clear()
    for r in steps:
        evaluate(bundle, r)
    assert sizes == [1] * 20
