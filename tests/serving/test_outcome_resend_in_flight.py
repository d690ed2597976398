"""A report sent again while its first copy is still being written is recorded once.

The reporter resends a batch after DEADLINE_EXCEEDED, which comes when the trail
is slow: the resend then arrives while the first copy is still on its way into
the trail. It must wait for that copy, and be answered as it was (or, when the
trail refused it, record the report itself), not write a second one. The real
server (the thread-pool server: each call on its own thread), the real file trail
behind a gate that holds the writes of one report until the test lets them go,
real gRPC calls on two threads, and the counter on the real metrics endpoint.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.audit.sink import open_sink
from sidecar.client import StepguardClient
from sidecar.core.errors import AuditError
from sidecar.decision.outcomes import OutcomeRecorder
from tests.helpers import (
    POLICIES,
    Running,
    assert_trail_verifies,
    grant_request,
    running_sidecar,
)
from tests.serving.authzen.authzen_client import Pdp, serving

WAIT_S = 30.0  # a bound on every wait of the test itself, never reached when it passes


class _Gate:
    """The real file trail, whose writes carrying an outcome with report id `held_id`
    wait until `open()`; the first of them then fails (`fail_first`: the trail could
    not take it) instead of being written. Every other write goes straight through."""

    def __init__(self, path: Path, held_id: str, *, fail_first: bool = False) -> None:
        self.inner = open_sink(str(path))
        self.held_id = held_id
        self.fail_first = fail_first
        self.held = 0  # outcome events of `held_id` that came to be written, so far
        self.entered = threading.Event()
        self._open = threading.Event()
        self._lock = threading.Lock()

    def open(self) -> None:
        self._open.set()

    def _hold(self, events: Sequence[Mapping[str, Any]]) -> None:
        count = sum(
            e.get("kind") == "outcome" and e.get("report_id") == self.held_id for e in events
        )
        if not count:
            return
        with self._lock:
            first = self.held == 0
            self.held += count
        self.entered.set()
        assert self._open.wait(WAIT_S), "the test never let the write go"
        if first and self.fail_first:
            raise AuditError("disk full (once)")

    def write(self, event: Mapping[str, Any]) -> None:
        self._hold([event])
        self.inner.write(event)

    def write_encoded(self, bodies: list[bytes]) -> None:
        self._hold([orjson.loads(b) for b in bodies])
        self.inner.write_encoded(bodies)

    def close(self) -> None:
        self.inner.close()

    @property
    def healthy(self) -> bool:
        return self.inner.healthy

    def watch(self, watcher: Callable[[bool, str], None]) -> None:
        self.inner.watch(watcher)


@contextmanager
def _sidecar(
    tmp: Path, gate: _Gate, **settings: Any
) -> Iterator[tuple[Running, Any, OutcomeRecorder, StepguardClient]]:
    """The server over `gate` (the thread-pool one unless `settings` say), a client, its
    stub, and the server's recorder."""
    with (
        running_sidecar(tmp, sink=gate, **{"server_mode": "sync", **settings}) as run,
        StepguardClient(run.tcp) as client,
    ):
        yield run, pb_grpc.AuthorizerStub(client._channel), run.sidecar.outcomes, client


def _item(decision_id: str, report_id: str) -> Any:
    return pb.RecordOutcomeRequest(
        decision_id=decision_id, status=pb.OUTCOME_STATUS_SUCCEEDED, report_id=report_id
    )


def _counted(run: Running) -> float:
    """stepguard_outcomes_total, every status and violation, from the metrics endpoint."""
    with urllib.request.urlopen(f"http://{run.metrics}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "stepguard_outcomes"
        for s in family.samples
        if s.name == "stepguard_outcomes_total"
    )


def _until(done: Callable[[], bool]) -> None:
    """Wait (bounded) for `done`; the test fails when it never holds."""
    end = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < end, "timed out waiting for the calls"
        time.sleep(0.005)


def _waiting(recorder: OutcomeRecorder) -> bool:
    """Whether a call is waiting for a report another call is writing (a recorder from
    before such waits has no count: never)."""
    return getattr(recorder, "waiting", 0) >= 1


def _copies(run: Running, report_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in run.audit_events()
        if e.get("kind") == "outcome" and e.get("report_id") == report_id
    ]


def _race(
    gate: _Gate,
    recorder: OutcomeRecorder,
    first: Callable[[], Any],
    second: Callable[[], Any],
) -> tuple[futures.Future[Any], futures.Future[Any], int]:
    """`first` is sent and held in the trail; then `second` is sent. Once `second` is
    waiting for `first` (or has finished, or has come to write a copy of its own: the
    old code), the gate opens. The futures, and how many copies of the held report
    had come to be written when it opened."""
    pool = futures.ThreadPoolExecutor(max_workers=2)
    try:
        one = pool.submit(first)
        assert gate.entered.wait(WAIT_S), "the first call never reached the trail"
        two = pool.submit(second)
        _until(lambda: _waiting(recorder) or two.done() or gate.held >= 2)
        held = gate.held
        gate.open()
        futures.wait([one, two], timeout=WAIT_S)
        return one, two, held
    finally:
        gate.open()
        pool.shutdown(wait=True)


def _unavailable(call: futures.Future[Any], says: str) -> None:
    """The call was answered UNAVAILABLE (not recorded: send it again), saying `says`."""
    refused = call.exception()
    assert isinstance(refused, grpc.RpcError)
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert says in str(refused.details())


def _decision(client: StepguardClient) -> str:
    decided = client.authorize(grant_request())
    assert decided.allowed, decided.reason
    return decided.decision_id


# The thread-pool server; and grpc.aio with durability fsync, which records outcomes
# on threads (aiohandlers.py), as it does one whose decision is not in memory.
SERVERS = [
    pytest.param({}, id="sync"),
    pytest.param({"server_mode": "asyncio", "audit_durability": "fsync"}, id="aio"),
]


@pytest.mark.parametrize("server", SERVERS)
def test_a_resend_while_the_first_copy_is_written_waits_for_it(
    tmp_path: Path, server: dict[str, Any]
) -> None:
    """The same report twice at once: the second waits while the first is held in the
    trail (writes no copy of its own), then is answered as the first was: one event in
    the trail, the same answer (outcome id and all) to both, counted once."""
    gate = _Gate(tmp_path / "audit.jsonl", "resent")
    with _sidecar(tmp_path, gate, **server) as (run, stub, recorder, client):
        report = _item(_decision(client), "resent")
        before = _counted(run)
        one, two, held = _race(
            gate,
            recorder,
            lambda: stub.RecordOutcome(report, timeout=WAIT_S),
            lambda: stub.RecordOutcome(report, timeout=WAIT_S),
        )
        counted = _counted(run) - before
        copies = _copies(run, "resent")
    assert held == 1  # the resend wrote nothing while the first was being written
    assert one.result() == two.result()
    assert [e["id"] for e in copies] == [one.result().outcome_id]
    assert counted == 1
    assert_trail_verifies(tmp_path)


@pytest.mark.parametrize("first", ["batch", "unary"])
def test_a_batch_and_a_unary_racing_for_one_report_record_it_once(
    tmp_path: Path, first: str
) -> None:
    """A RecordOutcomes batch holding the report and a RecordOutcome of it, at once,
    either first: the later waits for the report (a batch writes its other items
    meanwhile), both answer it alike, the trail holds it once, it is counted once."""
    gate = _Gate(tmp_path / "audit.jsonl", "shared")
    with _sidecar(tmp_path, gate) as (run, stub, recorder, client):
        decision = _decision(client)
        batch = pb.RecordOutcomesRequest(items=[_item(decision, "own"), _item(decision, "shared")])
        unary = _item(decision, "shared")

        def send_batch() -> Any:
            return stub.RecordOutcomes(batch, timeout=WAIT_S)

        def send_unary() -> Any:
            return stub.RecordOutcome(unary, timeout=WAIT_S)

        before = _counted(run)
        if first == "batch":
            b, u, held = _race(gate, recorder, send_batch, send_unary)
        else:
            u, b, held = _race(gate, recorder, send_unary, send_batch)
        counted = _counted(run) - before
        shared, own = _copies(run, "shared"), _copies(run, "own")
    assert held == 1
    results = b.result().results
    assert all(r.HasField("response") for r in results)
    assert results[1].response == u.result()
    assert [e["id"] for e in shared] == [u.result().outcome_id]
    assert [e["id"] for e in own] == [results[0].response.outcome_id]
    assert counted == 2  # "own" and "shared", once each
    assert_trail_verifies(tmp_path)


@pytest.mark.parametrize("resend", ["unary", "batch"])
def test_a_resend_records_the_report_when_the_first_copy_failed(
    tmp_path: Path, resend: str
) -> None:
    """The trail fails the first copy while the resend waits for it: the first caller
    is answered UNAVAILABLE (not recorded), the resend records the report itself
    (answered recorded, under its own outcome id): one copy, counted once. A batch
    resend writes its other items meanwhile."""
    gate = _Gate(tmp_path / "audit.jsonl", "retry", fail_first=True)
    with _sidecar(tmp_path, gate) as (run, stub, recorder, client):
        decision = _decision(client)
        report = _item(decision, "retry")
        batch = pb.RecordOutcomesRequest(items=[_item(decision, "other"), report])

        def send_again() -> Any:
            if resend == "unary":
                return stub.RecordOutcome(report, timeout=WAIT_S)
            results = stub.RecordOutcomes(batch, timeout=WAIT_S).results
            assert all(r.HasField("response") for r in results), results
            return results[1].response

        before = _counted(run)
        one, two, held = _race(
            gate, recorder, lambda: stub.RecordOutcome(report, timeout=WAIT_S), send_again
        )
        counted = _counted(run) - before
        copies = _copies(run, "retry")
    assert held == 1
    _unavailable(one, "outcome not recorded")
    assert [e["id"] for e in copies] == [two.result().outcome_id]
    assert counted == (1 if resend == "unary" else 2)  # and the batch's "other"
    assert_trail_verifies(tmp_path)


def test_a_resend_waits_a_bounded_time_then_fails_closed(tmp_path: Path) -> None:
    """A first copy held past the wait's bound: the resend is answered UNAVAILABLE (not
    recorded: send it again) while the first is still held, writing nothing; once the
    first is written, a further resend gets its answer. One copy, counted once."""
    gate = _Gate(tmp_path / "audit.jsonl", "slow")
    with _sidecar(tmp_path, gate) as (run, stub, recorder, client):
        recorder.report_wait_s = 0.05
        report = _item(_decision(client), "slow")
        batch = pb.RecordOutcomesRequest(items=[_item(report.decision_id, "slow")])
        before = _counted(run)
        pool = futures.ThreadPoolExecutor(max_workers=3)
        try:
            one = pool.submit(stub.RecordOutcome, report, timeout=WAIT_S)
            assert gate.entered.wait(WAIT_S)
            alone = pool.submit(stub.RecordOutcome, report, timeout=WAIT_S)
            batched = pool.submit(stub.RecordOutcomes, batch, timeout=WAIT_S)
            _until(lambda: (alone.done() and batched.done()) or gate.held >= 2)
            held = gate.held
        finally:
            gate.open()
            pool.shutdown(wait=True)
        later = stub.RecordOutcome(report, timeout=WAIT_S)
        counted = _counted(run) - before
        copies = _copies(run, "slow")
    assert held == 1
    _unavailable(alone, "still being written by another call")
    (item,) = batched.result().results
    assert item.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert item.error.message.startswith("items[0]: outcome not recorded: ")
    assert later == one.result()
    assert [e["id"] for e in copies] == [later.outcome_id]
    assert counted == 1
    assert_trail_verifies(tmp_path)


def test_a_wait_never_holds_the_event_loop(tmp_path: Path) -> None:
    """grpc.aio records an outcome whose decision is in memory inline on its event loop,
    one it must look up in the trail files on a thread. A report under an id that a
    thread is still writing, recorded on the loop, does not wait there (every call on
    the loop would): it is answered UNAVAILABLE at once, and decisions are answered
    while the first copy is held."""
    gate = _Gate(tmp_path / "audit.jsonl", "loop")
    with _sidecar(tmp_path, gate, server_mode="asyncio") as (run, stub, recorder, client):
        recorder.report_wait_s = 2 * WAIT_S  # a wait on the loop would outlast the test
        known = _decision(client)
        unknown = "01a24a69-8228-7000-8f19-46017a570b02"  # in no trail: on a thread
        pool = futures.ThreadPoolExecutor(max_workers=2)
        try:
            one = pool.submit(stub.RecordOutcome, _item(unknown, "loop"), timeout=WAIT_S)
            assert gate.entered.wait(WAIT_S)
            two = pool.submit(stub.RecordOutcome, _item(known, "loop"), timeout=WAIT_S)
            _until(lambda: two.done() or gate.held >= 2)
            held = gate.held
            served = client.authorize(grant_request())  # the loop is free
        finally:
            gate.open()
            pool.shutdown(wait=True)
        copies = _copies(run, "loop")
    assert held == 1
    assert served.allowed
    _unavailable(two, "still being written by another call")
    assert [e["id"] for e in copies] == [one.result().outcome_id]
    assert one.result().violation == pb.VIOLATION_DECISION_UNKNOWN


def test_a_resend_over_authzen_waits_for_the_first_copy_too(tmp_path: Path) -> None:
    """POST /stepguard/v1/outcome runs on the HTTP server's own threads through the
    same recorder: the same report posted twice at once, the first held in the trail,
    is written once and both posts get the same answer; the counter goes up by one."""
    gate = _Gate(tmp_path / "audit.jsonl", "posted")
    with (
        serving(tmp_path, POLICIES, sink=gate) as (run, first_pdp),
        StepguardClient(run.tcp) as client,
    ):
        second_pdp = Pdp(first_pdp.address)
        try:
            body = {"decision_id": _decision(client), "status": "succeeded", "report_id": "posted"}
            before = _counted(run)
            one, two, held = _race(
                gate,
                run.sidecar.outcomes,
                lambda: first_pdp.post("/stepguard/v1/outcome", body),
                lambda: second_pdp.post("/stepguard/v1/outcome", body),
            )
            counted = _counted(run) - before
        finally:
            second_pdp.close()
        copies = _copies(run, "posted")
    assert held == 1
    assert one.result().status == 200 and two.result().status == 200, two.result().text
    assert one.result().json() == two.result().json()
    assert [e["id"] for e in copies] == [one.result().json()["outcome_id"]]
    assert counted == 1
    assert_trail_verifies(tmp_path)
