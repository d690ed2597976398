"""Group commit onto a hash chain: the part of the trail every medium shares.

`write(event)` returns only after the event's line is in a batch whose write
(and, with durability `fsync`, whose fsync) completed, so an answer never
leaves before its event. Concurrent writers share one write: the first to
arrive becomes the leader and commits everything queued so far while the
others wait; when it finishes, one of the callers queued meanwhile leads the
next batch (leader/follower group commit, as in LevelDB's write queue). No
extra thread sits on the hot path, and a single caller pays for no handoff.

Failure is fail-closed and self-healing: a failed batch is rolled back
(truncated to the last good size), every caller in it gets AuditError (the
decider answers DENY), the sink reports unhealthy to its watchers, and a
probe retries every second; the first commit that succeeds writes an
`outage` record saying how long the trail was down and how many events were
refused, and reports healthy again.

`ChainSink` holds all of that and no I/O: the media subclass it and fill in
its hooks (`_append`, `_sync`, `_rollback`, ...): the file trail in
filesink.py, stdout in stream.py. Its 400-odd lines are one mechanism (the
batch, its leader, the deferred committer, the outage and health it reports):
split, each part would reach into the others' locks and state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sidecar.audit.chain import GENESIS, Hasher, canonical, canonical_bytes, record_lines
from sidecar.core.errors import AuditError, ConfigError, UnencodableEvent
from sidecar.core.event import system_event

log = logging.getLogger(__name__)

DURABILITIES = ("flush", "fsync")
PROBE_INTERVAL_S = 1.0
HealthWatcher = Callable[[bool, str], None]


class _Batch:
    """Events committed together. Its members wait on its own condition, so finishing
    a batch wakes only them (and one caller of the next batch, to lead it)."""

    __slots__ = ("bodies", "callbacks", "cond", "done", "error", "waiting")

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.cond: threading.Condition | None = None  # made by its first waiter
        self.waiting = 0  # threads in wait(): wake() costs nothing without them
        self.done = False
        self.error = ""
        # Deferred writers' callbacks (`when_done`), called with `error` once done.
        self.callbacks: list[Callable[[str], object]] = []

    def wait(self, lock: threading.Lock) -> None:
        if self.cond is None:
            self.cond = threading.Condition(lock)
        self.waiting += 1
        try:
            self.cond.wait()
        finally:
            self.waiting -= 1

    def wake(self, everyone: bool) -> None:
        if self.waiting and self.cond is not None:
            if everyone:
                self.cond.notify_all()
            else:
                self.cond.notify()


class ChainSink:
    """Group commit, chain state, outage accounting and health; media subclass it."""

    def __init__(self, hasher: Hasher, durability: str, probe_interval_s: float) -> None:
        if durability not in DURABILITIES:
            raise ConfigError(durability_problem(durability))
        self.hasher = hasher
        self.durability = durability
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # no leader: close() may proceed
        self._closing = False
        self._open = _Batch()
        self._writing = False
        self._closed = False
        self._seq = 0
        self._prev = GENESIS
        self._pending: list[dict[str, Any]] = []  # system records to write before the next batch
        self._outage: dict[str, Any] | None = None
        self._healthy = True
        self._detail = ""
        self._watchers: list[HealthWatcher] = []
        self._stop = threading.Event()
        self._probe_interval = probe_interval_s
        self._probe: threading.Thread | None = None
        self._work = threading.Condition(self._lock)  # events queued for the committer
        self._committer: threading.Thread | None = None

    # -- the AuditSink interface ------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    def watch(self, watcher: HealthWatcher) -> None:
        """Call `watcher(healthy, detail)` on each change of health, from the committing thread."""
        self._watchers.append(watcher)

    def write(self, event: Mapping[str, Any]) -> None:
        body = encode_event(event)
        with self._lock:
            if self._closed:
                raise AuditError("audit trail is closed")
            alone = not self._writing and not self._open.bodies
            if alone:
                self._writing = True
        if alone:
            self._commit_alone(body)
        else:
            self._submit(body)

    def write_many(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Write `events` in order in one commit (one write, each chained to the one
        before): all of them, or none (AuditError). For a batch of outcomes, which
        would otherwise pay a commit each."""
        self.write_encoded([encode_event(event) for event in events])

    def write_encoded(self, bodies: list[bytes]) -> None:
        """`write_many` for events already encoded (`encode_event`, each as soon as it
        is built, while its parts are still in the CPU's cache): the same commit."""
        if not bodies:
            return
        with self._lock:
            if self._closed:
                raise AuditError("audit trail is closed")
            alone = not self._writing and not self._open.bodies
            if alone:
                self._writing = True
        if not alone:
            self._submit(bodies)
            return
        try:
            error = self._try_commit(bodies)
        finally:
            with self._lock:
                self._hand_over()
        if error:
            raise AuditError(error)

    def _commit_alone(self, body: bytes) -> None:
        """The uncontended case of `_submit`: nobody writing, nothing queued.

        The usual case on the asyncio server, which decides one call at a time:
        commit this one event with no batch to build and nobody to wake.
        """
        try:
            error = self._try_commit([body])
        finally:
            with self._lock:
                self._hand_over()
        if error:
            raise AuditError(error)

    def close(self) -> None:
        """Commit what is queued plus a shutdown record, then refuse further writes."""
        self._stop.set()
        with contextlib.suppress(AuditError):
            self._submit(canonical(system_event("shutdown", utc_now())))
        with self._lock:
            self._closing = True
            while self._writing:
                self._idle.wait()
            self._closed = True
            self._close_medium()
            self._open.wake(everyone=True)
            self._work.notify_all()
            stranded = self._open
            stranded.done, stranded.error = True, "audit trail is closed"
            callbacks, stranded.callbacks = stranded.callbacks, []
        _notify(callbacks, stranded.error)  # queued after the last commit: never written

    # -- deferred writes (asyncio server, durability fsync) ---------------------------

    def enqueue(self, event: Mapping[str, Any]) -> _Batch:
        """Queue `event` for the committer thread; returns its batch, a ticket for `when_done`.

        For a caller that must not block (the asyncio server's event loop):
        it goes on deciding while the committer writes and fsyncs, and whatever
        it queues meanwhile shares the next commit. The caller must not answer
        before `when_done` reports the batch committed.
        """
        body = encode_event(event)
        with self._lock:
            if self._closed:
                raise AuditError("audit trail is closed")
            batch = self._open
            batch.bodies.append(body)
            if self._committer is None:
                self._committer = threading.Thread(
                    target=self._commit_loop, name="stepguard-audit-commit", daemon=True
                )
                self._committer.start()
            self._work.notify()
        return batch

    def when_done(self, batch: _Batch, callback: Callable[[str], object]) -> None:
        """Call `callback(error)` ("" when written) once `batch` is committed, maybe at once.

        It runs on the committing thread: it should only hand the news over.
        """
        with self._lock:
            if not batch.done:
                batch.callbacks.append(callback)
                return
        _notify([callback], batch.error)

    def outcome(self, batch: _Batch) -> str:
        """ "" when `batch` was committed, else why not (its events are not in the trail)."""
        with self._lock:
            return batch.error if batch.done else "audit commit has not finished"

    def _commit_loop(self) -> None:
        while True:
            with self._lock:
                while not self._open.bodies and not self._closed:
                    self._work.wait()
                if self._closed:
                    return
            with contextlib.suppress(AuditError):  # the batch's callbacks carry the error
                self._submit(None)

    # -- group commit -------------------------------------------------------------

    def _submit(self, body: bytes | list[bytes] | None) -> None:
        with self._lock:
            if self._closed:
                raise AuditError("audit trail is closed")
            batch = self._open
            if isinstance(body, list):  # write_many's: together, in order
                batch.bodies.extend(body)
            elif body is not None:
                batch.bodies.append(body)
            while not batch.done:
                if self._closed:
                    raise AuditError("audit trail is closed")
                if not self._writing:
                    self._writing = True
                    self._open = _Batch()
                    break
                batch.wait(self._lock)
            else:
                if batch.error:
                    raise AuditError(batch.error)
                return
        # This thread leads `batch`: commit it with the lock released.
        batch.error = "audit commit was interrupted"  # until it completes
        try:
            batch.error = self._try_commit(batch.bodies)
        finally:
            with self._lock:
                batch.done = True
                batch.wake(everyone=True)  # its members return
                self._hand_over()
                callbacks, batch.callbacks = batch.callbacks, []
            _notify(callbacks, batch.error)
        if batch.error:
            raise AuditError(batch.error)

    def _try_commit(self, bodies: list[bytes]) -> str:
        """`_commit` as leader, health updated: "" when written, else what went wrong.

        An error means none of `bodies` is in the trail (`_commit` cut them off),
        so their callers may be told their decisions were not recorded.
        """
        error = ""
        try:
            self._commit(bodies)
        except AuditError as exc:
            error = str(exc)
        self._set_health(not error, error)
        return error

    def _hand_over(self) -> None:
        """A commit is over (lock held): the next one may start, whoever leads it."""
        self._writing = False
        self._open.wake(everyone=False)  # one caller queued meanwhile leads the next
        if self._open.bodies:  # or the committer, for deferred events queued meanwhile
            self._work.notify()
        if self._closing:
            self._idle.notify_all()

    def _commit(self, bodies: list[bytes]) -> None:
        """Write one batch: pending system records first, then the events. Leader only."""
        try:
            self._ensure_open()
            all_bodies = bodies
            if self._pending or self._outage is not None:
                prefix = [canonical(r) for r in self._pending]
                if self._outage is not None:
                    prefix.append(canonical(self._outage_record()))
                all_bodies = prefix + bodies
            seq = self._seq + len(all_bodies)
            data, prev = record_lines(self.hasher, self._seq, self._prev, all_bodies)
            if data:
                self._append(data)
                if self.durability == "fsync":
                    self._sync()
        except Exception as exc:  # whatever it was (a bug too), the batch is cut off
            raise self._write_failed(exc, len(bodies)) from exc
        self._seq, self._prev = seq, prev
        self._pending.clear()
        self._outage = None
        try:  # the batch is written: nothing after this may call it failed
            if data:
                self._committed(seq - 1, prev)
            elif not bodies:  # an empty commit (probe, ticker): catch up on side work
                self._catch_up()
            self._maintain()
        except Exception:  # a bug in the bookkeeping; the records stand
            log.exception("audit trail: bookkeeping after a commit failed")

    def _write_failed(self, exc: Exception, refused: int) -> AuditError:
        """Account for a failed write of `refused` events and cut it off; the error to raise.

        Whatever failed (the medium, or a bug: `_unexpected`), the batch is
        rolled back, so none of its events stays in the trail: the callers are
        told their decisions were not recorded, and that must be true.
        """
        if isinstance(exc, OSError):
            error = f"audit trail cannot be written: {_describe(exc)}"
            note = _describe(exc)
        elif isinstance(exc, AuditError):
            error = note = str(exc)
        else:
            error = note = _unexpected(exc)
        self._note_failure(note, refused)
        self._rollback()
        return AuditError(error)

    def _note_failure(self, error: str, refused: int) -> None:
        now = system_event("outage", utc_now())["time"]
        if self._outage is None:
            self._outage = {"since": now, "first_error": error, "refused_events": 0}
        self._outage["refused_events"] += refused
        self._outage["last_error"] = error

    def _note(self, record: dict[str, Any]) -> None:
        """Queue a system record unless the same one (time aside) is already queued."""
        same = {k: v for k, v in record.items() if k not in ("time", "id")}
        for queued in self._pending:
            if {k: v for k, v in queued.items() if k not in ("time", "id")} == same:
                return
        self._pending.append(record)

    def _outage_record(self) -> dict[str, Any]:
        assert self._outage is not None
        return system_event("outage", utc_now(), **self._outage)

    def _set_health(self, healthy: bool, detail: str) -> None:
        if healthy == self._healthy:
            return
        self._healthy, self._detail = healthy, detail
        if healthy:
            log.warning("audit trail is writable again")
        else:
            log.error("audit trail failed, denying every decision until it recovers: %s", detail)
            self._start_probe()
        for watcher in list(self._watchers):
            try:
                watcher(healthy, detail)
            except Exception:  # a watcher must not break the trail
                log.exception("audit health watcher failed")

    def _start_probe(self) -> None:
        if self._probe is None or not self._probe.is_alive():
            self._probe = threading.Thread(
                target=self._probe_loop, name="stepguard-audit-probe", daemon=True
            )
            self._probe.start()

    def _probe_loop(self) -> None:
        """While unhealthy, try an empty commit (it writes the outage record) every interval."""
        while not self._stop.wait(self._probe_interval):
            if self._healthy:
                return
            with contextlib.suppress(AuditError):
                self._submit(None)

    # -- the medium (overridden) -----------------------------------------------

    def _ensure_open(self) -> None:
        """Open (and recover) if needed; may queue system records in `_pending`."""

    def _append(self, data: bytes) -> None:
        raise NotImplementedError

    def _sync(self) -> None:
        """Make appended data durable across power loss."""

    def _rollback(self) -> None:
        """Undo a partly written batch after a failure."""

    def _committed(self, seq: int, digest: str) -> None:
        """After a successful commit (the head anchor)."""

    def _catch_up(self) -> None:
        """As leader, with nothing to write: deferred side work (the head anchor)."""

    def _maintain(self) -> None:
        """After a commit, as leader: rotation."""

    def _close_medium(self) -> None:
        """Release the medium."""


def encode_event(event: Mapping[str, Any]) -> bytes:
    """An event's canonical bytes, as the trail chains them; UnencodableEvent (an
    AuditError) for what JSON cannot hold."""
    try:
        return canonical_bytes(event)
    except (TypeError, ValueError) as exc:
        raise UnencodableEvent(f"the audit event cannot be encoded: {exc}") from exc


def _unexpected(exc: Exception) -> str:
    """A commit failed in a way no medium should (a bug): log it; the error the callers get."""
    log.exception("audit commit failed unexpectedly")
    return f"audit trail failed: {type(exc).__name__}: {exc}"


def _notify(callbacks: list[Callable[[str], object]], error: str) -> None:
    for callback in callbacks:
        try:
            callback(error)
        except Exception:  # e.g. the event loop already closed; the trail goes on
            log.exception("audit commit callback failed")


def _describe(exc: OSError) -> str:
    name = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{name}{where}" if exc.errno else f"{exc}{where}"


def durability_problem(value: str) -> str:
    """What is wrong with a durability value (for ConfigError messages)."""
    if value == "none":
        return (
            "audit_durability 'none' would let answers leave before their audit event is "
            "written; stepguard does not offer it: use 'flush' (default: written to the OS "
            "before the answer) or 'fsync' (also on disk before the answer)"
        )
    return f"audit_durability must be one of {', '.join(DURABILITIES)}, got {value!r}"


def utc_now() -> datetime:
    return datetime.now(UTC)
