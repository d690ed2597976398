"""The outcome reporters (sidecar/client/reporter.py) against a real sidecar and trail:
outcomes queued with `report_outcome` land in the trail in the order reported,
judged as `record_outcome` judges them; they are sent on close and at exit; and
one that cannot be recorded is never lost silently (logged, counted, told).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import (
    AsyncStepguardClient,
    DecisionKind,
    OutcomeReport,
    OutcomeReporter,
    StepguardClient,
)
from sidecar.client.reporter import DEFAULT_RETRIES
from tests.helpers import ROOT, Running, grant_request, running_sidecar

UNKNOWN = "01a24a69-8228-7000-8f19-46017a570b02"  # a decision id no sidecar made


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Running]:
    with running_sidecar(tmp_path) as running:
        yield running


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _outcomes(running: Running) -> list[dict[str, Any]]:
    return [e for e in running.audit_events() if e["kind"] == "outcome"]


def _judged(event: dict[str, Any]) -> dict[str, Any]:
    """What an outcome event says, without what differs between two recordings of it."""
    return {
        k: v
        for k, v in event.items()
        if k not in ("id", "time", "seq", "prev", "hash", "report_id")
    }


def _run_id(request: dict[str, Any], run: str) -> dict[str, Any]:
    request["context"]["run_id"] = run
    return request


def test_reported_outcomes_land_in_order_judged_as_unary_ones(server: Running) -> None:
    """Several batches (max_batch 4), several outcomes per decision: every one in the
    trail, in the order reported, with the flags and violations `record_outcome`
    gives the same outcome."""
    with StepguardClient(server.tcp) as client:
        allowed = [
            client.authorize(_run_id(grant_request(), f"run-{i}")).decision_id for i in range(5)
        ]
        denied = client.authorize(grant_request(approver=None)).decision_id
        assert all(allowed) and denied
        sent: list[tuple[str, str, int]] = []
        for d in allowed:  # a failed attempt, then a success, per decision
            sent += [(d, "failed", 1), (d, "succeeded", 2)]
        sent += [(denied, "succeeded", 1), (UNKNOWN, "skipped", 1), (UNKNOWN, "succeeded", 1)]
        reporter = OutcomeReporter(client, max_batch=4, flush_interval_s=0.01)
        results: list[OutcomeReport] = []
        for d, status, attempt in sent:
            error = "identity_systems.TargetSystemDown" if status == "failed" else ""
            assert reporter.report(
                d,
                status,
                attempt=attempt,
                error_class=error,
                effect={"target_system": "jira", "entitlements_added": ["jira-developers"]},
                on_result=results.append,
            )
        reporter.close()
        batched = _outcomes(server)
        # The same outcomes one call each, for the comparison of what was judged.
        for d, status, attempt in sent:
            error = "identity_systems.TargetSystemDown" if status == "failed" else ""
            assert client.record_outcome(
                d,
                status,
                attempt=attempt,
                error_class=error,
                effect={"target_system": "jira", "entitlements_added": ["jira-developers"]},
            ).recorded
        unary = _outcomes(server)[len(batched) :]
    assert [(e["decision_id"], e["status"], e["attempt"]) for e in batched] == sent
    assert [_judged(e) for e in batched] == [_judged(e) for e in unary]
    assert [e.get("violation") for e in batched[-3:]] == [
        "decision_denied",
        None,  # skipped: it did not run, so not a violation
        "decision_unknown",
    ]
    assert len(results) == len(sent) and all(r.recorded for r in results)
    assert [r.violation for r in results[-3:]] == ["decision_denied", "", "decision_unknown"]
    stats = reporter.stats
    assert (stats.reported, stats.recorded, stats.violations) == (len(sent), len(sent), 2)
    assert (stats.dropped, stats.refused, stats.pending) == (0, 0, 0)


def test_close_sends_what_waits(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        decision = client.authorize(grant_request())
        reporter = OutcomeReporter(client, flush_interval_s=3600)  # only close sends
        for attempt in (1, 2, 3):
            assert reporter.report(decision.decision_id, "skipped", attempt=attempt)
        assert _outcomes(server) == []
        reporter.close()
        assert [e["attempt"] for e in _outcomes(server)] == [1, 2, 3]
        # The client's own reporter: flushed by the client's close.
        assert client.report_outcome(decision.decision_id, "succeeded", attempt=4)
        assert client.outcomes.stats.pending == 1
    assert [e["attempt"] for e in _outcomes(server)] == [1, 2, 3, 4]


def test_flush_waits_for_the_answer(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        decision = client.authorize(grant_request())
        client.outcomes.flush_interval_s = 3600
        assert client.report_outcome(decision.decision_id, "succeeded")
        assert client.flush_outcomes(timeout=10)
        assert [e["decision_id"] for e in _outcomes(server)] == [decision.decision_id]
        assert client.outcomes.stats.recorded == 1


def test_a_sidecar_down_loses_nothing_silently(caplog: pytest.LogCaptureFixture) -> None:
    """Unreachable: each outcome is tried (and retried), then dropped: logged with
    its decision, counted, and its callback told why; nothing raises."""
    told: list[OutcomeReport] = []
    with (
        caplog.at_level(logging.WARNING, logger="sidecar.client.reporter"),
        StepguardClient(_closed_port(), timeout=0.5) as client,
    ):
        reporter = OutcomeReporter(client, flush_interval_s=0.01, retries=1)
        for attempt in (1, 2, 3):
            assert reporter.report(UNKNOWN, "succeeded", attempt=attempt, on_result=told.append)
        reporter.close(timeout=10)
    assert [r.recorded for r in told] == [False] * 3
    assert all(r.kind is DecisionKind.UNAVAILABLE for r in told)
    stats = reporter.stats
    assert (stats.reported, stats.recorded, stats.dropped, stats.pending) == (3, 0, 3, 0)
    lost = [r.getMessage() for r in caplog.records if "NOT recorded" in r.getMessage()]
    assert len(lost) == 3
    assert all(f"outcome succeeded of decision {UNKNOWN} NOT recorded" in m for m in lost)
    # Closed: a later report is refused at once, and says so.
    assert not reporter.report(UNKNOWN, "succeeded", on_result=told.append)
    assert "closed" in told[-1].reason and reporter.stats.dropped == 4


def test_a_report_the_sidecar_would_refuse_is_refused_at_once(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    told: list[OutcomeReport] = []
    with StepguardClient(server.tcp) as client, caplog.at_level(logging.WARNING):
        assert not client.report_outcome("nope", "succeeded", on_result=told.append)
        assert not client.report_outcome(UNKNOWN, "failed", on_result=told.append)  # no class
        stats = client.outcomes.stats
    assert (stats.refused, stats.reported) == (2, 0)
    assert [r.kind for r in told] == [DecisionKind.INVALID_REQUEST] * 2
    assert "decision_id" in told[0].reason and "error_class" in told[1].reason
    assert caplog.text.count("NOT recorded") == 2
    assert _outcomes(server) == []


def test_a_full_buffer_and_a_hung_sidecar(caplog: pytest.LogCaptureFixture) -> None:
    """A sidecar that takes the connection and never answers: the batch in flight
    ends at its deadline and is sent again `retries` times (its report ids make a
    copy the sidecar recorded harmless), then dropped; the buffer fills, the next
    outcome is dropped at once; close gives up on the rest. Every one of them is
    logged and counted."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # never accepted: the call waits for an answer that never comes
    target = f"127.0.0.1:{hung.getsockname()[1]}"
    told: list[OutcomeReport] = []
    try:
        with (
            caplog.at_level(logging.WARNING, logger="sidecar.client.reporter"),
            StepguardClient(target, timeout=1.0) as client,
        ):
            reporter = OutcomeReporter(client, max_batch=2, max_buffer=2, close_timeout_s=0)
            assert reporter.report(UNKNOWN, "succeeded", attempt=1, on_result=told.append)
            assert reporter.report(UNKNOWN, "succeeded", attempt=2, on_result=told.append)
            _wait(lambda: reporter.stats.pending == 2 and not reporter._buf.items)
            assert reporter.report(UNKNOWN, "succeeded", attempt=3, on_result=told.append)
            assert reporter.report(UNKNOWN, "succeeded", attempt=4, on_result=told.append)
            assert not reporter.report(UNKNOWN, "succeeded", attempt=5, on_result=told.append)
            assert "buffer is full" in told[-1].reason
            reporter.close()  # gives up on 3 and 4 at once; 1 and 2 are still in flight
            _wait(lambda: reporter.stats.dropped == 5)
    finally:
        hung.close()
    assert reporter.stats.recorded == 0 and len(told) == 5
    deadline = [r for r in told if r.code is not None and r.code.name == "DEADLINE_EXCEEDED"]
    assert len(deadline) == 2  # the batch in flight: each of its two, once, at the end
    assert reporter.stats.batches == 1 + DEFAULT_RETRIES  # sent, then sent again twice
    assert caplog.text.count("NOT recorded") == 5


def _wait(condition: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_async_reporter_lands_in_order_and_close_sends(server: Running) -> None:
    async def run() -> tuple[list[str], Any]:
        async with AsyncStepguardClient(server.tcp) as client:
            ids = [
                (await client.authorize(_run_id(grant_request(), f"a-{i}"))).decision_id
                for i in range(6)
            ]
            client.outcomes.flush_interval_s = 0.01
            client.outcomes._buf.max_batch = 4
            for d in ids:
                assert client.report_outcome(d, "succeeded", attempt=1)
            assert await client.flush_outcomes(timeout=10)
            client.outcomes.flush_interval_s = 3600  # only close sends the last one
            assert client.report_outcome(ids[0], "failed", error_class="E", attempt=2)
            stats = client.outcomes
        return ids, stats

    ids, reporter = asyncio.run(run())
    events = _outcomes(server)
    assert [(e["decision_id"], e["attempt"]) for e in events] == [(d, 1) for d in ids] + [
        (ids[0], 2)
    ]
    assert all("violation" not in e for e in events)
    assert reporter.stats.recorded == 7 and reporter.stats.pending == 0


def test_async_reporter_down_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> Any:
        async with AsyncStepguardClient(_closed_port(), timeout=0.5) as client:
            client.outcomes._buf.retries = 0
            for attempt in (1, 2):
                assert client.report_outcome(UNKNOWN, "timed_out", attempt=attempt)
            return client.outcomes

    with caplog.at_level(logging.WARNING, logger="sidecar.client.reporter"):
        reporter = asyncio.run(run())
    assert (reporter.stats.dropped, reporter.stats.recorded) == (2, 0)
    assert caplog.text.count(f"outcome timed_out of decision {UNKNOWN} NOT recorded") == 2


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_outcomes_still_buffered_at_exit_are_sent(server: Running, kind: str) -> None:
    """A worker process that never closes its client: its outcomes go at exit."""
    with StepguardClient(server.tcp) as client:
        decision = client.authorize(grant_request()).decision_id
    body = {
        "blocking": f"""
            client = StepguardClient({server.tcp!r})
            client.outcomes.flush_interval_s = 3600
            for attempt in (1, 2):
                assert client.report_outcome({decision!r}, "succeeded", attempt=attempt)
        """,
        "asyncio": f"""
            async def main():
                client = AsyncStepguardClient({server.tcp!r})
                client.outcomes.flush_interval_s = 3600
                for attempt in (1, 2):
                    assert client.report_outcome({decision!r}, "succeeded", attempt=attempt)
            asyncio.run(main())
        """,
    }[kind]
    script = "import asyncio\nfrom sidecar.client import AsyncStepguardClient, StepguardClient\n"
    script += textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert [(e["decision_id"], e["attempt"]) for e in _outcomes(server)] == [
        (decision, 1),
        (decision, 2),
    ]


@pytest.mark.parametrize("interval", ["3600", "0"])
def test_a_forked_worker_sends_its_own_outcomes_and_not_its_parents(
    server: Running, interval: str
) -> None:
    """A real fork, as task runners fork a worker that holds a client: the child sends
    the outcome it reports (at its exit), the parent the one it held at the fork, each
    recorded once. With interval 3600 the parent's is surely still buffered at the
    fork; with 0 its thread may have sent it already: once each either way."""
    with StepguardClient(server.tcp) as client:
        decision = client.authorize(grant_request()).decision_id
    script = textwrap.dedent(
        f"""
        import os, sys
        from sidecar.client import StepguardClient
        client = StepguardClient({server.tcp!r})
        client.outcomes.flush_interval_s = float(sys.argv[1])
        assert client.report_outcome({decision!r}, "succeeded", attempt=1)
        pid = os.fork()
        if pid == 0:
            assert client.report_outcome({decision!r}, "succeeded", attempt=2)
            sys.exit(0)  # sent by the child's exit, as a task process ends
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        client.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, interval],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    attempts = [e["attempt"] for e in _outcomes(server) if e["decision_id"] == decision]
    assert sorted(attempts) == [1, 2]


def test_many_threads_report_through_one_reporter(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        decisions = [
            client.authorize(_run_id(grant_request(), f"t-{i}")).decision_id for i in range(4)
        ]
        reporter = OutcomeReporter(client, max_batch=8, flush_interval_s=0.005)

        def worker(d: str) -> None:
            for attempt in range(1, 26):
                reporter.report(d, "skipped", attempt=attempt)

        threads = [threading.Thread(target=worker, args=(d,)) for d in decisions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reporter.close()
    events = _outcomes(server)
    assert len(events) == 100 and reporter.stats.recorded == 100
    for d in decisions:  # each thread's own outcomes in the order it reported them
        assert [e["attempt"] for e in events if e["decision_id"] == d] == list(range(1, 26))


def test_async_close_that_gives_up_mid_call_counts_what_was_in_flight(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hung sidecar: close() stops waiting, the batch in flight is not known to be
    recorded, and says so (logged, counted as dropped), never silently."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    target = f"127.0.0.1:{hung.getsockname()[1]}"

    async def run() -> Any:
        client = AsyncStepguardClient(target, timeout=30)
        reporter = client.outcomes
        reporter.flush_interval_s = 0.0
        for attempt in (1, 2):
            assert client.report_outcome(UNKNOWN, "succeeded", attempt=attempt)
        while reporter._buf.in_flight < 2:  # sent, and waiting for an answer
            await asyncio.sleep(0.01)
        await reporter.close(timeout=0.2)
        await client.close()
        return reporter

    try:
        with caplog.at_level(logging.WARNING, logger="sidecar.client.reporter"):
            reporter = asyncio.run(run())
    finally:
        hung.close()
    assert (reporter.stats.dropped, reporter.stats.recorded, reporter.stats.pending) == (2, 0, 0)
    assert caplog.text.count("stopped while sending it") == 2
