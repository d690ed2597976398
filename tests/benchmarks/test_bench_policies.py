"""The policy-count workloads of `./dev bench` (benchmarks/policies.py): the *pinned*
bundles, where no generated policy applies to the benchmarked request (the index's best
case, flat by construction), and the *spread* bundles, where a realistic share does.
Loaded by the real bundle loader (strict schema validation) and served by a real sidecar."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from benchmarks.policies import POLICY_COUNTS, SPREAD, bundle_dir, spread_bundle_dir
from benchmarks.workload import example_request
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.validate import Limits, request_from_proto
from tests.helpers import BUSINESS_HOURS, POLICIES, running_sidecar


def _candidates(bundle: Bundle, target: str) -> set[str]:
    request = request_from_proto(
        example_request(target=target, now=BUSINESS_HOURS), bundle, Limits(), now=BUSINESS_HOURS
    )
    assert bundle.index is not None
    chosen = bundle.index.candidates(request)
    assert chosen is not None, "the index fell back to the whole set"
    return {bundle.index.ids[i] for i in chosen}


# The example policies the index keeps for the benchmarked request, whatever the size.
EXAMPLE_CANDIDATES = len(_candidates(load_bundle(POLICIES), "jira"))


@pytest.mark.parametrize(("total", "applicable"), SPREAD)
def test_a_spread_bundle_has_its_share_of_policies_that_apply(
    tmp_path: Path, total: int, applicable: int
) -> None:
    bundle = load_bundle(spread_bundle_dir(total, applicable, tmp_path))
    assert bundle.policy_count == total
    chosen = _candidates(bundle, "jira")
    generated = {c for c in chosen if c.startswith("spread-")}
    assert len(chosen) == EXAMPLE_CANDIDATES + applicable
    assert generated == {p for p in bundle.policies if "-applies-" in p}
    assert len(generated) == applicable
    # The others are spread over the schema: many actions, groups and targets.
    others = (bundle.policies[p].text for p in bundle.policies if p.endswith("-other"))
    text = "\n".join(others)
    if total >= 200:
        assert text.count('Action::"') >= 10 and "team-6" in text and "sys-" in text


@pytest.mark.parametrize("total", POLICY_COUNTS)
def test_no_pinned_policy_applies_so_the_index_keeps_the_example_ones(
    tmp_path: Path, total: int
) -> None:
    chosen = _candidates(load_bundle(bundle_dir(total, tmp_path)), "sys-1")
    assert len(chosen) == EXAMPLE_CANDIDATES
    assert not any(c.startswith("gen-") for c in chosen)


def test_the_policies_that_apply_leave_the_answer_alone(tmp_path: Path) -> None:
    """The spread bundle's applicable policies are evaluated, and the request is still the
    ALLOW the example bundle gives, determined by the same policy."""
    total, applicable = SPREAD[1]
    answers = []
    for name, policies in (
        ("spread", spread_bundle_dir(total, applicable, tmp_path / "bundles")),
        ("example", POLICIES),
    ):
        (tmp_path / name).mkdir()
        with (
            running_sidecar(tmp_path / name, policies=policies) as sc,
            grpc.insecure_channel(sc.tcp) as channel,
        ):
            stub = pb_grpc.AuthorizerStub(channel)
            answers.append(stub.Authorize(example_request(now=BUSINESS_HOURS), timeout=10))
    spread_answer, example_answer = answers
    assert spread_answer.decision == example_answer.decision == pb.DECISION_ALLOW
    assert [p.id for p in spread_answer.determining_policies] == [
        p.id for p in example_answer.determining_policies
    ]
