"""The decision cache: a repeated request skips validation and Cedar, never the audit.

Correctness first. An entry is keyed on everything its decision depends on:
the bundle revision (policies, schema and entities: a reload never serves an
old decision), the canonical request, the caller's identity (server-side
context and workload binding come from it) and, when the bundle's policies
read `context.now`, the value of `context.now`. So a cached decision is the
decision a fresh evaluation would give at the moment it is served. A request
looked up by its raw bytes, before validation, has no `now` yet: its entry
keeps the `now` it was decided at (`Entry.now_ms`), and the decider serves it
only when this call's `now`, resolved from the entry's own time bound, is the
same (decision/decider.py).

Time. `context.now` has a granularity (`now_granularity_ms`, default 1000):
validation rounds the server's clock down to it (core/model.py
`effective_now_ms`), so requests within one granule share `now`, and their
cache entry. Rounding never moves `now` back across
the request's own time bound: when the clock is already past `not_before` (or
past `not_after`), `now` is at least `not_before` (at least `not_after` plus
1 ms), so a step outside its bound always sees a `now` outside it. The same
rounding applies with the cache off, so turning the cache on never changes a
decision (tests/decision/test_cache_stateful.py). On top of that a cached ALLOW is
served only while the real clock is inside the request's time bound;
otherwise the request is evaluated again.

Bounds. Entries are limited in number and in estimated bytes (each entry
costs at least `max_bytes / max_entries`, so both limits hold); the least
recently used entry goes first. Entries of other revisions are dropped when
a new revision is first stored.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from sidecar.core.model import AuthzRequest, Result

# Fixed cost of an entry: key tuple, Entry, Result and its tuples, LRU links.
ENTRY_OVERHEAD = 1200
SIZE_FACTOR = 24


def canonical(request: AuthzRequest, *, with_now: bool) -> str:
    """One text per request: sorted keys; `context.now` left out unless it matters."""
    context = request.context
    if not with_now and "now" in context:
        context = {k: v for k, v in context.items() if k != "now"}
    return json.dumps(
        [
            request.principal.type,
            request.principal.id,
            request.action.type,
            request.action.id,
            request.resource.type,
            request.resource.id,
            context,
            [e.to_json() for e in request.entities],
        ],
        sort_keys=True,
        separators=(",", ":"),
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """A decision and the validated request it answered (audited again on every hit)."""

    request: AuthzRequest
    result: Result
    not_before_ms: int | None
    not_after_ms: int | None
    size: int
    # The decision's audit event without this call's facts (audit/event.py `template`),
    # when hits may be stamped from it; else each hit builds its event anew.
    event: Mapping[str, Any] | None = None
    # The `context.now` it was decided at, when the policies read it and the key
    # (raw request bytes) does not hold it: a hit must resolve the same `now`.
    now_ms: int | None = None

    def servable(self, real_ms: int) -> bool:
        """An ALLOW is served only while the clock is inside the request's time bound."""
        if not self.result.allowed:
            return True
        if self.not_before_ms is not None and real_ms < self.not_before_ms:
            return False
        return not (self.not_after_ms is not None and real_ms > self.not_after_ms)


def entry_size(encoded_len: int) -> int:
    """Estimated bytes of an entry whose request encodes to `encoded_len` bytes.

    A validated request's Python objects take 11 to 19 times its protobuf
    encoding (measured on the example requests: nested dicts, strings, Cedar
    JSON wrappers); the key holds the encoding itself. Counting 24 times, plus
    a fixed part for the key tuple, Entry, Result and LRU links, keeps the
    estimate above the real size (tests/decision/test_cache.py checks it), so
    `max_bytes` bounds real memory. Walking the objects would be exact but
    costs as much as validating the request again.
    """
    return ENTRY_OVERHEAD + SIZE_FACTOR * encoded_len


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    max_entries: int
    max_bytes: int


class DecisionCache:
    """A thread-safe LRU of decisions, bounded in entries and in estimated bytes."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a decision cache needs room for at least one entry")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        floor = -(-max_bytes // max_entries)  # each entry counts at least this much

        def charge(entry: Entry) -> int:
            return max(entry.size, floor)

        self._lru: LRUCache[Hashable, Entry] = LRUCache(maxsize=max_bytes, getsizeof=charge)
        self._lock = threading.Lock()
        self._revision = ""

    def get(self, key: Hashable) -> Entry | None:
        with self._lock:
            return self._lru.get(key)

    def put(self, key: Hashable, revision: str, entry: Entry) -> None:
        """Store an entry; a new revision first drops the entries of the old ones."""
        with self._lock:
            if revision != self._revision:
                self._lru.clear()
                self._revision = revision
            if self._lru.getsizeof(entry) <= self.max_bytes:
                self._lru[key] = entry

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                len(self._lru), int(self._lru.currsize), self.max_entries, self.max_bytes
            )
