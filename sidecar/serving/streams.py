"""AuthorizeStream slots: how many streams are open, whose, and for how long idle.

An open stream holds a worker thread on the sync server (and a slot on both),
so streams are bounded three ways:

- in total (`limit`, workers / 2), so unary calls keep their workers;
- per caller (`per_caller`), so one caller cannot take every slot: the caller
  is the authenticated identity (mutual TLS) when there is one, else the peer
  address without its port (`ipv4:10.0.0.7`; every Unix socket caller is
  `unix:`);
- in idle time (`idle_timeout_s`): a stream with no request in flight for
  that long is closed by the server with RESOURCE_EXHAUSTED saying so. Items
  the caller sent after that point are never decided, so a client may retry
  them (sidecar/client/ does, as unary calls).

A single reaper thread, running only while streams are open, closes idle
ones; the per-item cost on the stream is two lock round-trips and a clock read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def caller_key(peer: str, identity: str) -> str:
    """Who holds a stream: the authenticated identity, else the peer without its port."""
    if identity:
        return identity
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit():
            return host
    return peer


class Slot:
    """One open stream: `begin()`/`end()` around each item; `release()` once, at the end."""

    __slots__ = ("_busy", "_close", "_last", "_slots", "caller", "closed_idle")

    def __init__(self, slots: StreamSlots, caller: str, close: Callable[[str], object]) -> None:
        self._slots = slots
        self.caller = caller
        self._close = close
        self._busy = False
        self._last = time.monotonic()
        self.closed_idle = ""  # set by the reaper: why the server ends the stream

    def begin(self) -> bool:
        """An item arrived: False when the stream was closed as idle (do not decide it)."""
        with self._slots._lock:
            if self.closed_idle:
                return False
            self._busy = True
            return True

    def end(self) -> None:
        with self._slots._lock:
            self._busy = False
            self._last = time.monotonic()

    def release(self) -> None:
        self._slots._release(self)


class StreamSlots:
    def __init__(
        self, limit: int, per_caller: int, idle_timeout_s: float, metrics: Any = None
    ) -> None:
        self.limit = limit
        self.per_caller = min(per_caller, limit)
        self.idle_timeout_s = idle_timeout_s
        self._metrics = metrics
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the reaper's sleep, never notified
        self._open: set[Slot] = set()
        self._by_caller: dict[str, int] = {}
        self._reaper: threading.Thread | None = None

    def open(self, caller: str, close: Callable[[str], object]) -> Slot | str:
        """A slot for `caller`, or why there is none (for RESOURCE_EXHAUSTED).

        `close(details)` ends the stream from another thread (the reaper) with
        RESOURCE_EXHAUSTED and `details`.
        """
        with self._lock:
            held = self._by_caller.get(caller, 0)
            if len(self._open) >= self.limit:
                self._refused("total")
                return (
                    f"{self.limit} AuthorizeStream calls are open already, the limit "
                    "(workers / 2); retry later or use Authorize"
                )
            if held >= self.per_caller:
                self._refused("per_caller")
                return (
                    f"this caller ({caller}) has {held} AuthorizeStream calls open, its limit "
                    "(stream_max_per_caller); reuse one, close one or use Authorize"
                )
            slot = Slot(self, caller, close)
            self._open.add(slot)
            self._by_caller[caller] = held + 1
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, name="stepguard-stream-reaper", daemon=True
                )
                self._reaper.start()
        if self._metrics is not None:
            self._metrics.streams_open.inc()
        return slot

    def _refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.streams_refused.labels(reason=reason).inc()

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if slot not in self._open:
                return
            self._open.discard(slot)
            left = self._by_caller[slot.caller] - 1
            if left:
                self._by_caller[slot.caller] = left
            else:
                del self._by_caller[slot.caller]
        if self._metrics is not None:
            self._metrics.streams_open.dec()

    def _reap(self) -> None:
        """Close streams idle for `idle_timeout_s`; exits when none is open."""
        timeout = self.idle_timeout_s
        while True:
            idle: list[Slot] = []
            why = (
                f"AuthorizeStream idle for {timeout:g} s (stream_idle_timeout_s): closed by "
                "the server to free its slot; open a new stream when there is work"
            )
            with self._lock:
                if not self._open:
                    self._reaper = None
                    return
                now = time.monotonic()
                wait = timeout
                for slot in self._open:
                    if slot.closed_idle:
                        continue
                    due = slot._last + timeout
                    if not slot._busy and due <= now:
                        slot.closed_idle = why
                        idle.append(slot)
                    else:
                        wait = min(wait, max(due - now, 0.01))
            for slot in idle:
                if self._metrics is not None:
                    self._metrics.streams_idle_closed.inc()
                slot._close(why)
            with self._lock:
                if self._open:
                    self._wake.wait(wait)
