"""The orchestrator-independent part of outcome reporting: `record_effect`, the
status an attempt ends with, and `Gate.report` against a real sidecar.

The orchestrators' own hooks are exercised in test_airflow_integration.py and
test_prefect_integration.py; here the same calls are made as they make them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import StepDecision
from sidecar.integrations import airflow as airflow_integration
from sidecar.integrations import prefect as prefect_integration
from sidecar.integrations.gate import Gate, GuardConfig, Verdict, verdict
from sidecar.integrations.outcomes import (
    FAILED,
    SKIPPED,
    SUCCEEDED,
    TIMED_OUT,
    begin,
    current_attempt,
    end,
    record_effect,
    status_of,
)
from sidecar.integrations.steps import EntityTypes, RunFacts, Step
from tests.helpers import running_sidecar

PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
APPROVAL = {"approver": "ines", "approved_at": "2026-11-25T09:00:00Z", "ticket": "CHG-1"}
DECISION_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
GRANT = Step("grant_access", "github", workload=PROVISIONER)


def facts(step_id: str = "grant_access", attempt: int = 1, **inputs: Any) -> RunFacts:
    return RunFacts("onboarding", "run-1", step_id, attempt, inputs)


def allowed(decision_id: str = DECISION_ID) -> StepDecision:
    return StepDecision(True, "ok", decision_id=decision_id)


def test_both_orchestrators_offer_the_same_helper() -> None:
    assert airflow_integration.record_effect is record_effect
    assert prefect_integration.record_effect is record_effect


def test_an_effect_declared_in_the_body_goes_with_the_attempts_outcome() -> None:
    started = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    attempt, token = begin(allowed(), facts(attempt=2), GRANT, now=started)
    try:
        assert current_attempt() is attempt
        assert record_effect(identity="bob@example.org", entitlements_added=["engineering"])
        # Several calls add up: entitlements accumulate (once each), a later value replaces.
        assert record_effect(entitlements_added=["engineering", "on-call"], account="created")
        issued = datetime(2026, 11, 25, 10, 1, tzinfo=UTC)
        assert record_effect(
            credential_issued="cred-bob-1", issued_at=issued, expires_at=issued + timedelta(hours=1)
        )
    finally:
        end(token)
    assert current_attempt() is None
    assert attempt.outcome(SUCCEEDED) == {
        "decision_id": DECISION_ID,
        "status": "succeeded",
        "attempt": 2,
        "started_at": started,
        "effect": {
            "target_system": "github",  # the step's target unless the step says otherwise
            "identity": {"type": "User", "id": "bob@example.org"},
            "entitlements_added": ["engineering", "on-call"],
            "account": "created",
            "credential": {
                "id": "cred-bob-1",
                "change": "issued",
                "issued_at": issued,
                "expires_at": issued + timedelta(hours=1),
            },
        },
    }


def test_identity_and_target_can_be_given_explicitly() -> None:
    types = EntityTypes(user="Employee")
    attempt, token = begin(allowed(), facts(), GRANT, types=types)
    try:
        assert record_effect(identity="bob", entitlements_removed=["admins"])
        assert record_effect(identity={"type": "ServiceAccount", "id": "ci"}, target="gitlab")
        assert record_effect(credential_revoked="cred-ci-7")
    finally:
        end(token)
    assert attempt.outcome(FAILED, "requests.HTTPError")["effect"] == {
        "target_system": "gitlab",
        "identity": {"type": "ServiceAccount", "id": "ci"},
        "entitlements_removed": ["admins"],
        "credential": {"id": "cred-ci-7", "change": "revoked"},
    }
    assert attempt.outcome(FAILED, "requests.HTTPError")["error_class"] == "requests.HTTPError"


def test_no_effect_declared_sends_none() -> None:
    attempt, token = begin(allowed(), facts(), GRANT)
    end(token)
    assert "effect" not in attempt.outcome(SUCCEEDED)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"account": "suspended"}, "account must be one of created, disabled, deleted"),
        ({"entitlements_added": "admins"}, "a list of entitlements, not one string"),
        ({"credential_issued": "a", "credential_revoked": "b"}, "issued or revoked"),
        ({"expires_at": WEDNESDAY_10}, "belong to a credential"),
        ({"identity": {"id": "bob"}}, "effect.identity"),
        ({"entitlements_added": ["x" * 300]}, "entitlements_added"),
        ({"credential_issued": "c", "expires_at": "tomorrow"}, "expires_at"),
    ],
)
def test_a_bad_effect_is_a_warning_never_an_error_in_the_task(
    kwargs: dict[str, Any], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    attempt, token = begin(allowed(), facts(), GRANT)
    try:
        assert record_effect(identity="bob@example.org")
        with caplog.at_level(logging.WARNING, logger="sidecar.integrations.outcomes"):
            assert record_effect(**kwargs) is False
    finally:
        end(token)
    assert message in caplog.text
    # What was declared before the refused call is kept, and nothing of it.
    assert attempt.effect == {"identity": {"type": "User", "id": "bob@example.org"}}


def test_record_effect_outside_a_guarded_task_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sidecar.integrations.outcomes"):
        assert record_effect(identity="bob@example.org") is False
    assert "outside a guarded task" in caplog.text


class AirflowSkipException(Exception):
    pass


class AirflowTaskTimeout(BaseException):  # as Airflow's: a BaseException
    pass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (None, (SUCCEEDED, "")),
        (ValueError("no"), (FAILED, "ValueError")),
        (ConnectionError("down"), (FAILED, "ConnectionError")),
        (AirflowSkipException("nothing to do"), (SKIPPED, "")),
        (TimeoutError(), (TIMED_OUT, "TimeoutError")),
        (
            AirflowTaskTimeout(),
            (TIMED_OUT, f"{__name__}.AirflowTaskTimeout"),
        ),
    ],
)
def test_the_status_an_attempt_ends_with(
    exc: BaseException | None, expected: tuple[str, str]
) -> None:
    assert status_of(exc) == expected


def test_gate_reports_outcomes_to_a_real_sidecar(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_sidecar(tmp_path, clock=lambda: WEDNESDAY_10) as running:
        gate = Gate(GuardConfig(target=running.tcp))
        run = facts("grant_access", 1, requester="maria", approval=APPROVAL)
        decision = gate.check(GRANT, run)
        assert verdict(decision) is Verdict.ALLOW
        attempt, token = gate.begin(decision, run, GRANT)
        record_effect(identity="bob@example.org", entitlements_added=["engineering"])
        end(token)
        report = gate.report(attempt, SUCCEEDED)
        assert report.recorded and report.decision == "ALLOW" and not report.violation
        # Once per attempt: a second report for the same attempt is not sent.
        assert not gate.report(attempt, FAILED, "ValueError").recorded

        # A retry is a new attempt with its own decision, and its own outcome.
        retry = facts("grant_access", 2, requester="maria", approval=APPROVAL)
        second = gate.check(GRANT, retry)
        failed_attempt, token = gate.begin(second, retry, GRANT)
        end(token)
        assert gate.report(failed_attempt, FAILED, "identity_systems.TargetSystemDown").recorded
        gate.close()
        trail = [e for e in running.audit_events() if e.get("kind") in ("decision", "outcome")]
    assert [(e["kind"], e.get("attempt") or e["context"]["attempt"]) for e in trail] == [
        ("decision", 1),
        ("outcome", 1),
        ("decision", 2),
        ("outcome", 2),
    ]
    first, failed = trail[1], trail[3]
    assert first["decision_id"] == decision.decision_id
    assert first["status"] == "succeeded"
    assert first["effect"] == {
        "target_system": "github",
        "identity": {"type": "User", "id": "bob@example.org"},
        "entitlements_added": ["engineering"],
    }
    assert first["started_at"] <= first["finished_at"]
    assert failed["decision_id"] == second.decision_id
    assert (failed["status"], failed["error_class"]) == (
        "failed",
        "identity_systems.TargetSystemDown",
    )
    assert "effect" not in failed

    # The sidecar is gone now: the report comes back not recorded, with a warning, no raise.
    late = gate.check(GRANT, run)
    assert verdict(late) is Verdict.UNAVAILABLE
    orphan, token = begin(allowed(), run, GRANT)
    end(token)
    logger = logging.getLogger("task")
    with caplog.at_level(logging.WARNING, logger="task"):
        report = Gate(GuardConfig(target=running.tcp)).report(orphan, SUCCEEDED, logger=logger)
    assert not report.recorded
    line = "stepguard outcome succeeded of onboarding/run-1/grant_access attempt 1 NOT recorded"
    assert line in caplog.text


def test_a_misconfigured_gate_reports_nothing_and_raises_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> GuardConfig:
        raise RuntimeError("no config")

    attempt, token = begin(allowed(), facts(), GRANT)
    end(token)
    with caplog.at_level(logging.WARNING):
        report = Gate(broken).report(attempt, SUCCEEDED)
    assert not report.recorded
    assert "no config" in report.reason
    assert "NOT recorded" in caplog.text


def test_airflows_callbacks_report_skip_timeout_and_failure_from_the_context(
    tmp_path: Path,
) -> None:
    """What the Airflow policy's callbacks send, from the context Airflow gives them
    (the real runs cover success and failure; skip and timeout are shown here)."""
    with running_sidecar(tmp_path, clock=lambda: WEDNESDAY_10) as running:
        policy = airflow_integration.StepguardPolicy(GuardConfig(target=running.tcp))
        sent = []
        for attempt_no, (status, exc) in enumerate(
            [
                (SKIPPED, AirflowSkipException("nothing to grant")),
                (None, AirflowTaskTimeout()),
                (None, PermissionError("403")),
                (None, None),  # failed, and Airflow gave no exception
            ],
            start=1,
        ):
            run = facts("grant_access", attempt_no, requester="maria", approval=APPROVAL)
            decision = policy.gate.check(GRANT, run)
            attempt, token = policy.gate.begin(decision, run, GRANT)
            context: dict[str, Any] = {airflow_integration.ATTEMPT_KEY: attempt, "exception": exc}
            policy.report(context, status)
            policy.report(context, status)  # a callback run twice sends once
            sent.append(decision.decision_id)
            end(token)
        # A context the gate did not admit (a DENY) reports nothing.
        policy.report({"exception": PermissionError("denied")}, None)
        policy.gate.close()
        outcomes = [e for e in running.audit_events() if e.get("kind") == "outcome"]
    assert [(o["decision_id"], o["status"], o.get("error_class")) for o in outcomes] == [
        (sent[0], "skipped", None),
        (sent[1], "timed_out", f"{__name__}.AirflowTaskTimeout"),
        (sent[2], "failed", "PermissionError"),
        (sent[3], "failed", "Unknown"),
    ]
    assert [o["attempt"] for o in outcomes] == [1, 2, 3, 4]


class CancelledError(asyncio.CancelledError):
    """Named and placed as the one Prefect's `timeout_seconds` raises into a task body."""


CancelledError.__module__ = "prefect._internal.concurrency.cancellation"


def test_prefects_timeout_is_timed_out_other_cancellations_failed() -> None:
    assert prefect_integration.ended_with(CancelledError()) == (
        TIMED_OUT,
        "prefect._internal.concurrency.cancellation.CancelledError",
    )
    # asyncio's, as a sync task in a worker thread gets it: the timeout when the task has one.
    assert prefect_integration.ended_with(asyncio.CancelledError(), has_timeout=True) == (
        TIMED_OUT,
        "asyncio.exceptions.CancelledError",
    )
    for has_timeout in (False, None):  # None: outside a task run, read as no timeout
        assert prefect_integration.ended_with(
            asyncio.CancelledError(), has_timeout=has_timeout
        ) == (FAILED, "asyncio.exceptions.CancelledError")
    assert prefect_integration.ended_with(TimeoutError()) == (TIMED_OUT, "TimeoutError")
    assert prefect_integration.ended_with(KeyError("x"), has_timeout=True) == (FAILED, "KeyError")
