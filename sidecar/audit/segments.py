"""A trail's files: which files make one trail, and reading and writing them whole.

A trail named NAME is its rotated segments `NAME.000001`, `NAME.000002`...,
then the active `NAME`, and its head anchor `NAME.head`; `NAME.torn-<utc>`
files are bytes set aside by recovery and belong to no segment, and neither
does a multi-worker trail's manifest `STEM.workers.json` (workers.py, which
groups the workers' chains into one trail). `collect` finds chains for the
readers (`audit verify`, `audit query`, `replay`); the
writer (filesink.py, rotation.py, recovery.py, pinning.py) shares the helpers
below it: the last complete line of a segment, a checked record, a write of
all bytes and a directory fsync.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sidecar.audit.chain import BadRecord, Hasher, Record, check_hash, parse_line
from sidecar.core.errors import AuditError, StepguardError

_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>\d{6,})$")
MANIFEST_SUFFIX = ".workers.json"  # DIR/audit.workers.json lists the chains of many workers


@dataclass(frozen=True, slots=True)
class Trail:
    """The files of one trail, in chain order."""

    name: str
    segments: tuple[Path, ...]
    head: Path | None
    worker: int | None = None  # a worker's chain of a multi-worker trail (workers.py)


def collect(paths: Iterable[Path]) -> list[Trail]:
    """Trails named by PATHs: a directory (every trail in it) or a trail's active file."""
    bases: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for entry in sorted(path.iterdir()):
                if not entry.is_dir():  # FIFOs too: opening them is refused, by name
                    base = base_of(entry)
                    if base is not None:
                        bases[base] = None
        elif path.exists() or _rotated_of(path):
            bases[base_of(path) or path] = None
        else:
            raise StepguardError(f"{path}: no such file or directory")
    return [trail_of(base) for base in bases]


def is_manifest(name: str) -> bool:
    """A multi-worker trail's manifest (workers.py), or a temporary file of one."""
    return name.endswith(MANIFEST_SUFFIX) or (MANIFEST_SUFFIX + ".tmp-") in name


def base_of(path: Path) -> Path | None:
    """The active file of the chain `path` belongs to; None for files of no chain."""
    name = path.name
    if ".torn-" in name or is_manifest(name):
        return None
    if name.endswith(".head"):
        return path.with_name(name.removesuffix(".head"))
    m = _ROTATED.match(name)
    return path.with_name(m["base"]) if m else path


def _rotated_of(base: Path) -> list[tuple[int, Path]]:
    if not base.parent.is_dir():
        return []
    found = []
    for entry in base.parent.iterdir():
        m = _ROTATED.match(entry.name)
        if m and m["base"] == base.name:
            found.append((int(m["n"]), entry))
    return sorted(found)


def trail_of(base: Path) -> Trail:
    """The chain whose active file is (or was) `base`: its segments, oldest first, and head."""
    segments = [p for _, p in _rotated_of(base)]
    if base.exists():
        segments.append(base)
    head = base.with_name(base.name + ".head")
    return Trail(str(base), tuple(segments), head if head.exists() else None)


def last_line(f: IO[bytes], size: int) -> tuple[bytes | None, int]:
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


def read_record(hasher: Hasher, name: Path, line: bytes, where: str) -> Record:
    """One record of segment `name`, checked: AuditError saying what to run, if it is
    unreadable or does not verify with `hasher` (wrong key, or a changed file)."""
    try:
        record = parse_line(line)
    except BadRecord as exc:
        raise AuditError(
            f"{name}: {where}: the record is unreadable ({exc}); "
            "run `stepguard audit verify` and move the damaged file aside"
        ) from exc
    if not check_hash(hasher, record):
        raise AuditError(
            f"{name}: {where}: the record does not verify with the configured "
            "HMAC key (wrong key, or the file was changed); run `stepguard audit verify`"
        )
    return record


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
