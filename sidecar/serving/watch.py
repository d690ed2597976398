"""Hot reload: watch the policy directory, swap in a new bundle when it changes.

Polling, not inotify: it works the same on every filesystem and volume type,
and it sees through the ways files really change:

- Kubernetes ConfigMap volumes: each key is a symlink into `..data`, itself a
  symlink to a timestamped directory that the kubelet swaps in one rename.
  Files are read through the symlinks, so the swap is a content change.
- Editors that save by writing a new file and renaming it over the old one
  (vim, JetBrains): the inode changes, the content is what counts.

What counts is the content: each poll hashes the name and bytes of every file
the loader would see. A change is applied once it has held still for one
poll interval (so a half-written save or a file briefly missing during a
rename is never loaded), and only if the directory did not change while the
new bundle was built. A reload builds and validates a complete new bundle,
then swaps one reference (`BundleHolder.swap`): every request sees either the
old bundle or the new one, never a mix. A broken change is refused: the last
good bundle keeps serving, the error is logged with file and line, counted in
`stepguard_policy_reloads_total{result="failure"}`, flagged by
`stepguard_policy_reload_error` and reported by `status()` (health detail).
The same broken content is reported once, not on every poll. Any exception
from the loader is a refusal (not only `BundleError`): a forbid that fails to
load in an unexpected way must never leave health and metrics saying "ok".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.bundlefiles import fingerprint
from sidecar.core.errors import BundleError

log = logging.getLogger(__name__)


class Holder(Protocol):
    def current(self) -> Bundle: ...

    def swap(self, bundle: Bundle) -> None: ...


class ReloadMetrics(Protocol):
    """What the watcher reports to (sidecar.decision.metrics.Metrics has all of it)."""

    reloads: Any
    reload_error: Any

    def set_bundle(self, revision: str, policy_count: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """The watcher's view, for health detail: is the bundle in use what is on disk?"""

    directory: str
    revision: str  # the bundle in use
    ok: bool = True  # False while the files on disk are refused
    error: str = ""  # why they are refused, with file:line[:column]
    reloads: int = 0  # successful swaps
    failures: int = 0  # refused changes
    last_change: str = ""  # RFC 3339: when a change was last applied or refused

    def to_json(self) -> dict[str, Any]:
        return {
            "watching": True,
            "directory": self.directory,
            "revision": self.revision,
            "ok": self.ok,
            "error": self.error or None,
            "reloads": self.reloads,
            "failures": self.failures,
            "last_change": self.last_change or None,
        }


class PolicyWatcher:
    """Polls `directory` every `interval_s` seconds and reloads on change."""

    def __init__(
        self,
        directory: Path,
        holder: Holder,
        metrics: ReloadMetrics | None = None,
        *,
        interval_s: float = 1.0,
        loader: Callable[[Path], Bundle] = load_bundle,
        on_status: Callable[[ReloadStatus], None] | None = None,
    ) -> None:
        self._dir = directory
        self._holder = holder
        self._metrics = metrics
        self._interval = interval_s
        self._loader = loader
        self._on_status = on_status
        # None: nothing compared yet. The first stable poll re-loads once and finds
        # the same revision, so a change made while the server started is not missed.
        self._applied: str | None = None
        self._pending: str | None = None
        self._status = ReloadStatus(str(directory), holder.current().revision)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def status(self) -> ReloadStatus:
        with self._lock:
            return self._status

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="stepguard-policy-watch", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any surprise; serving goes on
                log.exception("policy watch: poll failed; still serving the last good bundle")

    def poll(self) -> ReloadStatus | None:
        """One look at the directory; returns the new status when something was decided."""
        seen = fingerprint(self._dir)
        if seen == self._applied:
            self._pending = None
            return None
        if seen != self._pending:  # changed since the last poll: let it settle first
            self._pending = seen
            return None
        self._pending = None
        try:
            bundle = self._loader(self._dir)
        except Exception as exc:  # noqa: BLE001 - whatever fails, the reload is refused
            if fingerprint(self._dir) != seen:
                return None  # changed while loading: look again next time
            self._applied = seen
            return self._refused(exc)
        if fingerprint(self._dir) != seen:
            return None
        self._applied = seen
        current = self._holder.current()
        if bundle.revision == current.revision:
            return self._cleared() if not self.status().ok else None
        self._holder.swap(bundle)
        return self._swapped(current, bundle)

    def _swapped(self, old: Bundle, new: Bundle) -> ReloadStatus:
        log.info(
            "policies reloaded from %s: revision %s -> %s (%d policies)",
            self._dir,
            old.revision[:12],
            new.revision[:12],
            new.policy_count,
        )
        if self._metrics is not None:
            self._metrics.set_bundle(new.revision, new.policy_count)
            self._metrics.reloads.labels(result="success").inc()
            self._metrics.reload_error.set(0)
        current = self.status()
        return self._publish(
            replace(
                current,
                revision=new.revision,
                ok=True,
                error="",
                reloads=current.reloads + 1,
                last_change=_now(),
            )
        )

    def _refused(self, exc: Exception) -> ReloadStatus:
        if not isinstance(exc, BundleError):  # a loader bug or a library's surprise
            exc = BundleError(f"cannot be loaded: {type(exc).__name__}: {exc}")
        where = _located(self._dir, exc)
        log.error(
            "policy reload refused, still serving revision %s: %s",
            self._holder.current().revision[:12],
            where,
        )
        if self._metrics is not None:
            self._metrics.reloads.labels(result="failure").inc()
            self._metrics.reload_error.set(1)
        current = self.status()
        return self._publish(
            replace(
                current, ok=False, error=where, failures=current.failures + 1, last_change=_now()
            )
        )

    def _cleared(self) -> ReloadStatus:
        """The files on disk went back to what is serving: no swap, no longer in error."""
        log.info("policy files match the bundle in use again; reload error cleared")
        if self._metrics is not None:
            self._metrics.reload_error.set(0)
        return self._publish(replace(self.status(), ok=True, error="", last_change=_now()))

    def _publish(self, status: ReloadStatus) -> ReloadStatus:
        """Tell the server (gRPC policy health) first, then show the status to readers.

        Whoever sees a change in `status()` (healthz, the tests) then also sees
        the health it sets: never a counted failure with the health still SERVING.
        Only the watcher's thread writes the status.
        """
        if self._on_status is not None:
            self._on_status(status)
        with self._lock:
            self._status = status
        return status


def _located(directory: Path, exc: BundleError) -> str:
    """The refusal with the most precise place known (file:line:column when found)."""
    from sidecar.core.problems import check_directory

    try:
        _, problems = check_directory(directory)
    except Exception:  # noqa: BLE001 - the loader's own message is good enough
        return str(exc)
    if not problems:
        return str(exc)
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"{first.where}: {first.message}{more}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
