"""Rotation of the file trail: segments by size and age, each following the last.

The active segment `NAME` is renamed to `NAME.<segment number>` (six digits
or more) between two commits once it reaches `rotate_bytes` or `rotate_age_s`
(a ticker thread sees to the age when no decisions arrive). The next commit
opens a new active segment whose header names the one it follows: its last
hash, the next seq and its file name, so the chain runs on across files (and,
for a worker's chain of a multi-worker trail, `worker` and `workers`: which
worker wrote it and how many ran; workers.py). A
failed rename keeps the current segment and is retried in ten seconds.

A mixin of FileSink: the state it reads is set up in `FileSink.__init__`, and
declared below for the type checker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sidecar.audit.chain import GENESIS
from sidecar.audit.commit import ChainSink
from sidecar.audit.files import open_read, open_regular
from sidecar.audit.segments import fsync_dir, last_line, read_record
from sidecar.core.errors import AuditError
from sidecar.core.event import system_event

log = logging.getLogger(__name__)

ROTATED = re.compile(r"\.(\d{6,})$")


class Rotation(ChainSink):
    """Starting segments, and rotating the active one when it is due."""

    path: Path
    _fd: int | None
    _size: int
    _good: int
    _segment: int
    _segment_started: float
    _rotate_bytes: int
    _rotate_age_s: float
    _rotate_retry_at: float
    _clock: Callable[[], float]
    _append_flags: int
    _header_fields: dict[str, int]

    def _start_ticker(self) -> None:
        """Age-based rotation must also happen when no decisions arrive."""

        def tick() -> None:
            interval = min(max(self._rotate_age_s / 10, 0.05), 60.0)
            while not self._stop.wait(interval):
                if self._fd is not None and self._age_due():
                    with contextlib.suppress(AuditError):
                        self._submit(None)

        threading.Thread(target=tick, name="stepguard-audit-rotate", daemon=True).start()

    def _start_segment(self, now: datetime) -> None:
        previous = self._latest_rotated()
        follows, seq, previous_name, segment = GENESIS, 0, "", 1
        if previous is not None:
            number, path = previous
            with open_read(path) as f:
                line, _ = last_line(f, os.fstat(f.fileno()).st_size)
            if line is None:
                raise AuditError(f"{path}: rotated segment is empty; run `stepguard audit verify`")
            last = read_record(self.hasher, path, line, "last line")
            follows, seq, previous_name, segment = last.hash, last.seq + 1, path.name, number + 1
        self._fd = open_regular(self.path, self._append_flags | os.O_CREAT, 0o640)
        self._size = self._good = os.fstat(self._fd).st_size
        if self.durability == "fsync":
            fsync_dir(self.path.parent)
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
            **self._header_fields,
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
                fsync_dir(self.path.parent)
        except OSError as exc:  # keep writing to the current segment; retry in a while
            log.error("audit trail %s: rotation failed (retrying in 10 s): %s", self.path, exc)
            self._rotate_retry_at = time.monotonic() + 10
            return
        log.info("audit trail: segment %d rotated to %s", self._segment, rotated)
        self._close_medium()
