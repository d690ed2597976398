"""Checkpoints from the file trail's side: when to pin, pinning, refusing a trail behind its pin.

The checkpoint file's format is checkpoint.py's. Here the file trail decides
when one is due (every CHECKPOINT_EVERY records, or CHECKPOINT_INTERVAL_S,
as the head thread in filesink.py looks), takes a snapshot of what is
committed as leader, and appends the checkpoint from the head thread once
those records are durable: off the decision path. At open, a trail that ends
before, or differs from, what the last checkpoint pinned is refused (every
decision DENY) until an operator has looked.

A mixin of FileSink: its state (`_cp_*`, `_checkpoints`) is set up in
`FileSink.__init__`, and declared below for the type checker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from sidecar.audit.chain import BadRecord, check_hash, parse_line
from sidecar.audit.checkpoint import BadCheckpoint, CheckpointFile, checkpoint_line
from sidecar.audit.commit import ChainSink, utc_now
from sidecar.audit.files import open_read
from sidecar.audit.segments import last_line
from sidecar.core.errors import AuditError
from sidecar.core.event import timestamp

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 1000  # events between checkpoints, at most (checked every ANCHOR_IDLE_S)
CHECKPOINT_INTERVAL_S = 10.0  # a checkpoint at least this often while records are written


class Pinning(ChainSink):
    """The file trail's checkpoints: due, snapshot, append, and the check at open."""

    path: Path
    _fd: int | None
    _good: int
    _segment: int
    _checkpoints: CheckpointFile | None
    _cp_every: int
    _cp_interval: float
    _cp_seq: int
    _cp_at: float
    _cp_snapshot: tuple[int, int, int, str, int] | None
    _cp_lock: threading.Lock
    _cp_snap_lock: threading.Lock
    _cp_failed: bool
    _cp_trusted: bool

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
                time=timestamp(utc_now()),
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
            line, cut = last_line(f, size)
        if line is None or cut != size:
            return ""
        try:
            record = parse_line(line)
        except BadRecord:
            return ""
        if record.seq != seq or not check_hash(self.hasher, record):
            return ""
        return record.hash
