"""A report the trail holds twice is evidence of one thing (report_id, issue 18).

The sidecar forgets the reports it recorded when it restarts: a report sent again
across a restart is written a second time, under a second outcome id. The
evidence store keeps the first and drops the later ones, so a failed revocation is
counted once. A real sidecar, stopped and started again on the same trail.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.audit.segments import collect
from sidecar.client import StepguardClient
from sidecar.core.bundle import load_bundle
from sidecar.evidence.options import Options
from sidecar.evidence.store import open_store
from tests.helpers import POLICIES, grant_request, running_sidecar


def test_a_report_sent_again_across_a_restart_is_loaded_once(tmp_path: Path) -> None:
    report = pb.RecordOutcomeRequest(
        status=pb.OUTCOME_STATUS_FAILED, error_class="http.503", attempt=1, report_id="once"
    )
    other = pb.RecordOutcomeRequest(
        status=pb.OUTCOME_STATUS_FAILED, error_class="http.503", attempt=1, report_id="twice"
    )
    answers = []
    for _ in range(2):  # a sidecar, then a new one on the same trail (memory lost)
        with running_sidecar(tmp_path) as run, StepguardClient(run.tcp) as client:
            if not report.decision_id:
                report.decision_id = client.authorize(grant_request()).decision_id
                other.decision_id = report.decision_id
                other.report_id = "another"
            stub = pb_grpc.AuthorizerStub(client._channel)
            answers.append(stub.RecordOutcome(report, timeout=10))
            stub.RecordOutcome(other, timeout=10)
            other.report_id = "third"
    (trail,) = collect([tmp_path])
    events = [
        event
        for segment in trail.segments
        for line in segment.read_bytes().splitlines()
        if (event := json.loads(line)).get("kind") == "outcome"
    ]
    assert answers[0].outcome_id != answers[1].outcome_id  # recorded twice in the trail
    assert [e["report_id"] for e in events].count("once") == 2
    store = open_store(
        [tmp_path],
        Options(now=datetime(2027, 1, 1, tzinfo=UTC), lifecycle=load_bundle(POLICIES).lifecycle),
        processes=1,
    )
    try:
        assert store.verification.ok
        stored = store.db.execute(
            "SELECT id, report_id FROM outcomes ORDER BY recorded, file, line"
        ).fetchall()
    finally:
        store.close()
    assert [tuple(r) for r in stored] == [
        (answers[0].outcome_id, "once"),
        (events[1]["id"], "another"),
        (events[3]["id"], "third"),
    ]
