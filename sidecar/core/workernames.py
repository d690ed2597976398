"""The names a worker process's own files take next to the configured path.

With `serve --workers N` (N > 1), worker i writes its own audit trail and
listens on its own Unix socket, named from the configured path: the stem, then
`.w<i>`, then the suffix (`audit.jsonl` -> `audit.w1.jsonl`, `grpc.sock` ->
`grpc.w1.sock`). The server, the trail readers and the client all derive the
names here, so they cannot drift apart. Pure: names only, no file system.
"""

from __future__ import annotations

import re
from pathlib import Path


def worker_path(path: Path, index: int) -> Path:
    """Worker `index`'s file next to `path`: stem + `.w<index>` + suffix."""
    return path.with_name(f"{path.stem}.w{index}{path.suffix}")


def worker_name_pattern(path: Path) -> re.Pattern[str]:
    """Matches the file names of every worker's file next to `path` (group 1: the index)."""
    return re.compile(rf"{re.escape(path.stem)}\.w(\d+){re.escape(path.suffix)}")
