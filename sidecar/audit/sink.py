"""Where audit events go. The decider calls `write` before answering.

`write` returns only once the event is recorded as durably as the sink
promises; any failure raises `AuditError`, and the decider then denies.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

from sidecar.errors import AuditError


class AuditSink(Protocol):
    def write(self, event: Mapping[str, Any]) -> None:
        """Record one event; raise AuditError if it cannot be recorded."""

    def close(self) -> None:
        """Flush and release; later writes raise AuditError."""


class MemorySink:
    """Keeps events in a list: for unit tests and for the CLI's one-off checks."""

    def __init__(self) -> None:
        self.events: list[Mapping[str, Any]] = []
        self.fail_with: str | None = None
        self._lock = threading.Lock()
        self._closed = False

    def write(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            if self._closed:
                raise AuditError("audit sink is closed")
            if self.fail_with is not None:
                raise AuditError(self.fail_with)
            self.events.append(event)

    def close(self) -> None:
        with self._lock:
            self._closed = True
