"""Where audit events go. The decider calls `write` before answering.

`write` returns only once the event is recorded as durably as the sink
promises; any failure raises `AuditError`, and the decider then denies. A sink
also says whether it is healthy and tells watchers when that changes, so the
server can flip its gRPC health status. The file trail lives in
filesink.py and the stdout trail in stream.py (both on commit.py's group
commit); `open_sink` below picks one from the configured target, for callers
that only want a sink. It imports them when called: the decider and the test
runner import this module for the protocol, and need none of the trail's
machinery. A network sink would implement the same four members.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sidecar.core.errors import AuditError, ConfigError

if TYPE_CHECKING:
    from sidecar.audit.chain import Hasher
    from sidecar.audit.filesink import FileSink
    from sidecar.audit.stream import StreamSink

HealthWatcher = Callable[[bool, str], None]


class AuditSink(Protocol):
    def write(self, event: Mapping[str, Any]) -> None:
        """Record one event; raise AuditError if it cannot be recorded."""

    def close(self) -> None:
        """Flush and release; later writes raise AuditError."""

    @property
    def healthy(self) -> bool:
        """False while writes fail."""

    def watch(self, watcher: HealthWatcher) -> None:
        """Call `watcher(healthy, detail)` whenever health changes."""


@runtime_checkable
class DeferringSink(AuditSink, Protocol):
    """A sink that can also queue events for a committer of its own (commit.py).

    For callers that must not block while an event is written (the asyncio
    server's event loop with durability fsync): `enqueue` returns a ticket at
    once, and `when_done(ticket, callback)` calls `callback(error)` ("" when
    written) once it is committed. The decision is answered only after that,
    as `outcome(ticket)` says: as made, or as not recorded.
    """

    def enqueue(self, event: Mapping[str, Any]) -> Any:
        """Queue one event; raise AuditError if the trail is closed or it cannot be encoded."""

    def when_done(self, ticket: Any, callback: Callable[[str], object]) -> None:
        """Call `callback(error)` once the ticket's batch is committed (maybe right away)."""

    def outcome(self, ticket: Any) -> str:
        """Once `when_done` reported: "" if the ticket's event is in the trail, else why not.

        A failed commit leaves none of its events in the trail, and fails only
        its own tickets: events queued before or after it stand.
        """


class MemorySink:
    """Keeps events in a list: for unit tests and for the CLI's one-off checks."""

    def __init__(self) -> None:
        self.events: list[Mapping[str, Any]] = []
        self.fail_with: str | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._healthy = True
        self._watchers: list[HealthWatcher] = []

    @property
    def healthy(self) -> bool:
        return self._healthy

    def watch(self, watcher: HealthWatcher) -> None:
        self._watchers.append(watcher)

    def write(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            if self._closed:
                raise AuditError("audit sink is closed")
            failure = self.fail_with
            if failure is None:
                self.events.append(event)
        self._set_health(failure is None, failure or "")
        if failure is not None:
            raise AuditError(failure)

    def _set_health(self, healthy: bool, detail: str) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            for watcher in list(self._watchers):
                watcher(healthy, detail)

    def close(self) -> None:
        with self._lock:
            self._closed = True


class NullSink(MemorySink):
    """Accepts and drops events. Only for benchmarks (the 'trail off' baseline):
    no setting selects it, so the sidecar never answers without a trail."""

    def write(self, event: Mapping[str, Any]) -> None:
        if self._closed:
            raise AuditError("audit sink is closed")


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
    worker: int | None = None,
    workers: int | None = None,
) -> FileSink | StreamSink:
    """`-` is stdout; anything else the path of the trail's active file segment.

    With `workers` > 1, worker `worker` (0-based) writes a trail of its own,
    `audit.w<worker>.jsonl` next to `target` (and its own checkpoint file,
    `CP.w<worker>...`), listed first in the trail's manifest (workers.py), and
    every segment header says which worker and how many. With one worker the
    trail is `target`, as it always was.
    """
    from sidecar.audit.filesink import FileSink
    from sidecar.audit.pinning import CHECKPOINT_EVERY, CHECKPOINT_INTERVAL_S
    from sidecar.audit.stream import StreamSink
    from sidecar.audit.workers import chain_path, ensure_manifest
    from sidecar.core.workernames import worker_path

    path = chain_path(Path(target), worker, workers)  # ConfigError: a worker outside 0..N-1
    header: dict[str, int] = {}
    if path != Path(target):  # worker `worker` of `workers` > 1
        header = {"worker": worker or 0, "workers": workers or 0}
    if target == "-":
        if checkpoints is not None:
            raise ConfigError(
                "audit checkpoints pin a file trail: give --audit-file PATH (not -) with them"
            )
        return StreamSink(
            sys.stdout.buffer, hasher=hasher, durability=durability, header_fields=header
        )
    if header:
        ensure_manifest(Path(target), header["workers"], worker=header["worker"])  # first
        if checkpoints is not None:
            checkpoints = worker_path(checkpoints, header["worker"])
    return FileSink(
        path,
        hasher=hasher,
        durability=durability,
        rotate_bytes=rotate_bytes,
        rotate_age_s=rotate_age_s,
        checkpoints=checkpoints,
        checkpoint_every=checkpoint_every or CHECKPOINT_EVERY,
        checkpoint_interval_s=checkpoint_interval_s or CHECKPOINT_INTERVAL_S,
        header_fields=header,
    )
