"""`Gate.submit`, the integrations' default way to report an attempt's outcome:
queued for the client's outcome reporter, sent in a batch, against a real
sidecar. A retry of the same step is decided only after its earlier attempt's
outcome is in the trail; the task's log gets the same lines as `Gate.report`
gives, NOT recorded included."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import StepDecision, StepguardClient
from sidecar.integrations.gate import Gate, GuardConfig, Verdict, verdict
from sidecar.integrations.outcomes import FAILED, SUCCEEDED, begin, end, record_effect
from sidecar.integrations.steps import RunFacts, Step
from tests.helpers import Running, running_sidecar

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
APPROVAL = {"approver": "ines", "approved_at": "2026-11-25T09:00:00Z", "ticket": "CHG-1"}
GRANT = Step("grant_access", "github", workload=PROVISIONER)


def facts(attempt: int, step_id: str = "grant_access") -> RunFacts:
    return RunFacts(
        "onboarding", "run-1", step_id, attempt, {"requester": "maria", "approval": APPROVAL}
    )


def kinds(running: Running) -> list[str]:
    return [e["kind"] for e in running.audit_events() if e["kind"] in ("decision", "outcome")]


def test_submitted_outcomes_land_before_the_retry_and_on_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_sidecar(tmp_path, clock=lambda: WEDNESDAY_10) as running:
        client = StepguardClient(running.tcp)
        client.outcomes.flush_interval_s = 3600  # only a retry, a flush or close sends
        gate = Gate(GuardConfig(target=running.tcp), client=client)
        logger = logging.getLogger("task")
        first = gate.check(GRANT, facts(1))
        assert verdict(first) is Verdict.ALLOW
        attempt, token = gate.begin(first, facts(1), GRANT)
        record_effect(identity="bob@example.org", entitlements_added=["engineering"])
        end(token)
        with caplog.at_level(logging.INFO, logger="task"):
            assert gate.submit(attempt, FAILED, "identity_systems.TargetSystemDown", logger=logger)
            assert not gate.submit(attempt, SUCCEEDED, logger=logger)  # once per attempt
            assert kinds(running) == ["decision"]  # queued

            # Another step of the run is decided without waiting for it...
            other = gate.check(Step("notify", "slack", workload=PROVISIONER), facts(1, "notify"))
            assert kinds(running) == ["decision", "decision"]
            # ...the retry of this one only once its earlier attempt's outcome is recorded.
            second = gate.check(GRANT, facts(2))
            retry, token = gate.begin(second, facts(2), GRANT)
            end(token)
            assert gate.submit(retry, SUCCEEDED, logger=logger)
            gate.close()
            client.close()
        trail = [e for e in running.audit_events() if e["kind"] in ("decision", "outcome")]
    assert [(e["kind"], e.get("decision_id") or e["id"]) for e in trail] == [
        ("decision", first.decision_id),
        ("decision", other.decision_id),
        ("outcome", first.decision_id),
        ("decision", second.decision_id),
        ("outcome", second.decision_id),
    ]
    failed, succeeded = trail[2], trail[4]
    assert (failed["status"], failed["attempt"], failed["error_class"]) == (
        "failed",
        1,
        "identity_systems.TargetSystemDown",
    )
    assert failed["effect"]["entitlements_added"] == ["engineering"]
    assert (succeeded["status"], succeeded["attempt"]) == ("succeeded", 2)
    assert f"recorded (decision {first.decision_id})" in caplog.text
    assert f"recorded (decision {second.decision_id})" in caplog.text


def test_a_submitted_outcome_the_sidecar_never_gets_is_logged_not_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        gone = f"127.0.0.1:{s.getsockname()[1]}"
    decision: Any = StepDecision(True, "ok", decision_id="01890a5d-ac96-774b-bcce-b302099a8057")
    attempt, token = begin(decision, facts(1), GRANT)
    end(token)
    gate = Gate(GuardConfig(target=gone, timeout_s=0.5))
    logger = logging.getLogger("task")
    with caplog.at_level(logging.WARNING, logger="task"):
        assert gate.submit(attempt, SUCCEEDED, logger=logger)  # queued: the task goes on
        gate.close()  # tried, retried, given up on: said in the task's log
    line = "stepguard outcome succeeded of onboarding/run-1/grant_access attempt 1 NOT recorded"
    assert line in caplog.text
