"""Recovery of the file trail: torn tails, refused batches, and continuity at restart.

A crash can leave the active segment ending in a torn line; a failed commit
that could not be cut off at once leaves lines no record may follow; a head
anchor ahead of the trail means records were lost. At each open (filesink.py
`_ensure_open`) these are found, the bytes are kept aside in
`NAME.torn-<utc>` (fsynced, then cut off the segment), and a `recovery`
record says so in the chain before any new record is written.

A mixin of FileSink: the state it reads (`path`, `_fd`, `_good`...) is set up
in `FileSink.__init__`, and declared below for the type checker.
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from sidecar.audit.anchor import read_anchor
from sidecar.audit.chain import Record
from sidecar.audit.commit import ChainSink
from sidecar.audit.files import open_read, open_regular
from sidecar.audit.segments import last_line, read_record, write_all
from sidecar.core.errors import AuditError
from sidecar.core.event import system_event

log = logging.getLogger(__name__)


class Recovery(ChainSink):
    """Finding what a crash or a failed commit left, and setting it aside."""

    path: Path
    head_path: Path
    _fd: int | None
    _good: int
    _refused_from: int | None

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

    def _scan_active(self, now: datetime) -> tuple[int, float, Record] | None:
        """Segment number, start time and last record of the active file; None if empty."""
        try:
            f = open_read(self.path)
        except FileNotFoundError:
            return None
        with f:
            size = os.fstat(f.fileno()).st_size
            last, cut = last_line(f, size)
            if cut < size:
                f.seek(cut)
                self._set_aside(f.read(), cut, now, "torn_tail")
            if last is None:
                return None
            f.seek(0)
            first = f.readline().rstrip(b"\n")
        header = read_record(self.hasher, self.path, first, "line 1")
        record = read_record(self.hasher, self.path, last, "last line")
        if header.kind != "segment" or not isinstance(header.body.get("segment"), int):
            raise AuditError(
                f"{self.path}: line 1 is not a segment header; run `stepguard audit verify`"
            )
        started = datetime.fromisoformat(str(header.body["time"]).replace("Z", "+00:00"))
        return int(header.body["segment"]), started.timestamp(), record

    def _set_aside(self, data: bytes, keep: int, now: datetime, reason: str) -> None:
        """Keep the bytes from `keep` on in a file of their own, cut them off, note it in
        the chain: a torn last line found at open (`torn_tail`), or what a failed commit
        left behind (`refused_batch`)."""
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.torn-{stamp}")  # as verify skips
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            write_all(fd, data)
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
