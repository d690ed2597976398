"""JSON-lines trails with group commit: a file (rotated, recovered) and stdout.

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

File layout for `--audit-file /var/log/stepguard/audit.jsonl`:

    audit.jsonl             the active segment (first line: a segment header)
    audit.jsonl.000001 ...  rotated segments, by segment number
    audit.jsonl.head        anchor: seq and hash of the last committed record
    audit.jsonl.torn-<utc>  bytes of a torn last line found at start, or of a failed
                            commit that could not be cut off at once, kept aside

With `checkpoints`, signed checkpoints go to a separate file (checkpoint.py),
and a trail behind the last one is refused at open. Every file is opened
through files.py: regular files only, never a blocking open.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sidecar.audit.chain import (
    GENESIS,
    BadRecord,
    Hasher,
    Record,
    canonical,
    canonical_bytes,
    check_hash,
    parse_line,
    record_line,
)
from sidecar.audit.checkpoint import BadCheckpoint, CheckpointFile, checkpoint_line
from sidecar.audit.event import system_event, timestamp
from sidecar.audit.files import make_dirs, open_read, open_regular
from sidecar.core.errors import AuditError, ConfigError, UnencodableEvent

log = logging.getLogger(__name__)

DURABILITIES = ("flush", "fsync")
HEAD_SIZE = 512
ANCHOR_DELAY_S = 0.01  # under load, the head anchor is rewritten at most this often
ANCHOR_IDLE_S = 0.1  # when commits stop, the last one is anchored within about this
PROBE_INTERVAL_S = 1.0
CHECKPOINT_EVERY = 1000  # events between checkpoints, at most (checked every ANCHOR_IDLE_S)
CHECKPOINT_INTERVAL_S = 10.0  # a checkpoint at least this often while records are written
ROTATED = re.compile(r"\.(\d{6,})$")
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


class _ChainSink:
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
        body = _encode(event)
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
            self._submit(canonical(system_event("shutdown", _now())))
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
        body = _encode(event)
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

    def _submit(self, body: bytes | None) -> None:
        with self._lock:
            if self._closed:
                raise AuditError("audit trail is closed")
            batch = self._open
            if body is not None:
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
            seq, prev = self._seq, self._prev
            lines = []
            for body in all_bodies:
                line, prev = record_line(self.hasher, seq, prev, body)
                lines.append(line)
                seq += 1
            if lines:
                self._append(b"".join(lines))
                if self.durability == "fsync":
                    self._sync()
        except Exception as exc:  # whatever it was (a bug too), the batch is cut off
            raise self._write_failed(exc, len(bodies)) from exc
        self._seq, self._prev = seq, prev
        self._pending.clear()
        self._outage = None
        try:  # the batch is written: nothing after this may call it failed
            if lines:
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
        now = system_event("outage", _now())["time"]
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
        return system_event("outage", _now(), **self._outage)

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


class StreamSink(_ChainSink):
    """Chained JSON lines on a stream (stdout for the cluster's log collector).

    Each process starts a new chain (a segment header with a random `stream`
    id and `follows` = GENESIS): what was written before cannot be read back.
    """

    def __init__(
        self,
        stream: IO[bytes],
        *,
        owns: bool = False,
        hasher: Hasher | None = None,
        durability: str = "flush",
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        super().__init__(hasher or Hasher(), durability, probe_interval_s)
        self._stream = stream
        self._owns = owns
        self._pending.append(
            system_event(
                "segment",
                _now(),
                segment=1,
                follows=GENESIS,
                stream=str(uuid.uuid4()),
                algorithm=self.hasher.algorithm,
                key_id=self.hasher.key_id,
            )
        )

    def _append(self, data: bytes) -> None:
        try:
            self._stream.write(data)
            self._stream.flush()
        except ValueError as exc:  # closed stream
            raise OSError(str(exc)) from exc

    def _sync(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.fsync(self._stream.fileno())

    def _close_medium(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()
            if self._owns:
                self._stream.close()


class FileSink(_ChainSink):
    """The file trail: append-only segments, rotation by size and age, crash recovery."""

    def __init__(
        self,
        path: Path,
        *,
        hasher: Hasher | None = None,
        durability: str = "flush",
        rotate_bytes: int = 0,
        rotate_age_s: float = 0.0,
        probe_interval_s: float = PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.time,
        checkpoints: Path | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        super().__init__(hasher or Hasher(), durability, probe_interval_s)
        self.path = path
        self.head_path = path.with_name(path.name + ".head")
        # Checkpoints (sidecar/audit/checkpoint.py): written by the head thread, off
        # the decision path; `_cp_seq` is the highest seq pinned so far.
        self._checkpoints = CheckpointFile(checkpoints, self.hasher) if checkpoints else None
        self._cp_every = max(1, checkpoint_every)
        self._cp_interval = checkpoint_interval_s
        self._cp_seq = -1
        self._cp_at = time.monotonic()
        self._cp_want = False
        self._cp_snapshot: tuple[int, int, int, str, int] | None = None
        self._cp_lock = threading.Lock()  # one checkpoint appended at a time, in seq order
        self._cp_snap_lock = threading.Lock()  # hands the snapshot from leader to head thread
        self._cp_failed = False
        # False until the open trail is known to hold what the last checkpoint pinned:
        # a refused (rolled-back) trail must never be pinned, or the next start would accept it.
        self._cp_trusted = False
        self._rotate_bytes = rotate_bytes
        self._rotate_age_s = rotate_age_s
        self._clock = clock
        # Segments are appended to; with fsync every write is also synchronous (`_sync`).
        self._append_flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        if durability == "fsync":
            self._append_flags |= os.O_DSYNC
        self._fd: int | None = None
        self._head_fd: int | None = None
        self._size = 0
        self._segment = 0
        self._segment_started = 0.0
        self._head_failed = False
        self._good = 0  # bytes of the active segment known committed
        self._refused_from: int | None = None  # a failed batch not yet cut off starts here
        self._rotate_retry_at = 0.0
        self._anchor: tuple[int, int, str] | None = None  # (segment, seq, hash) to record
        self._anchored_at = 0.0  # monotonic time of the last anchor write
        # Open now: recovery runs at start, and health is known before serving.
        with contextlib.suppress(AuditError):
            self._submit(None)
        threading.Thread(target=self._anchor_loop, name="stepguard-audit-head", daemon=True).start()
        if rotate_age_s > 0:
            self._start_ticker()

    def _anchor_loop(self) -> None:
        """Anchor the last commit once commits stop (under load, leaders anchor inline).

        The hot path only compares a clock reading: a thread woken per commit
        costs the deciding thread far more than the anchor's single pwrite
        (GIL hand-offs), so this one just polls every ANCHOR_IDLE_S.
        """
        while not self._stop.wait(ANCHOR_IDLE_S):
            due = self._checkpoint_due()
            if self._anchor is not None or due:
                self._cp_want = due
                with contextlib.suppress(AuditError):
                    self._submit(None)  # as leader, `_catch_up` takes the checkpoint's snapshot
                self._cp_want = False
                self._flush_checkpoint()

    # -- checkpoints -----------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        if self._checkpoints is None or self._fd is None:
            return False
        behind = self._seq - 1 - self._cp_seq
        return behind > 0 and (
            behind >= self._cp_every or time.monotonic() - self._cp_at >= self._cp_interval
        )

    def _snapshot_checkpoint(self) -> None:
        """As leader: what the next checkpoint names, and a descriptor to fsync it with."""
        if self._fd is None or self._seq - 1 <= self._cp_seq:
            return
        snapshot = (self._segment, self._good, self._seq - 1, self._prev, os.dup(self._fd))
        with self._cp_snap_lock:
            old, self._cp_snapshot = self._cp_snapshot, snapshot
        if old is not None:
            os.close(old[4])

    def _flush_checkpoint(self) -> None:
        """Off the leader: make the snapshot's records durable, then append its checkpoint."""
        with self._cp_snap_lock:
            snapshot, self._cp_snapshot = self._cp_snapshot, None
        if snapshot is None:
            return
        segment, size, seq, digest, fd = snapshot
        try:
            if self.durability != "fsync":  # with fsync (O_DSYNC) they are on disk already
                os.fsync(fd)
        except OSError as exc:
            self._checkpoint_failed(exc)
            return
        finally:
            os.close(fd)
        self._emit_checkpoint(segment, size, seq, digest)

    def _emit_checkpoint(self, segment: int, size: int, seq: int, digest: str) -> None:
        """Append one checkpoint (records up to `seq` are durable); a failure is logged."""
        if self._checkpoints is None:
            return
        with self._cp_lock:
            if seq <= self._cp_seq or not self._cp_trusted:
                return
            line = checkpoint_line(
                self.hasher,
                trail=self.path.name,
                segment=segment,
                size=size,
                seq=seq,
                digest=digest,
                time=timestamp(_now()),
            )
            try:
                self._checkpoints.append(line)
            except OSError as exc:
                self._checkpoint_failed(exc)
                return
            self._cp_seq, self._cp_at = seq, time.monotonic()
            if self._cp_failed:
                log.warning("audit checkpoints are written again to %s", self._checkpoints.path)
            self._cp_failed = False

    def _checkpoint_failed(self, exc: OSError) -> None:
        self._cp_at = time.monotonic()  # retried at the next interval
        if not self._cp_failed:
            assert self._checkpoints is not None
            log.error(
                "audit trail %s: cannot write a checkpoint to %s (retrying every %.0f s; "
                "records after seq %d are not pinned): %s",
                self.path,
                self._checkpoints.path,
                self._cp_interval,
                self._cp_seq,
                exc,
            )
        self._cp_failed = True

    def _check_checkpoints(self) -> None:
        """Refuse a trail that is behind (or not the same as) what the last checkpoint pinned.

        The sequence only ever goes forward: a trail that ends before the last
        checkpointed record, or holds another record in its place, was cut or
        rolled back (with its head anchor). It is not written (every decision
        is DENY) until an operator has looked: docs/audit.md says how.
        """
        if self._checkpoints is None:
            return
        self._cp_trusted = False
        where = self._checkpoints.path
        try:
            with self._cp_lock:  # never read the tail while a checkpoint is being appended
                cp = self._checkpoints.last()
        except BadCheckpoint as exc:
            raise AuditError(
                f"audit checkpoint file {exc}; the trail is not written until an operator "
                f"runs `stepguard audit verify --checkpoints {where}`"
            ) from exc
        if cp is None:
            self._cp_trusted = True
            return
        if cp.trail != self.path.name:
            raise AuditError(
                f"audit checkpoint file {where} pins trail {cp.trail!r}, not {self.path.name!r}: "
                "give each trail a checkpoint file of its own"
            )
        last = self._seq - 1
        rolled_back = (
            f"run `stepguard audit verify --checkpoints {where} {self.path}`; the trail is "
            "not written until an operator has looked (docs/audit.md, checkpoints)"
        )
        if cp.seq > last:
            ends = f"ends at seq {last}" if last >= 0 else "holds no records"
            raise AuditError(
                f"{self.path}: the trail {ends}, but the checkpoint in {where} "
                f"(written {cp.time}) pins seq {cp.seq}: records {last + 1}..{cp.seq} were cut "
                f"off or the trail was rolled back; {rolled_back}"
            )
        found = self._record_at(cp.segment, cp.size, cp.seq)
        if found is not None and found != cp.hash:
            raise AuditError(
                f"{self.path}: the checkpoint in {where} (written {cp.time}) pins another "
                f"record at seq {cp.seq}: the trail was rewritten after it; {rolled_back}"
            )
        self._cp_seq = max(self._cp_seq, cp.seq)
        self._cp_trusted = True

    def _record_at(self, segment: int, size: int, seq: int) -> str | None:
        """The hash of the record ending at byte `size` of `segment` ("" if none is
        there, or another seq); None when that segment is no longer here (archived)."""
        if segment == self._segment and seq == self._seq - 1:
            return self._prev
        if segment > self._segment:  # pinned in a segment this trail has not reached
            return ""
        if segment == self._segment:
            path = self.path
        else:
            path = self.path.with_name(f"{self.path.name}.{segment:06d}")
            if not path.exists():
                return None
        with open_read(path) as f:
            if size > os.fstat(f.fileno()).st_size:
                return ""
            line, cut = _last_line(f, size)
        if line is None or cut != size:
            return ""
        try:
            record = parse_line(line)
        except BadRecord:
            return ""
        if record.seq != seq or not check_hash(self.hasher, record):
            return ""
        return record.hash

    def _start_ticker(self) -> None:
        """Age-based rotation must also happen when no decisions arrive."""

        def tick() -> None:
            interval = min(max(self._rotate_age_s / 10, 0.05), 60.0)
            while not self._stop.wait(interval):
                if self._fd is not None and self._age_due():
                    with contextlib.suppress(AuditError):
                        self._submit(None)

        threading.Thread(target=tick, name="stepguard-audit-rotate", daemon=True).start()

    # -- opening and recovery ----------------------------------------------------

    def _ensure_open(self) -> None:
        if self._fd is not None:
            return
        # A header queued by a failed attempt is rebuilt from what is on disk now.
        self._pending = [r for r in self._pending if r.get("kind") != "segment"]
        make_dirs(self.path.parent)
        now = _now()
        self._cut_refused(now)
        state = self._scan_active(now)
        if state is None:  # no usable active segment: start the next one
            self._start_segment(now)
        else:
            self._segment, self._segment_started, last = state
            self._seq, self._prev = last.seq + 1, last.hash
            self._fd = open_regular(self.path, self._append_flags)
            self._size = self._good = os.fstat(self._fd).st_size
        self._check_checkpoints()
        self._check_anchor(now)
        self._head_fd = open_regular(self.head_path, os.O_RDWR | os.O_CREAT, 0o640)

    def _scan_active(self, now: datetime) -> tuple[int, float, Record] | None:
        """Segment number, start time and last record of the active file; None if empty."""
        try:
            f = open_read(self.path)
        except FileNotFoundError:
            return None
        with f:
            size = os.fstat(f.fileno()).st_size
            last, cut = _last_line(f, size)
            if cut < size:
                f.seek(cut)
                self._set_aside(f.read(), cut, now, "torn_tail")
            if last is None:
                return None
            f.seek(0)
            first = f.readline().rstrip(b"\n")
        header, record = self._read_record(first, "line 1"), self._read_record(last, "last line")
        if header.kind != "segment" or not isinstance(header.body.get("segment"), int):
            raise AuditError(
                f"{self.path}: line 1 is not a segment header; run `stepguard audit verify`"
            )
        started = datetime.fromisoformat(str(header.body["time"]).replace("Z", "+00:00"))
        return int(header.body["segment"]), started.timestamp(), record

    def _read_record(self, line: bytes, where: str, path: Path | None = None) -> Record:
        name = path or self.path
        try:
            record = parse_line(line)
        except BadRecord as exc:
            raise AuditError(
                f"{name}: {where}: the record is unreadable ({exc}); "
                "run `stepguard audit verify` and move the damaged file aside"
            ) from exc
        if not check_hash(self.hasher, record):
            raise AuditError(
                f"{name}: {where}: the record does not verify with the configured "
                "HMAC key (wrong key, or the file was changed); run `stepguard audit verify`"
            )
        return record

    def _set_aside(self, data: bytes, keep: int, now: datetime, reason: str) -> None:
        """Keep the bytes from `keep` on in a file of their own, cut them off, note it in
        the chain: a torn last line found at open (`torn_tail`), or what a failed commit
        left behind (`refused_batch`)."""
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.torn-{stamp}")  # as verify skips
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            fd = open_regular(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, keep)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            aside.unlink(missing_ok=True)  # the next attempt keeps them again
            raise
        log.warning(
            "audit trail %s: %s (%d bytes) cut off, kept in %s",
            self.path,
            "a torn last line" if reason == "torn_tail" else "a refused batch",
            len(data),
            aside.name,
        )
        self._note(
            system_event(
                "recovery",
                now,
                reason=reason,
                file=self.path.name,
                offset=keep,
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                moved_to=aside.name,
            )
        )

    def _start_segment(self, now: datetime) -> None:
        previous = self._latest_rotated()
        follows, seq, previous_name, segment = GENESIS, 0, "", 1
        if previous is not None:
            number, path = previous
            with open_read(path) as f:
                line, _ = _last_line(f, os.fstat(f.fileno()).st_size)
            if line is None:
                raise AuditError(f"{path}: rotated segment is empty; run `stepguard audit verify`")
            last = self._read_record(line, "last line", path)
            follows, seq, previous_name, segment = last.hash, last.seq + 1, path.name, number + 1
        self._fd = open_regular(self.path, self._append_flags | os.O_CREAT, 0o640)
        self._size = self._good = os.fstat(self._fd).st_size
        if self.durability == "fsync":
            _fsync_dir(self.path.parent)
        self._segment, self._segment_started = segment, now.timestamp()
        self._seq, self._prev = seq, follows
        header = system_event(
            "segment",
            now,
            segment=segment,
            follows=follows,
            previous_file=previous_name,
            algorithm=self.hasher.algorithm,
            key_id=self.hasher.key_id,
        )
        self._pending.insert(0, header)

    def _latest_rotated(self) -> tuple[int, Path] | None:
        best: tuple[int, Path] | None = None
        prefix = self.path.name + "."
        for entry in self.path.parent.iterdir():
            if entry.name.startswith(prefix):
                m = ROTATED.fullmatch(entry.name[len(self.path.name) :])
                if m and (best is None or int(m[1]) > best[0]):
                    best = (int(m[1]), entry)
        return best

    def _check_anchor(self, now: datetime) -> None:
        """A head anchor ahead of the trail means records were lost: say so in the chain."""
        anchor = read_anchor(self.head_path, self.hasher)
        last = self._seq - 1
        if anchor is None:
            if last < 0:  # a new trail: no anchor yet
                return
            # Records exist but their anchor is gone: a cut at the end before this start
            # cannot be seen any more. Say so in the chain before anchoring anew.
            note: dict[str, Any] = {
                "reason": "anchor_missing",
                "detail": f"no head anchor at start with the trail at seq {last}: records "
                "cut off the end before this start cannot be detected",
            }
        elif isinstance(anchor, str):
            note = {"reason": "anchor_unreadable", "detail": anchor}
        elif anchor["seq"] > last:
            note = {
                "reason": "records_missing",
                "from_seq": last + 1,
                "to_seq": anchor["seq"],
                "anchor_hash": anchor["hash"],
            }
        elif anchor["seq"] == last and anchor["hash"] != self._prev:
            note = {"reason": "anchor_mismatch", "seq": last, "anchor_hash": anchor["hash"]}
        else:
            return
        log.warning("audit trail %s: head anchor disagrees with the trail: %s", self.path, note)
        self._note(system_event("recovery", now, file=self.path.name, **note))

    # -- writing -------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        written = os.write(self._fd, data)  # all of it, but for a signal or a full disk
        if written < len(data):
            _write_all(self._fd, data[written:])
        self._size += len(data)

    def _commit_alone(self, body: bytes) -> None:
        """`_ChainSink._commit_alone` with its usual case in one straight line.

        On the asyncio server every event is committed alone, between calls
        that leave the CPU's caches cold, where each Python call on this path
        costs microseconds. So when the segment is open and nothing else is
        due (no system record queued, no outage to report) the chain, the
        write and the bookkeeping happen here, with what `_commit` would do.
        """
        if self._fd is None or self._pending or self._outage is not None:
            super()._commit_alone(body)
            return
        error = ""
        try:
            seq = self._seq
            line, digest = record_line(self.hasher, seq, self._prev, body)
            self._append(line)
        except Exception as exc:  # noqa: BLE001 - as in `_commit`: cut off, then refused
            error = str(self._write_failed(exc, 1))
        else:
            self._seq, self._prev = seq + 1, digest
            try:  # written: nothing after this may call it failed
                self._committed(seq, digest)
                if self._rotate_bytes or self._rotate_age_s:
                    self._maintain()
            except Exception:  # a bug in the bookkeeping; the record stands
                log.exception("audit trail: bookkeeping after a commit failed")
        finally:
            if error or not self._healthy:
                self._set_health(not error, error)
            with self._lock:
                self._hand_over()
        if error:
            raise AuditError(error)

    def _sync(self) -> None:
        """Nothing left to do: with durability fsync the segment is open with O_DSYNC,
        so `_append`'s write returned only once its data was on disk (write and
        fdatasync in one system call: one GIL hand-off per commit, not two)."""

    def _rollback(self) -> None:
        """Cut a partly written batch off; then close, so the next attempt re-reads the file.

        If it cannot be cut now, the next open cuts it before writing anything
        (`_cut_refused`): complete lines of a refused batch must not become
        part of the chain, whose next record would otherwise follow them.
        """
        if self._fd is not None:
            try:
                if os.fstat(self._fd).st_size != self._good:
                    os.ftruncate(self._fd, self._good)
            except OSError as exc:
                log.error("audit trail %s: cannot cut a failed batch off yet: %s", self.path, exc)
                self._refused_from = self._good
        self._close_medium()

    def _cut_refused(self, now: datetime) -> None:
        """Cut off what a failed batch left after `_refused_from`, keeping the bytes aside.

        Runs at the next open, before the file is read; until it succeeds the
        trail stays down (every decision DENY), so no record follows them.
        """
        keep = self._refused_from
        if keep is None:
            return
        try:
            f = open_read(self.path)
        except FileNotFoundError:
            self._refused_from = None
            return
        with f:
            f.seek(keep)
            cut = f.read()
        if cut:
            self._set_aside(cut, keep, now, "refused_batch")
        self._refused_from = None

    def _committed(self, seq: int, digest: str) -> None:
        self._good = self._size
        self._anchor = (self._segment, seq, digest)
        if time.monotonic() - self._anchored_at >= ANCHOR_DELAY_S:
            self._write_anchor()

    def _catch_up(self) -> None:
        self._write_anchor()
        if self._cp_want:
            self._snapshot_checkpoint()

    def _write_anchor(self) -> None:
        if self._anchor is None or self._head_fd is None:
            return
        segment, seq, digest = self._anchor
        self._anchor = None
        self._anchored_at = time.monotonic()
        anchor = anchor_bytes(self.hasher, self.path.name, segment, seq, digest)
        try:
            os.pwrite(self._head_fd, anchor, 0)
            self._head_failed = False
        except OSError as exc:  # the records are committed; only the anchor is stale
            if not self._head_failed:
                log.warning("audit trail %s: cannot update the head anchor: %s", self.path, exc)
            self._head_failed = True

    def _age_due(self) -> bool:
        age = self._clock() - self._segment_started
        return self._rotate_age_s > 0 and age >= self._rotate_age_s

    def _maintain(self) -> None:
        if self._fd is None or not (self._rotate_bytes or self._rotate_age_s):
            return
        size_due = self._rotate_bytes > 0 and self._size >= self._rotate_bytes
        if not (size_due or self._age_due()) or time.monotonic() < self._rotate_retry_at:
            return
        rotated = self.path.with_name(f"{self.path.name}.{self._segment:06d}")
        try:
            if self.durability == "fsync":
                os.fsync(self._fd)
            os.rename(self.path, rotated)
            if self.durability == "fsync":
                _fsync_dir(self.path.parent)
        except OSError as exc:  # keep writing to the current segment; retry in a while
            log.error("audit trail %s: rotation failed (retrying in 10 s): %s", self.path, exc)
            self._rotate_retry_at = time.monotonic() + 10
            return
        log.info("audit trail: segment %d rotated to %s", self._segment, rotated)
        self._close_medium()

    def _close_medium(self) -> None:
        self._write_anchor()
        if self._checkpoints is not None and self._fd is not None:
            # Rotation, close, rollback: pin what is committed (`_good`, `_seq`, `_prev`).
            try:
                if self.durability != "fsync":
                    os.fsync(self._fd)
            except OSError as exc:
                self._checkpoint_failed(exc)
            else:
                self._emit_checkpoint(self._segment, self._good, self._seq - 1, self._prev)
            if self._closed:
                with self._cp_snap_lock:
                    pending, self._cp_snapshot = self._cp_snapshot, None
                if pending is not None:
                    os.close(pending[4])
                self._checkpoints.close()
        for name in ("_fd", "_head_fd"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)


def anchor_bytes(hasher: Hasher, file: str, segment: int, seq: int, digest: str) -> bytes:
    """The head anchor: fixed size, so rewriting it in place never leaves stale bytes.

    Built from a template (it is written once per batch); the bytes equal
    canonical() of the same fields, which read_anchor checks.
    """
    name = _json_string(file)
    body = b'{"file":%s,"hash":"%s","segment":%d,"seq":%d}' % (
        name,
        digest.encode(),
        segment,
        seq,
    )
    mac = hasher.mac(body).encode()
    data = b'{"file":%s,"hash":"%s","mac":"%s","segment":%d,"seq":%d}' % (
        name,
        digest.encode(),
        mac,
        segment,
        seq,
    )
    return data + b" " * (HEAD_SIZE - 1 - len(data)) + b"\n"


@functools.lru_cache(maxsize=16)
def _json_string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


def read_anchor(path: Path, hasher: Hasher) -> dict[str, Any] | str | None:
    """The anchor's fields; a string saying what is wrong with it; None when absent or empty."""
    try:
        with open_read(path) as f:  # NotRegularFile for a FIFO: never a hang
            data = f.read(HEAD_SIZE * 2).strip()
    except FileNotFoundError:
        return None
    if not data:
        return None
    try:
        body = json.loads(data)
        mac = body.pop("mac")
        if not isinstance(body["seq"], int) or not isinstance(body["hash"], str):
            raise TypeError("seq/hash")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"unreadable head anchor: {exc}"
    if mac != hasher.mac(canonical(body)):
        return "head anchor does not verify (changed, or another key)"
    result: dict[str, Any] = body
    return result


def _last_line(f: IO[bytes], size: int) -> tuple[bytes | None, int]:
    """The last complete line (without its newline) and the offset just past it.

    Reads backwards from the end in blocks, so reopening a large segment is cheap.
    Bytes after the returned offset are a torn line. (None, 0) when no line is complete.
    """
    block = 64 * 1024
    buf = b""
    pos = size  # buf holds the bytes [pos, size)
    cut = -1
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)
        buf = f.read(pos - start) + buf
        pos = start
        if cut < 0:
            nl = buf.rfind(b"\n")
            if nl < 0:
                continue
            cut = pos + nl + 1
        end = cut - 1 - pos  # index of the newline that ends the last line
        before = buf.rfind(b"\n", 0, end)
        if before >= 0:
            return buf[before + 1 : end], cut
        if pos == 0:
            return buf[:end], cut
    return None, 0


def _encode(event: Mapping[str, Any]) -> bytes:
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _now() -> datetime:
    return datetime.now(UTC)


def open_sink(
    target: str,
    *,
    hasher: Hasher | None = None,
    durability: str = "flush",
    rotate_bytes: int = 0,
    rotate_age_s: float = 0.0,
    checkpoints: Path | None = None,
    checkpoint_every: int = 0,
    checkpoint_interval_s: float = 0.0,
) -> FileSink | StreamSink:
    """`-` is stdout; anything else the path of the active file segment."""
    if target == "-":
        if checkpoints is not None:
            raise ConfigError(
                "audit checkpoints pin a file trail: give --audit-file PATH (not -) with them"
            )
        return StreamSink(sys.stdout.buffer, hasher=hasher, durability=durability)
    return FileSink(
        Path(target),
        hasher=hasher,
        durability=durability,
        rotate_bytes=rotate_bytes,
        rotate_age_s=rotate_age_s,
        checkpoints=checkpoints,
        checkpoint_every=checkpoint_every or CHECKPOINT_EVERY,
        checkpoint_interval_s=checkpoint_interval_s or CHECKPOINT_INTERVAL_S,
    )
