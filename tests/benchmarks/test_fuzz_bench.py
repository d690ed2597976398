"""The fuzz benchmark's parts: its oracle, its hand-made wire bytes, and a short real run.

The 100,000-request run is a benchmark (benchmarks/RESULTS.md); here a few
hundred calls check that the harness measures what it says it does.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from benchmarks import fuzz
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from tests.helpers import POLICIES


def _notify() -> pb.AuthorizeRequest:
    m = pb.AuthorizeRequest()
    m.principal.type, m.principal.id = "Workload", "spiffe://example.org/ns/comms/sa/notifier"
    m.action.type, m.action.id = "Action", "notify"
    m.resource.type, m.resource.id = "TargetSystem", "slack"
    return m


def test_oracle_allows_what_cedar_allows_and_ignores_self_declared_parents() -> None:
    oracle = fuzz.Oracle(POLICIES)
    assert oracle.allows(_notify())
    stranger = _notify()
    stranger.principal.id = "spiffe://example.org/ns/hr/sa/onboarding"
    stranger.principal.parents.add(type="WorkloadGroup", id="provisioning")
    stranger.principal.attributes["shared"].bool_value = False
    assert not oracle.allows(stranger)
    assert oracle.checked == 2


def test_deep_values_are_nested_as_deep_as_asked() -> None:
    for via_set in (False, True):
        value = pb.Value.FromString(fuzz.deep_value(20, via_set))
        depth = 0
        while value.WhichOneof("kind") in ("record_value", "set_value"):
            value = value.set_value.values[0] if via_set else value.record_value.fields["a"]
            depth += 1
        assert depth == 20 and value.bool_value


def test_every_maker_gives_bytes_or_a_message() -> None:
    r = random.Random(7)
    for kind, (_, make) in fuzz.UNARY.items():
        for _ in range(20):
            made = make(r)
            assert isinstance(made, bytes | pb.AuthorizeRequest), kind
    assert all(len(b.items) <= 3000 for b in (fuzz.batch(r) for _ in range(5)))


def test_field_path_check_tells_named_from_unnamed_refusals() -> None:
    assert fuzz.FIELD_PATH.match("context.attributes['x'][0]: value has no kind set")
    assert fuzz.FIELD_PATH.match("request: bytes are not a protobuf message")
    assert not fuzz.FIELD_PATH.match("Error parsing message with type 'stepguard.v1.Value'")


def test_a_short_run_against_the_real_server_finds_nothing_wrong(tmp_path: Path) -> None:
    args = argparse.Namespace(
        requests=400, seed=3, clients=4, policies=str(POLICIES), progress=False
    )
    summary = fuzz.run(args)
    assert summary["calls"] == 400
    assert summary["decisions"] > 0 and summary["allows"] > 0
    assert summary["allows_checked_by_cedar"] == summary["allows"]
    assert fuzz.verdict(summary) == [], fuzz.render(summary)
    assert summary["audit_events_per_decision"] == 1.0


def test_verdict_names_each_kind_of_finding() -> None:
    clean = {
        "server_deaths": 0,
        "wrongful_allows": 0,
        "decisions_missing_from_trail": 0,
        "decisions_recorded_twice": 0,
        "decisions_recorded_otherwise": 0,
        "duplicate_decision_ids": 0,
        "refusals_without_field_path": 0,
        "other_errors": {},
    }
    assert fuzz.verdict(clean) == []
    for key in list(clean):
        bad = dict(clean)
        bad[key] = {"INTERNAL": 1} if key == "other_errors" else 1
        found = fuzz.verdict(bad)
        assert len(found) == 1 and found[0].startswith(key)
