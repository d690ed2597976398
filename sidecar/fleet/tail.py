"""Reading a trail directory as it grows: every chain, across rotations, from a cursor.

A chain's position is (segment number, byte offset in that segment), not a
file name: rotation renames the active file `audit.jsonl` to
`audit.jsonl.<segment>` between two commits, so the same segment is found
under either name and reading goes on at the same offset. At the end of a
rotated segment reading moves to the next segment's start. Only complete lines
(ending in a newline) are read: a line being written, or torn by a crash, is
left for later (recovery cuts a torn tail off, and it was never shipped).

The cursor file holds each chain's position after the last record the broker
acknowledged; it is replaced atomically (temporary file, fsync, rename), so a
shipper killed at any moment resends at most what was unacknowledged, and the
broker (and the store) drop the repeats.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from sidecar.audit.chain import BadRecord, parse_line
from sidecar.audit.files import make_dirs, open_read
from sidecar.audit.segments import Trail, fsync_dir, last_line
from sidecar.audit.workers import collect_sets, manifest_path
from sidecar.core.errors import ConfigError, StepguardError

log = logging.getLogger(__name__)
_ROTATED = re.compile(r"\.(\d{6,})$")
_SEQ = re.compile(rb'^\{"seq":(\d+),"prev":"([0-9a-f]*)","hash":"([0-9a-f]*)"')
_TIME = re.compile(rb'"time":"([^"]*)"')
_REVISION = re.compile(rb'"policy_revision":"([^"]*)"')
_KIND = re.compile(rb'"kind":"([a-z_]*)"')
READ_BYTES = 1 << 20


@dataclass
class Position:
    segment: int
    offset: int
    seq: int = -1  # the last record shipped
    hash: str = ""


@dataclass(frozen=True, slots=True)
class Line:
    chain: str  # the chain's file name: audit.jsonl, audit.w0.jsonl
    segment: int
    end: int  # offset just past this line's newline
    seq: int
    data: bytes  # without its newline (it starts with its seq, prev and hash: _SEQ)

    @property
    def hash(self) -> str:
        m = _SEQ.match(self.data)
        return m[3].decode() if m else ""

    @property
    def prev(self) -> str:
        m = _SEQ.match(self.data)
        return m[2].decode() if m else ""

    def field(self, pattern: re.Pattern[bytes]) -> str:
        m = pattern.search(self.data)
        return m[1].decode() if m else ""

    @property
    def time(self) -> str:
        return self.field(_TIME)

    @property
    def kind(self) -> str:
        return self.field(_KIND)

    @property
    def revision(self) -> str:
        return self.field(_REVISION)


def chains_of(trail: Path) -> list[Trail]:
    """Every chain of every trail in a directory, or of one trail (`DIR/NAME.jsonl`: its own
    chain and its workers' chains, as `audit verify` reads it; it need not exist yet)."""
    found: list[Trail] = []
    if not trail.is_dir() and not trail.parent.is_dir():
        return found
    try:
        sets = collect_sets([trail])
    except StepguardError:  # the sidecar has not written it yet
        return found
    for trails in sets:
        found.extend(c for c in trails.chains if c.segments)
    return found


def manifests_of(trail: Path) -> list[Path]:
    """The workers manifests of a directory's trails, or of one trail."""
    if trail.is_dir():
        return sorted(p for p in trail.glob("*.workers.json") if p.is_file())
    manifest = manifest_path(trail)
    return [manifest] if manifest.is_file() else []


class SegmentIndex:
    """Segment number -> file, for one chain; the active file's number read from its header."""

    def __init__(self) -> None:
        self._active: dict[tuple[int, int], int] = {}  # (dev, ino) -> segment

    def files(self, trail: Trail) -> dict[int, Path]:
        out: dict[int, Path] = {}
        for path in trail.segments:
            m = _ROTATED.search(path.name)
            if m and path.name[: m.start()] == Path(trail.name).name:
                out[int(m[1])] = path
                continue
            number = self._active_number(path)
            if number is not None:
                out[number] = path
        return out

    def _active_number(self, path: Path) -> int | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        if key in self._active:
            return self._active[key]
        try:
            with open_read(path) as f:
                first = f.readline(1 << 16)
        except OSError:
            return None
        if not first.endswith(b"\n"):
            return None  # the header is not written yet
        try:
            record = parse_line(first[:-1])
        except BadRecord:
            return None
        segment = record.body.get("segment")
        if record.kind != "segment" or not isinstance(segment, int):
            return None
        self._active[key] = segment
        return segment


def read_lines(
    trail: Trail, pos: Position | None, index: SegmentIndex, limit: int
) -> Iterator[Line]:
    """Up to `limit` complete lines of the chain after `pos` (None: from its first segment)."""
    chain = Path(trail.name).name
    files = index.files(trail)
    if not files:
        return
    if pos is None:
        pos = Position(min(files), 0)
    segment, offset = pos.segment, pos.offset
    _locate(trail, files, segment)
    if segment not in files and segment < min(files):
        segment, offset = min(files), 0  # pruned below the cursor: nothing was lost here
    elif segment not in files and segment > max(files):
        # The trail was started over (its files deleted): read the new one from its start.
        # Its records reuse seqs the store holds, which the collectors report as forks.
        log.error("ship: %s: the cursor is past the trail's end; reading it again", chain)
        segment, offset = min(files), 0
    n = 0
    mark = offset  # just past the last line yielded
    while n < limit and segment in files:
        try:
            with open_read(files[segment]) as f:
                size = os.fstat(f.fileno()).st_size
                if size < offset:
                    # Cut back under the cursor (a commit the sidecar rolled back, or the
                    # file replaced): read the segment again; repeats are dropped, and a
                    # different record under a shipped seq is reported as a fork.
                    log.error("ship: %s segment %d shrank; reading it again", chain, segment)
                    offset = mark = 0
                while n < limit and size > offset:
                    f.seek(offset)
                    data = f.read(min(size - offset, READ_BYTES))
                    last = data.rfind(b"\n")
                    if last < 0:
                        break  # a line still being written (or torn): later
                    start = 0
                    while start <= last and n < limit:
                        nl = data.index(b"\n", start)
                        raw = data[start:nl]
                        m = _SEQ.match(raw)
                        if m:
                            end = offset + nl + 1
                            yield Line(chain, segment, end, int(m[1]), raw)
                            mark = end
                            n += 1
                        start = nl + 1
                    offset += start
        except FileNotFoundError:
            files = index.files(trail)  # rotated under us: read on under its new name
            _locate(trail, files, segment)
            offset = max(offset, mark)
            continue
        if n >= limit or offset < size:
            return
        # At the end of this segment: go on only once a later one exists (it was rotated).
        _locate(trail, files, segment + 1)
        later = [s for s in files if s > segment]
        if not later:
            return
        segment, offset = min(later), 0
        mark = 0


def _locate(trail: Trail, files: dict[int, Path], segment: int) -> None:
    """Add `segment` under its rotated name when the listing missed it: `trail` was listed
    before the sidecar rotated that segment (and, it may be, others after it). Without
    this the reader took the segment for pruned, or jumped to the active file, and skipped
    the records between."""
    if segment in files:
        return
    base = Path(trail.name)
    rotated = base.with_name(f"{base.name}.{segment:06d}")
    if rotated.is_file():
        files[segment] = rotated


def backlog(trail: Trail, pos: Position | None, index: SegmentIndex) -> tuple[int, str]:
    """(records on disk after `pos`, time of the newest record on disk) for the lag metric:
    the last record's seq minus the cursor's, read from the newest segment's last line."""
    files = index.files(trail)
    if not files:
        return 0, ""
    newest = files[max(files)]
    try:
        with open_read(newest) as f:
            line, _ = last_line(f, os.fstat(f.fileno()).st_size)
    except OSError:
        return 0, ""
    if line is None:
        return 0, ""
    m = _SEQ.match(line)
    if not m:
        return 0, ""
    last = int(m[1])
    done = pos.seq if pos is not None else -1
    t = _TIME.search(line)
    return max(0, last - done), t[1].decode() if t else ""


def last_seq_of(path: Path) -> int | None:
    """The seq of a segment's last complete record (None: none, or unreadable)."""
    try:
        with open_read(path) as f:
            line, _ = last_line(f, os.fstat(f.fileno()).st_size)
    except OSError:
        return None
    m = _SEQ.match(line) if line else None
    return int(m[1]) if m else None


# --- the cursor --------------------------------------------------------------------------


def load_cursor(path: Path) -> dict[str, Position]:
    """Each chain's position; {} when there is no cursor yet. A damaged cursor is an error:
    starting over would resend everything (harmless, deduplicated) but silently."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: the shipper's cursor is unreadable ({exc}); move it aside to resend "
            "the whole trail (the broker and the store drop what they already hold)"
        ) from exc
    return {name: Position(**p) for name, p in data.get("chains", {}).items()}


def save_cursor(path: Path, cursor: dict[str, Position], extra: dict[str, object]) -> None:
    make_dirs(path.parent)
    body = {"chains": {k: asdict(v) for k, v in sorted(cursor.items())}, **extra}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(json.dumps(body, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
