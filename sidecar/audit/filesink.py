"""The file trail: append-only segments with a head anchor, opened and recovered at start.

File layout for `--audit-file /var/log/stepguard/audit.jsonl`:

    audit.jsonl             the active segment (first line: a segment header)
    audit.jsonl.000001 ...  rotated segments, by segment number
    audit.jsonl.head        anchor: seq and hash of the last committed record
    audit.jsonl.torn-<utc>  bytes of a torn last line found at start, or of a failed
                            commit that could not be cut off at once, kept aside

`FileSink` is the medium under commit.py's group commit: it opens the active
segment (O_APPEND, and O_DSYNC with durability fsync), appends each batch in
one write, and keeps the head anchor (anchor.py) current from a thread of its
own. What happens around that lives beside it, as mixins over the same
state: rotation.py (size and age), recovery.py (torn tails, refused batches,
the anchor at restart), pinning.py (signed checkpoints, with `checkpoints`;
a trail behind the last one is refused at open). Every file is opened
through files.py: regular files only, never a blocking open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sidecar.audit.anchor import anchor_bytes
from sidecar.audit.chain import Hasher, record_line
from sidecar.audit.checkpoint import CheckpointFile
from sidecar.audit.commit import PROBE_INTERVAL_S, utc_now
from sidecar.audit.files import make_dirs, open_regular
from sidecar.audit.pinning import CHECKPOINT_EVERY, CHECKPOINT_INTERVAL_S, Pinning
from sidecar.audit.recovery import Recovery
from sidecar.audit.rotation import Rotation
from sidecar.audit.segments import write_all
from sidecar.core.errors import AuditError

log = logging.getLogger(__name__)

ANCHOR_DELAY_S = 0.01  # under load, the head anchor is rewritten at most this often
ANCHOR_IDLE_S = 0.1  # when commits stop, the last one is anchored within about this


class FileSink(Recovery, Rotation, Pinning):
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
        header_fields: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(hasher or Hasher(), durability, probe_interval_s)
        self.path = path
        # Added to every segment header: `worker` and `workers` for a worker's chain.
        self._header_fields = dict(header_fields or {})
        self.head_path = path.with_name(path.name + ".head")
        # Checkpoints (pinning.py; their file, checkpoint.py): written by the head thread,
        # off the decision path; `_cp_seq` is the highest seq pinned so far.
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

    def _ensure_open(self) -> None:
        if self._fd is not None:
            return
        # A header queued by a failed attempt is rebuilt from what is on disk now.
        self._pending = [r for r in self._pending if r.get("kind") != "segment"]
        make_dirs(self.path.parent)
        now = utc_now()
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

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        written = os.write(self._fd, data)  # all of it, but for a signal or a full disk
        if written < len(data):
            write_all(self._fd, data[written:])
        self._size += len(data)

    def _commit_alone(self, body: bytes) -> None:
        """`commit.ChainSink._commit_alone` with its usual case in one straight line.

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
