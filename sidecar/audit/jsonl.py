"""JSON-lines sinks: a file (appended, flushed per event) and stdout."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from sidecar.errors import AuditError


def encode(event: Mapping[str, Any]) -> bytes:
    """Canonical bytes of one event: sorted keys, no spaces, UTF-8, newline-terminated."""
    return (
        json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    ).encode()


class StreamSink:
    """Writes each event as one line and flushes before returning."""

    def __init__(self, stream: IO[bytes], *, owns: bool = False) -> None:
        self._stream = stream
        self._owns = owns
        self._lock = threading.Lock()
        self._closed = False

    def write(self, event: Mapping[str, Any]) -> None:
        line = encode(event)
        with self._lock:
            if self._closed:
                raise AuditError("audit trail is closed")
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError) as exc:
                raise AuditError(f"cannot write the audit trail: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self._stream.flush()
                    if self._owns:
                        self._stream.close()
                except (OSError, ValueError):
                    pass


def open_sink(target: str) -> StreamSink:
    """`-` is stdout; anything else a file path, opened for append."""
    if target == "-":
        return StreamSink(sys.stdout.buffer)
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return StreamSink(path.open("ab"), owns=True)
    except OSError as exc:
        raise AuditError(f"cannot open audit file {path}: {exc}") from exc
