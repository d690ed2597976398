"""Outcomes reported in batches: a step's worker hands its outcome over and goes on.

`record_outcome` is one round trip per outcome, and the sidecar spends about
as much on that call's gRPC handling as on recording the outcome. A worker
rarely needs the answer (a violation is the sidecar's to record, not the
worker's to act on), so the reporters here buffer outcomes and send them in
`RecordOutcomes` batches:

- a batch goes when `max_batch` outcomes wait, when the oldest has waited
  `flush_interval_s`, on `flush()`, on `close()` and at process exit (atexit;
  Airflow runs the atexit functions of its forked task processes too);
- the buffer holds at most `max_buffer` outcomes: one reported while it is
  full is dropped at once (`report` returns False);
- each outcome is checked when it is reported (the sidecar's own rules):
  one the sidecar would refuse is refused there, and never sent;
- a batch the sidecar could not take or whose answer was lost (UNAVAILABLE,
  RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) is sent again, up to `retries` more
  times, after a pause that doubles. The sidecar may have recorded it before
  the answer was lost; every outcome queued here carries a `report_id`, so
  the sidecar answers a resend it has recorded from memory and writes
  nothing, and the evidence store keeps one of each report should a resend
  reach a sidecar that forgot it (restarted) or that is still writing the
  first copy;
- nothing is lost silently: every outcome not recorded (refused, dropped for
  a full buffer, the sidecar down or too slow after its retries, not sent by
  the time `close` gave up) is logged as a warning naming its decision and
  counted in `stats`, and its `on_result` callback gets the report saying why.

A missing outcome is the safe direction for the evidence: its decision shows
as a step that never reported (incomplete), never as one that completed.
A step that needs the sidecar's answer (for example to act on a violation
flag) calls `record_outcome`, which waits for it.

Over 500 lines: the blocking and the asyncio reporter are two faces of one
behaviour (the buffer, the retry and loss rules in `_Buffer` and `_Reporter`),
kept side by side so that a change to the rules is made to both at once.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import grpc
import grpc.aio

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.client.decisions import DecisionKind
from sidecar.client.outcomes import (
    OutcomeBatch,
    OutcomeReport,
    new_report_id,
    outcome_failure,
    outcome_message,
)


class _Client(Protocol):
    """What a reporter uses of its client (StepguardClient, AsyncStepguardClient)."""

    timeout: float
    _stub: Any


class _AsyncClient(_Client, Protocol):
    """AsyncStepguardClient: also where it dials, for the last flush at exit."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]


class _Dialled:
    """A blocking stub to an asyncio client's target (the loop is gone at exit)."""

    def __init__(self, client: _AsyncClient) -> None:
        self.timeout = client.timeout
        opts = list(client.options)
        self._channel = (
            grpc.secure_channel(client.target, client.credentials, options=opts)
            if client.credentials is not None
            else grpc.insecure_channel(client.target, options=opts)
        )
        self._stub = pb_grpc.AuthorizerStub(self._channel)

    def close(self) -> None:
        self._channel.close()


log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 128
DEFAULT_FLUSH_INTERVAL_S = 0.1
DEFAULT_MAX_BUFFER = 10_000
DEFAULT_RETRIES = 2
DEFAULT_CLOSE_TIMEOUT_S = 5.0
_FIRST_PAUSE_S = 0.2
_MAX_PAUSE_S = 2.0
# Failures a batch is sent again after. Nothing was recorded, or the answer was lost
# after the sidecar recorded it (UNAVAILABLE after the commit, DEADLINE_EXCEEDED): the
# report ids (`_accept`) make the resend the same reports, recorded once.
_RESEND = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

OnResult = Callable[[OutcomeReport], object]


@dataclass(frozen=True, slots=True)
class ReporterStats:
    """What became of the outcomes reported so far (a snapshot)."""

    reported: int = 0  # accepted into the buffer
    recorded: int = 0  # in the trail
    violations: int = 0  # recorded, and flagged as a violation
    refused: int = 0  # not recorded: the report is wrong (never sent, or refused by the sidecar)
    dropped: int = 0  # not recorded: buffer full, sidecar down or too slow, closed
    batches: int = 0  # RecordOutcomes calls made (resends included)
    pending: int = 0  # buffered or in flight now


@dataclass(slots=True)
class _Item:
    message: pb.RecordOutcomeRequest
    on_result: OnResult | None
    sends: int = 0


class _Buffer:
    """The part both reporters share (no I/O): the queue, the counts, what each
    result means. Its caller holds `lock` around every call but `settle`."""

    def __init__(self, max_batch: int, max_buffer: int, retries: int) -> None:
        if not 1 <= max_batch <= 1000:
            raise ValueError(f"max_batch must be 1..1000 (the sidecar's batch limit): {max_batch}")
        if max_buffer < max_batch:
            raise ValueError(f"max_buffer ({max_buffer}) must hold a batch ({max_batch})")
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self.retries = retries
        self.lock = threading.Lock()
        self.items: collections.deque[_Item] = collections.deque()
        self.oldest = 0.0  # monotonic time the oldest buffered item was reported
        self.in_flight = 0
        self.hold_until = 0.0  # after a failed send: no batch before then (but when closing)
        self.pause = _FIRST_PAUSE_S
        self.counts = dict.fromkeys(
            ("reported", "recorded", "violations", "refused", "dropped", "batches"), 0
        )

    def stats(self) -> ReporterStats:
        return ReporterStats(**self.counts, pending=len(self.items) + self.in_flight)

    def take(self) -> list[_Item]:
        n = min(self.max_batch, len(self.items))
        batch = [self.items.popleft() for _ in range(n)]
        self.in_flight += n
        if self.items:
            self.oldest = time.monotonic()  # the rest waits at most another interval
        return batch

    def due(self, now: float, interval: float, closing: bool) -> bool:
        if not self.items:
            return False
        if closing:
            return True
        if now < self.hold_until:
            return False
        return len(self.items) >= self.max_batch or now - self.oldest >= interval

    def wait_for(self, now: float, interval: float) -> float | None:
        """How long until a batch may be due (None: until something is reported)."""
        if not self.items:
            return None
        return max(0.0, max(self.hold_until, self.oldest + interval) - now)


def _check(
    decision_id: str,
    status: str,
    *,
    effect: Mapping[str, Any] | None,
    error_class: str,
    started_at: datetime | None,
    finished_at: datetime | None,
    attempt: int,
) -> pb.RecordOutcomeRequest | OutcomeReport:
    try:
        return outcome_message(
            decision_id,
            status,
            effect=effect,
            error_class=error_class,
            started_at=started_at,
            finished_at=finished_at,
            attempt=attempt,
        )
    except Exception as exc:  # noqa: BLE001 - a report never raises
        return outcome_failure(exc)


def _deliver(item: _Item, report: OutcomeReport) -> None:
    _tell(item.on_result, report)


def _tell(on_result: OnResult | None, report: OutcomeReport) -> None:
    if on_result is None:
        return
    try:
        on_result(report)
    except Exception:  # a broken callback must not stop the reporter
        log.exception("stepguard outcome reporter: an on_result callback raised")


def _warn_lost(message: pb.RecordOutcomeRequest | None, reason: str) -> None:
    what = (
        f"outcome {pb.OutcomeStatus.Name(message.status).removeprefix('OUTCOME_STATUS_').lower()} "
        f"of decision {message.decision_id or '(none)'}"
        if message is not None
        else "outcome"
    )
    log.warning("stepguard %s NOT recorded: %s", what, reason)


class _Reporter:
    """What the blocking and the asyncio reporter share above the buffer."""

    _buf: _Buffer

    def report(
        self,
        decision_id: str,
        status: str,
        *,
        effect: Mapping[str, Any] | None = None,
        error_class: str = "",
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        attempt: int = 0,
        on_result: OnResult | None = None,
    ) -> bool:
        """Queue the outcome (`record_outcome`'s arguments); True when queued.

        False when it was refused (the sidecar would refuse it), the buffer is
        full, or the reporter is closed: logged, counted, and `on_result` (if
        given) has the report saying why. `on_result` is called once, on the
        reporter's thread (the asyncio reporter: on the client's event loop,
        where it must be called), with what became of the outcome.
        """
        checked = _check(
            decision_id,
            status,
            effect=effect,
            error_class=error_class,
            started_at=started_at,
            finished_at=finished_at,
            attempt=attempt,
        )
        if isinstance(checked, OutcomeReport):
            return self._refuse(checked, on_result)
        return self.report_message(checked, on_result)

    def report_message(
        self, message: pb.RecordOutcomeRequest, on_result: OnResult | None = None
    ) -> bool:
        raise NotImplementedError

    @property
    def stats(self) -> ReporterStats:
        with self._buf.lock:
            return self._buf.stats()

    def _refuse(self, report: OutcomeReport, on_result: OnResult | None) -> bool:
        with self._buf.lock:
            self._buf.counts["refused"] += 1
        _warn_lost(None, report.reason)
        _tell(on_result, report)
        return False

    def _accept(self, message: pb.RecordOutcomeRequest, on_result: OnResult | None) -> bool:
        """Buffer it (lock held by the caller); False, with the report given, when full."""
        buf = self._buf
        if len(buf.items) >= buf.max_buffer:
            buf.counts["dropped"] += 1
            return False
        if not buf.items:
            buf.oldest = time.monotonic()
        if not message.report_id:  # set once, here: every resend carries the same one
            message.report_id = new_report_id()
        buf.items.append(_Item(message, on_result))
        buf.counts["reported"] += 1
        return True

    def _closed_loss(self, message: pb.RecordOutcomeRequest, on_result: OnResult | None) -> bool:
        reason = "outcome not recorded: the reporter is closed"
        _warn_lost(message, reason)
        _deliver(_Item(message, on_result), OutcomeReport(False, reason))
        return False

    def _full(self, message: pb.RecordOutcomeRequest, on_result: OnResult | None) -> bool:
        reason = (
            f"outcome not recorded: the reporter's buffer is full ({self._buf.max_buffer} "
            "outcomes waiting; the sidecar is down or slower than the outcomes come)"
        )
        _warn_lost(message, reason)
        _deliver(_Item(message, on_result), OutcomeReport(False, reason, kind=DecisionKind.ERROR))
        return False

    def _settle(
        self, batch: list[_Item], reports: list[OutcomeReport], closing: bool
    ) -> list[_Item]:
        """Count and deliver each item's report; return those to send again (resendable
        failures with sends left), which go back to the front, in order."""
        buf = self._buf
        again: list[_Item] = []
        done: list[tuple[_Item, OutcomeReport]] = []
        for item, report in zip(batch, reports, strict=True):
            item.sends += 1
            if report.recorded:
                done.append((item, report))
            elif report.code in _RESEND and item.sends <= buf.retries:
                again.append(item)
            else:
                done.append((item, report))
        with buf.lock:
            buf.in_flight -= len(batch)
            buf.counts["batches"] += 1
            if again:
                if not buf.items:
                    buf.oldest = 0.0  # due as soon as the pause is over
                buf.items.extendleft(reversed(again))
                buf.hold_until = time.monotonic() + buf.pause
                buf.pause = min(buf.pause * 2, _MAX_PAUSE_S)
            else:
                buf.pause = _FIRST_PAUSE_S
            for _item, report in done:
                if report.recorded:
                    buf.counts["recorded"] += 1
                    buf.counts["violations"] += bool(report.violation)
                elif report.kind is DecisionKind.INVALID_REQUEST:
                    buf.counts["refused"] += 1
                else:
                    buf.counts["dropped"] += 1
        for item, report in done:
            if not report.recorded:
                _warn_lost(item.message, report.reason)
            elif report.violation:
                log.warning(
                    "stepguard outcome of decision %s recorded as a violation (%s): %s",
                    report.decision_id,
                    report.violation,
                    report.reason,
                )
            _deliver(item, report)
        return again

    def _answered(self, batch: list[_Item], holder: OutcomeBatch, resp: Any) -> None:
        """A batch's answer. The usual one (every outcome recorded, none a violation,
        nobody waiting for a report) is counted straight from the response."""
        results = resp.results
        if len(results) == len(batch):
            for item, result in zip(batch, results, strict=True):
                if (
                    item.on_result is not None
                    or not result.HasField("response")
                    or result.response.violation != pb.VIOLATION_NONE
                ):
                    break
            else:
                buf = self._buf
                with buf.lock:
                    buf.in_flight -= len(batch)
                    buf.counts["batches"] += 1
                    buf.counts["recorded"] += len(batch)
                    buf.pause = _FIRST_PAUSE_S
                return
        self._settle(batch, holder.reports(resp), False)

    def _give_up(self, reason: str) -> None:
        """Whatever is still buffered is dropped, each logged, counted and told."""
        with self._buf.lock:
            left = list(self._buf.items)
            self._buf.items.clear()
            self._buf.counts["dropped"] += len(left)
        for item in left:
            _warn_lost(item.message, reason)
            _deliver(item, OutcomeReport(False, reason, kind=DecisionKind.UNAVAILABLE))


def _request(batch: list[_Item]) -> OutcomeBatch:
    return OutcomeBatch.of_messages([item.message for item in batch])


# Reporters to flush at process exit (registered once per process: after a fork
# too, since Airflow clears the atexit functions a task process inherited).
_live: weakref.WeakSet[OutcomeReporter | AsyncOutcomeReporter] = weakref.WeakSet()
_atexit_pids: set[int] = set()


def _at_exit() -> None:
    for reporter in list(_live):
        try:
            reporter.close_at_exit()
        except Exception:
            log.exception("stepguard outcome reporter: flushing at exit failed")


def _after_fork_in_child() -> None:
    """A forked child holds copies of its parent's reporters: what they buffered is the
    parent's to send. Each is left empty and idle (its lock anew: another thread may
    have held it at the fork), and none is flushed at the child's exit."""
    for reporter in list(_live):
        reporter.forked()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _register(reporter: OutcomeReporter | AsyncOutcomeReporter) -> None:
    _live.add(reporter)
    if os.getpid() not in _atexit_pids:
        _atexit_pids.add(os.getpid())
        atexit.register(_at_exit)


class OutcomeReporter(_Reporter):
    """Buffered outcomes over a `StepguardClient`, sent by a thread of its own.

    `report` never blocks on the sidecar and never raises; `flush` waits until
    what was reported has been sent (or `timeout`); `close` flushes and stops.
    Thread-safe. After a fork the child starts with an empty buffer (the
    parent sends what it held).
    """

    def __init__(
        self,
        client: _Client,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        retries: int = DEFAULT_RETRIES,
        timeout: float | None = None,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._buf = _Buffer(max_batch, max_buffer, retries)
        self.flush_interval_s = flush_interval_s
        self.timeout = timeout
        self.close_timeout_s = close_timeout_s
        self._wake = threading.Condition(self._buf.lock)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False

    def report_message(
        self, message: pb.RecordOutcomeRequest, on_result: OnResult | None = None
    ) -> bool:
        """Queue an already-built request (not checked here: the sidecar checks it)."""
        with self._buf.lock:
            if self._closed:
                self._buf.counts["dropped"] += 1
                queued = None
            else:
                queued = self._accept(message, on_result)
                if queued:
                    if self._thread is None:
                        self._start()
                    waiting = len(self._buf.items)
                    if waiting == 1 or waiting >= self._buf.max_batch:
                        self._wake.notify()  # a timer to set, or a batch to send
        if queued is None:
            return self._closed_loss(message, on_result)
        return queued or self._full(message, on_result)

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is buffered now and wait for it; True when nothing is left pending."""
        deadline = time.monotonic() + (self.close_timeout_s if timeout is None else timeout)
        with self._buf.lock:
            self._flushing += 1
            self._wake.notify_all()
            try:
                while self._buf.items or self._buf.in_flight:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._thread is None or not self._thread.is_alive():
                        break
                    self._wake.wait(left)
            finally:
                self._flushing -= 1
            return not (self._buf.items or self._buf.in_flight)

    def close(self, timeout: float | None = None) -> None:
        """Send what is buffered (each resendable failure retried at once), then stop;
        whatever is still unsent after `timeout` is dropped, each logged and counted."""
        timeout = self.close_timeout_s if timeout is None else timeout
        with self._buf.lock:
            if self._closed:
                return
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._buf.lock:
            self._closed = True
            self._wake.notify()
        self._give_up(f"outcome not recorded: not sent within {timeout:g} s of closing")
        _live.discard(self)

    def close_at_exit(self) -> None:
        self.close()

    # -- the sending thread -----------------------------------------------------

    _flushing = 0

    def _start(self) -> None:
        _register(self)
        self._thread = threading.Thread(target=self._run, name="stepguard-outcomes", daemon=True)
        self._thread.start()

    def forked(self) -> None:
        """In a forked child: the parent's buffer and thread are not this process's."""
        self._buf.lock = threading.Lock()
        self._wake = threading.Condition(self._buf.lock)
        self._buf.items.clear()
        self._buf.in_flight = 0
        self._thread = None

    def _run(self) -> None:
        buf = self._buf
        while True:
            with buf.lock:
                while True:
                    now = time.monotonic()
                    urgent = self._closing or self._flushing > 0
                    if buf.due(now, 0.0 if urgent else self.flush_interval_s, self._closing):
                        break
                    if self._closed or (self._closing and not buf.items):
                        self._wake.notify_all()
                        return
                    wait = buf.wait_for(now, 0.0 if urgent else self.flush_interval_s)
                    self._wake.wait(wait)
                batch = buf.take()
                closing = self._closing
            self._send(batch, closing)
            with buf.lock:
                self._wake.notify_all()  # flush() may be waiting

    def _send(self, batch: list[_Item], closing: bool) -> None:
        holder = _request(batch)
        timeout = self.timeout if self.timeout is not None else self._client.timeout
        try:
            resp = self._client._stub.RecordOutcomes(holder.message, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - every item gets the failure
            self._settle(batch, holder.failed(exc), closing)
            return
        self._answered(batch, holder, resp)


class AsyncOutcomeReporter(_Reporter):
    """Buffered outcomes over an `AsyncStepguardClient`, sent by a task on its loop.

    `report` is a plain (not async) call that never blocks and never raises;
    `await flush()` waits until what was reported is sent; `await close()`
    flushes and stops. At process exit, outcomes still buffered (the loop gone
    without `close`) are sent through a blocking client to the same target.
    """

    def __init__(
        self,
        client: _AsyncClient,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        retries: int = DEFAULT_RETRIES,
        timeout: float | None = None,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._buf = _Buffer(max_batch, max_buffer, retries)
        self.flush_interval_s = flush_interval_s
        self.timeout = timeout
        self.close_timeout_s = close_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._closing = False
        self._closed = False
        self._flushing = 0

    def report_message(
        self, message: pb.RecordOutcomeRequest, on_result: OnResult | None = None
    ) -> bool:
        """Queue an already-built request (not checked here: the sidecar checks it)."""
        with self._buf.lock:
            if self._closed:
                self._buf.counts["dropped"] += 1
                queued = None
            else:
                queued = self._accept(message, on_result)
        if queued is None:
            return self._closed_loss(message, on_result)
        if not queued:
            return self._full(message, on_result)
        if self._task is None or self._task.done():
            try:
                self._start()
            except RuntimeError:  # no running loop: it waits for the next report, or exit
                log.warning("stepguard outcome reporter: report() outside the client's loop")
        elif self._wake is not None:
            waiting = len(self._buf.items)
            if waiting == 1 or waiting >= self._buf.max_batch:
                self._wake.set()
        return True

    async def flush(self, timeout: float | None = None) -> bool:
        """Send what is buffered now and wait for it; True when nothing is left pending."""
        if self._task is None or self._task.done() or self._wake is None:
            return not self._pending()
        self._flushing += 1
        try:
            deadline = time.monotonic() + (self.close_timeout_s if timeout is None else timeout)
            while self._pending() and not self._task.done():
                self._wake.set()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                assert self._idle is not None
                self._idle.clear()
                try:
                    await asyncio.wait_for(self._idle.wait(), left)
                except TimeoutError:
                    break
        finally:
            self._flushing -= 1
        return not self._pending()

    async def close(self, timeout: float | None = None) -> None:
        """As `OutcomeReporter.close`."""
        timeout = self.close_timeout_s if timeout is None else timeout
        if self._closed:
            return
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            assert self._wake is not None
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
        self._closed = True
        self._give_up(f"outcome not recorded: not sent within {timeout:g} s of closing")
        _live.discard(self)

    def close_at_exit(self) -> None:
        """At exit, the loop is gone: send what is left through a blocking client."""
        if self._closed or not self._pending():
            return
        self._closed = True
        client = _Dialled(self._client)
        try:
            sync = OutcomeReporter(
                client,
                max_batch=self._buf.max_batch,
                max_buffer=self._buf.max_buffer,
                retries=self._buf.retries,
                timeout=self.timeout,
                close_timeout_s=self.close_timeout_s,
            )
            with self._buf.lock:
                left = list(self._buf.items)
                self._buf.items.clear()
            for item in left:
                sync.report_message(item.message, item.on_result)
            sync.close()
            with self._buf.lock:
                for name in ("recorded", "violations", "refused", "dropped"):
                    self._buf.counts[name] += getattr(sync.stats, name)
        finally:
            client.close()
        _live.discard(self)

    def forked(self) -> None:
        """In a forked child: the parent's buffer and loop are not this process's."""
        self._buf.lock = threading.Lock()
        self._buf.items.clear()
        self._buf.in_flight = 0
        self._task = self._wake = self._idle = None

    def _pending(self) -> bool:
        with self._buf.lock:
            return bool(self._buf.items or self._buf.in_flight)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        _register(self)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        buf = self._buf
        assert self._wake is not None and self._idle is not None
        loop = asyncio.get_running_loop()
        while True:
            with buf.lock:
                now = time.monotonic()
                urgent = self._closing or self._flushing > 0
                interval = 0.0 if urgent else self.flush_interval_s
                due = buf.due(now, interval, self._closing)
                if not due:
                    if self._closing and not buf.items:
                        self._idle.set()
                        return
                    wait = buf.wait_for(now, interval)
                else:
                    batch = buf.take()
            if not due:
                self._idle.set()
                self._wake.clear()
                # A timer sets the same event a report or flush sets (no task per wait).
                timer = None if wait is None else loop.call_later(wait, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
                continue
            await self._send(batch)
            self._idle.set()

    async def _send(self, batch: list[_Item]) -> None:
        holder = _request(batch)
        timeout = self.timeout if self.timeout is not None else self._client.timeout
        try:
            resp = await self._client._stub.RecordOutcomes(holder.message, timeout=timeout)
        except asyncio.CancelledError:  # the loop ends (or close gave up) mid-call
            why = (
                "outcome not recorded, or not known to be: the reporter was stopped while "
                "sending it (its event loop ended, or close() timed out)"
            )
            lost = OutcomeReport(False, why, kind=DecisionKind.UNAVAILABLE)
            self._settle(batch, [lost] * len(batch), True)
            raise
        except Exception as exc:  # noqa: BLE001 - every item gets the failure
            self._settle(batch, holder.failed(exc), self._closing)
            return
        self._answered(batch, holder, resp)
