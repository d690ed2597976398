"""RecordOutcomes on the real sidecar as the outcome reporter sends it: a batch is
one trail commit, each outcome still judged and chained on its own; a batch the
trail cannot take is refused whole, and the reporter sends it again."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc

from sidecar.audit.segments import collect
from sidecar.audit.sink import MemorySink
from sidecar.client import OutcomeReporter, StepguardClient
from tests.helpers import assert_trail_verifies, grant_request, running_sidecar

UNKNOWN = "01a24a69-8228-7000-8f19-46017a570b02"


def _outcomes_by_segment(tmp: Path) -> list[tuple[str, dict[str, Any]]]:
    """(segment, event) for every outcome event of the trail, in chain order."""
    (trail,) = collect([tmp])
    return [
        (segment.name, event)
        for segment in trail.segments
        for line in segment.read_bytes().splitlines()
        if (event := json.loads(line)).get("kind") == "outcome"
    ]


def test_a_batch_is_one_commit_and_the_trail_verifies(tmp_path: Path) -> None:
    """With a segment ended at every commit, the batch's outcomes share one segment
    (one commit), each chained, judged and flagged as it would be alone."""
    with running_sidecar(tmp_path, audit_rotate_bytes=1) as run, StepguardClient(run.tcp) as c:
        allowed = c.authorize(grant_request()).decision_id
        denied = c.authorize(grant_request(approver=None)).decision_id
        reports = c.record_outcomes(
            [
                {"decision_id": allowed, "status": "succeeded", "attempt": 1},
                {"decision_id": denied, "status": "succeeded", "attempt": 1},
                {"decision_id": UNKNOWN, "status": "failed", "error_class": "E"},
                {"decision_id": allowed, "status": "bogus"},  # refused alone
            ]
        )
    assert [r.recorded for r in reports] == [True, True, True, False]
    assert [r.violation for r in reports[:3]] == ["", "decision_denied", "decision_unknown"]
    found = _outcomes_by_segment(tmp_path)
    assert [e["id"] for _, e in found] == [r.outcome_id for r in reports[:3]]
    assert len({segment for segment, _ in found}) == 1  # one commit
    assert [e["status"] for _, e in found] == ["succeeded", "succeeded", "failed"]
    assert_trail_verifies(tmp_path, "--json")


def test_a_batch_the_trail_cannot_take_is_refused_and_sent_again(tmp_path: Path) -> None:
    """The trail fails: every outcome of the batch comes back UNAVAILABLE (none
    recorded); the reporter sends them again once it recovers, in order."""
    sink = MemorySink()
    with running_sidecar(tmp_path, sink=sink) as run, StepguardClient(run.tcp) as client:
        ids = [client.authorize(grant_request()).decision_id for _ in range(3)]
        sink.fail_with = "disk full"
        refused = client.record_outcomes([{"decision_id": d, "status": "succeeded"} for d in ids])
        assert [r.code for r in refused] == [grpc.StatusCode.UNAVAILABLE] * 3
        assert all("disk full" in r.reason and r.kind and r.kind.retryable for r in refused)
        reporter = OutcomeReporter(client, flush_interval_s=0.01, retries=50)
        for d in ids:
            assert reporter.report(d, "succeeded", attempt=2)
        deadline = time.monotonic() + 20
        while reporter._buf.hold_until == 0.0:  # the first send was refused
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sink.fail_with = None
        reporter.close(timeout=20)
    outcomes = [e for e in sink.events if e["kind"] == "outcome"]
    assert [(e["decision_id"], e["attempt"]) for e in outcomes] == [(d, 2) for d in ids]
    assert reporter.stats.recorded == 3 and reporter.stats.dropped == 0
