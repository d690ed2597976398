"""decision/outcomes.py on real trail files: the index, the trail lookup and its bounds,
and a property over any sequence of decisions, outcomes and restarts."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.audit.filesink import FileSink
from sidecar.audit.redact import Redactor
from sidecar.audit.segments import collect
from sidecar.audit.sink import MemorySink
from sidecar.audit.verify import verify
from sidecar.core.bundle import load_bundle
from sidecar.core.event import CallMeta
from sidecar.core.jsonreq import request_from_json
from sidecar.core.outcome import Outcome
from sidecar.core.validate import Limits
from sidecar.decision.decider import Decider
from sidecar.decision.metrics import Metrics
from sidecar.decision.outcomes import (
    DecisionIndex,
    OutcomeRecorder,
    TrailLookup,
    decision_ms,
    indexing,
    trail_lookup,
)
from tests.helpers import BUSINESS_HOURS, POLICIES, grant_request, notify_request

BUNDLE = load_bundle(POLICIES)
UNKNOWN = "01a24a69-8228-7000-8f19-46017a570b02"


class Node:
    """One sidecar process's decider and recorder on a trail file."""

    def __init__(self, path: Path, *, rotate_bytes: int = 0, index_entries: int = 1000) -> None:
        self.sink = FileSink(path, rotate_bytes=rotate_bytes)
        self.index = DecisionIndex(index_entries)
        clock = lambda: BUSINESS_HOURS  # noqa: E731
        metrics = Metrics()
        self.decider = Decider(indexing(self.sink, self.index), metrics, clock, redactor=Redactor())
        self.recorder = OutcomeRecorder(
            self.sink, metrics, clock, index=self.index, trail=TrailLookup(path.parent)
        )

    def decide(self, request: dict[str, Any]) -> tuple[str, bool]:
        msg = request_from_json(request)
        decided = self.decider.decide_message(BUNDLE, msg, CallMeta(), Limits(), started=0.0)
        return decided.decision_id, decided.result.allowed

    def close(self) -> None:
        self.sink.close()


def bounded(request: dict[str, Any], minutes: int | None) -> dict[str, Any]:
    if minutes is not None:
        end = BUSINESS_HOURS + timedelta(minutes=minutes)
        request["context"]["time_bound"] = {"not_after": end.isoformat()}
    return request


def test_index_keeps_the_newest_decisions_only() -> None:
    """At least the newest `max_entries`, at most an eighth more (trimmed in batches)."""
    index = DecisionIndex(8)
    sizes = []
    for n in range(10):
        index.note({"kind": "decision", "id": f"d{n}", "decision": "ALLOW"})
        sizes.append(len(index))
    index.note({"kind": "outcome", "id": "o1"})  # not a decision: not held
    assert sizes == [1, 2, 3, 4, 5, 6, 7, 8, 9, 8]
    assert index.get("d0") is None and index.get("d1") is None and index.get("o1") is None
    held = [index.get(f"d{n}") for n in range(2, 10)]
    assert [h.decision if h else None for h in held] == ["ALLOW"] * 8


def test_indexing_keeps_a_deferring_sink_deferring(tmp_path: Path) -> None:
    deferring = FileSink(tmp_path / "audit.jsonl")
    try:
        assert callable(getattr(indexing(deferring, DecisionIndex()), "enqueue", None))
    finally:
        deferring.close()
    plain = indexing(MemorySink(), DecisionIndex())
    assert not hasattr(plain, "enqueue")


def test_trail_lookup_reads_only_the_newest_segments(tmp_path: Path) -> None:
    """A decision four rotations back is beyond the bound; the newer ones are found."""
    node = Node(tmp_path / "audit.jsonl", rotate_bytes=1)  # every commit ends a segment
    ids = [node.decide(notify_request())[0] for _ in range(8)]
    node.close()
    (trail,) = collect([tmp_path])
    assert len(trail.segments) >= 8
    lookup = TrailLookup(tmp_path, max_segments=4)
    found = [lookup.find(d) is not None for d in ids]
    assert found[-3:] == [True, True, True]
    assert found[0] is False
    assert all(TrailLookup(tmp_path, max_segments=100).find(d) for d in ids)
    # The byte bound: nothing read, nothing found.
    assert TrailLookup(tmp_path, max_bytes=0).find(ids[-1]) is None


def test_trail_lookup_skips_segments_written_before_the_decision(tmp_path: Path) -> None:
    node = Node(tmp_path / "audit.jsonl")
    decision_id, _ = node.decide(notify_request())
    node.close()
    assert TrailLookup(tmp_path).find(decision_id) is not None
    made = decision_ms(decision_id) / 1000
    old = made - 3600
    import os

    os.utime(tmp_path / "audit.jsonl", (old, old))  # as if last written an hour before
    assert TrailLookup(tmp_path).find(decision_id) is None
    assert decision_ms("not-a-uuid") == 0


def test_an_id_inside_another_field_is_not_taken_for_the_decision(tmp_path: Path) -> None:
    node = Node(tmp_path / "audit.jsonl")
    request = notify_request()
    request["context"]["attributes"] = {"ticket_ref": UNKNOWN}
    node.decide(request)
    node.close()
    assert UNKNOWN in (tmp_path / "audit.jsonl").read_text()
    assert TrailLookup(tmp_path).find(UNKNOWN) is None


# --- the property ---------------------------------------------------------------

decide_op = st.tuples(st.just("decide"), st.booleans(), st.one_of(st.none(), st.integers(0, 6)))
outcome_op = st.tuples(
    st.just("outcome"),
    st.integers(-1, 20),  # which decision (-1: one never made)
    st.sampled_from(["succeeded", "failed", "skipped", "timed_out"]),
    st.integers(0, 8),  # finished, minutes after the decision clock (bounds end at 0..6)
)
restart_op = st.tuples(st.just("restart"))
ops = st.lists(st.one_of(decide_op, decide_op, outcome_op, outcome_op, restart_op), max_size=14)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_every_outcome_is_recorded_once_and_flagged_iff_no_allow_was_in_force(
    sequence: list[tuple[Any, ...]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        node = Node(path, index_entries=3)  # small: old decisions come from the trail
        made: list[tuple[str, bool, int | None]] = []
        expected: dict[str, bool] = {}
        try:
            for op in sequence:
                if op[0] == "decide":
                    _, allow, minutes = op
                    request = notify_request() if allow else grant_request(approver=None)
                    decision_id, allowed = node.decide(bounded(request, minutes))
                    assert allowed is allow
                    made.append((decision_id, allowed, minutes))
                elif op[0] == "restart":
                    node.close()
                    node = Node(path, index_entries=3)
                else:
                    _, which, status, finished = op
                    if which < 0 or not made:
                        decision_id, in_force = UNKNOWN, False
                    else:
                        decision_id, allowed, minutes = made[which % len(made)]
                        in_force = allowed and (minutes is None or finished <= minutes)
                    outcome = Outcome(
                        decision_id,
                        status,
                        error_class="E" if status == "failed" else "",
                        finished_at=BUSINESS_HOURS + timedelta(minutes=finished),
                    )
                    recorded = node.recorder.record(outcome, CallMeta())
                    flagged = status != "skipped" and not in_force
                    assert bool(recorded.violation) is flagged, (recorded, made)
                    expected[recorded.outcome_id] = flagged
        finally:
            node.close()
        events = [json.loads(line) for line in path.read_text().splitlines()]
        written = [e for e in events if e["kind"] == "outcome"]
        assert [e["id"] for e in written] == list(expected)  # each once, in order
        assert {e["id"]: "violation" in e for e in written} == expected
        (trail,) = collect([Path(tmp)])
        report = verify(trail, None, accept_missing_anchor=True)
        assert report.problem is None, report.problem


def test_recording_an_outcome_does_not_touch_decision_counts() -> None:
    """Outcomes have their own metric; decisions' counters stay as they were."""
    sink = MemorySink()
    metrics = Metrics()
    recorder = OutcomeRecorder(
        sink, metrics, lambda: datetime(2026, 1, 1, tzinfo=UTC), index=DecisionIndex()
    )
    recorder.record(Outcome(UNKNOWN, "skipped"), CallMeta())
    sample = metrics.registry.get_sample_value
    assert sample("stepguard_outcomes_total", {"status": "skipped", "violation": "none"}) == 1
    assert sample("stepguard_decisions_total", {"decision": "ALLOW", "cached": "false"}) is None
    assert [e["kind"] for e in sink.events] == ["outcome"]


def test_lookup_reads_only_chains_named_like_the_configured_trail(tmp_path: Path) -> None:
    node = Node(tmp_path / "audit.jsonl")
    decision_id, _ = node.decide(notify_request())
    node.close()
    lines = (tmp_path / "audit.jsonl").read_bytes()
    (tmp_path / "audit.jsonl").rename(tmp_path / "audit.w3.jsonl")  # another worker's chain
    lookup = trail_lookup(str(tmp_path / "audit.jsonl"))
    assert lookup is not None and lookup.find(decision_id) is not None
    (tmp_path / "audit.w3.jsonl").unlink()
    (tmp_path / "notes.txt").write_bytes(lines)  # not a chain of this trail
    assert lookup.find(decision_id) is None
    assert trail_lookup("-") is None


def _recorded_caller(
    redactor: Redactor, *, bind: bool, decided_by: str, reporters: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """One decision made for `decided_by` (the notifier's workload) under `redactor`,
    then a skipped outcome from each reporter: the decision's caller as the trail
    recorded it, and each outcome's violation."""
    sink, index, metrics = MemorySink(), DecisionIndex(), Metrics()
    clock = lambda: BUSINESS_HOURS  # noqa: E731
    decider = Decider(
        indexing(sink, index), metrics, clock, redactor=redactor, bind_workload_identity=bind
    )
    recorder = OutcomeRecorder(
        sink, metrics, clock, index=index, redactor=redactor, bind_workload_identity=bind
    )
    msg = request_from_json(notify_request())
    decided = decider.decide_message(
        BUNDLE, msg, CallMeta(identity=decided_by), Limits(), started=0.0
    )
    assert decided.result.allowed
    out = [
        recorder.record(Outcome(decided.decision_id, "skipped"), CallMeta(identity=r)).violation
        for r in reporters
    ]
    return dict(sink.events[0]["caller"]), out


def test_the_reporting_caller_is_compared_as_the_trail_records_it() -> None:
    """A redacted caller identity (a keyed hash) is compared with the reporter's, hashed
    alike; with it removed, workload binding still holds the reporter to the principal."""
    notifier = notify_request()["principal"]["id"]
    other = "spiffe://example.org/ns/comms/sa/intruder"
    hashed = Redactor(["caller.identity"], key=b"k" * 32)
    caller, violations = _recorded_caller(
        hashed, bind=False, decided_by=notifier, reporters=[notifier, other, ""]
    )
    assert caller["identity"].startswith("redacted:hmac-sha256:")
    assert violations == ["", "caller_mismatch", "caller_mismatch"]
    removed = Redactor(["caller.identity"], mode="remove")
    caller, violations = _recorded_caller(
        removed, bind=True, decided_by=notifier, reporters=[notifier, other, ""]
    )
    assert "identity" not in caller
    assert violations == ["", "caller_mismatch", "caller_mismatch"]
    # Without binding and with nothing recorded, there is nothing to hold a reporter to.
    _, violations = _recorded_caller(removed, bind=False, decided_by=notifier, reporters=[other])
    assert violations == [""]


def test_an_outcome_whose_event_cannot_be_encoded_fails_alone(tmp_path: Path) -> None:
    """In a batch, each event is encoded as it is built: one that JSON cannot hold (here
    its decision's principal, as the index noted it) keeps only its own outcome out
    (an AuditError: UNAVAILABLE, report it again); the others are recorded in the one
    commit, and the trail verifies. Before, the batch's commit refused every outcome."""
    node = Node(tmp_path / "audit.jsonl")
    try:
        good = [node.decide(grant_request())[0] for _ in range(3)]
        odd = "01a24a69-8228-7000-8f19-46017a570b77"
        node.index.note(
            {"kind": "decision", "id": odd, "decision": "ALLOW", "principal": {1j: "?"}}
        )
        batch = [Outcome(good[0], "succeeded"), Outcome(odd, "succeeded")]
        batch += [Outcome(d, "succeeded") for d in good[1:]]
        results = node.recorder.record_many(batch, CallMeta())
    finally:
        node.close()
    assert [type(r).__name__ for r in results] == ["Recorded", "UnencodableEvent"] + [
        "Recorded"
    ] * 2
    assert all(r.violation == "" for r in results if not isinstance(r, Exception))
    trail = collect([tmp_path / "audit.jsonl"])[0]
    assert verify(trail).ok
    lines = [json.loads(line) for s in trail.segments for line in s.read_text().splitlines()]
    assert [r["decision_id"] for r in lines if r["kind"] == "outcome"] == [good[0], *good[1:]]


def test_a_batch_is_received_at_one_time(tmp_path: Path) -> None:
    """A RecordOutcomes batch arrives at once: its outcome events share the time it was
    received, and a step that says no time of its own is judged against the decision's
    bound at that time, whichever place it has in the batch. (The clock here moves a
    minute at each reading; before, each outcome read it anew, so the last of a batch
    could pass a bound the first had not.)"""
    node = Node(tmp_path / "audit.jsonl")
    ticks = iter(range(10_000))
    recorder = OutcomeRecorder(
        node.sink,
        Metrics(),
        lambda: BUSINESS_HOURS + timedelta(minutes=next(ticks)),
        index=node.index,
    )
    try:
        ids = [node.decide(bounded(grant_request(), 2))[0] for _ in range(4)]
        results = recorder.record_many([Outcome(d, "succeeded") for d in ids], CallMeta())
    finally:
        node.close()
    assert [r.violation for r in results if not isinstance(r, Exception)] == [""] * 4
    lines = [
        json.loads(line)
        for seg in collect([tmp_path / "audit.jsonl"])[0].segments
        for line in seg.read_text().splitlines()
    ]
    times = {r["time"] for r in lines if r["kind"] == "outcome"}
    assert len(times) == 1 and sum(r["kind"] == "outcome" for r in lines) == 4
