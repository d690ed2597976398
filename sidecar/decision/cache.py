"""The decision cache: a repeated request skips validation and Cedar, never the audit.

Correctness first. An entry is keyed on everything its decision depends on:
the bundle revision (policies, schema and entities: a reload never serves an
old decision), the canonical request, the caller's identity (server-side
context and workload binding come from it) and, when the bundle's policies
read `context.now`, the value of `context.now`. So a cached decision is the
decision a fresh evaluation would give at the moment it is served. A request
looked up by its raw bytes, before validation, has no `now` yet: its entry
keeps the `now` it was decided at (`Entry.now_ms`), and `lookup` serves it
only when this call's `now`, resolved from the entry's own time bound, is the
same.

The cache reads through (`read`): it looks the call up before validation (the
key, and a hit with this call's `now` resolved), hands the hit or the miss to
the evaluator below it (decision/evaluation.py: identity, validation, engine,
the decision's event), and stores a miss's decision with its event's template,
which hits are stamped from. With the cache off, `NoCache.read` hands every
call straight down, so the path is the same.

Time. `context.now` has a granularity (`now_granularity_ms`, default 1000):
validation rounds the server's clock down to it (core/validate.py
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
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cachetools import LRUCache

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.bundle import Bundle
from sidecar.core.event import CallMeta
from sidecar.core.index import WHOLE_CONTEXT
from sidecar.core.model import AuthzRequest, Result
from sidecar.core.validate import Limits, cedar_datetime, effective_now_ms, to_ms
from sidecar.decision.evaluation import Evaluator, Made, WindowItem

# Fixed cost of an entry: key tuple, Entry, Result and its tuples, LRU links.
ENTRY_OVERHEAD = 1200
SIZE_FACTOR = 24


# A key: ("wire", revision, request bytes, identity) or ("request", revision, text, identity).
Key = tuple[Any, ...]


def reads_now(bundle: Bundle) -> bool:
    """Whether the bundle's policies can read `context.now` (then it is part of the key)."""
    reads = bundle.context_reads
    return "now" in reads or WHOLE_CONTEXT in reads


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
    # The decision's audit event without this call's facts (core/event.py `template`),
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


@dataclass(slots=True)  # not frozen: built on every call, and a frozen one costs more
class Lookup:
    """What `lookup` found: the key (a miss fills it) and, on a hit, the decision to serve.

    On a hit, `request` is the entry's request as this call's (`now` resolved),
    `event` the entry's event template if any, and `now` this call's
    `context.now` when the key left it out (the hit's event records it).
    """

    key: Key
    hit: bool = False
    request: AuthzRequest | None = None
    result: Result | None = None
    event: Mapping[str, Any] | None = None
    now: Any = None


def _encoded_len(key: Key) -> int:
    """Length of the request's encoding inside a key (wire bytes or canonical text)."""
    return len(key[2]) if isinstance(key[2], bytes | str) else 4096


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

    def read(
        self,
        bundle: Bundle,
        msg: pb.AuthorizeRequest | None,
        asked: AuthzRequest | None,
        meta: CallMeta,
        below: Evaluator,
        *,
        limits: Limits | None,
        at: datetime,
        started: float,
        item: WindowItem | None = None,
    ) -> tuple[Made, bool]:
        """The decision of a call: a hit, or a miss made below and then stored.

        Returns it with whether the cache was asked (always, here; `NoCache`
        says no). The entry is the engine's decision even when the trail later
        refuses this call's event: every hit is audited anew.
        """
        found = self.lookup(
            bundle,
            msg,
            asked,
            meta.identity,
            at=at,
            granularity_ms=below.now_granularity_ms,
        )
        hit = found if found.hit else None
        made = below.make(
            bundle,
            msg,
            asked,
            meta,
            limits=limits,
            at=at,
            started=started,
            item=item,
            found=hit,
            filling=hit is None,
        )
        if hit is None:
            self.fill(found, bundle, made.request, made.result, made.template)
        return made, True

    def get(self, key: Hashable) -> Entry | None:
        with self._lock:
            return self._lru.get(key)

    def lookup(
        self,
        bundle: Bundle,
        msg: pb.AuthorizeRequest | None,
        asked: AuthzRequest | None,
        identity: str,
        *,
        at: datetime,
        granularity_ms: int,
    ) -> Lookup:
        """The key of a message as received (`msg`) or of a validated request (`asked`),
        and the decision to serve this call at `at`, if any.

        A raw key holds no `now`: this call's is resolved from the entry's own
        time bound (validation's rule); an entry decided at another `now` is a
        miss when the policies read it, else the hit's request and event carry
        this call's `now`. A request's key holds `now` only when the policies
        read it; otherwise the hit records this call's `now`.
        """
        if msg is not None:
            wire = msg.SerializeToString(deterministic=True)
            key: Key = ("wire", bundle.revision, wire, identity)
        else:
            assert asked is not None
            reads = reads_now(bundle)
            key = ("request", bundle.revision, canonical(asked, with_now=reads), identity)
        with self._lock:
            entry = self._lru.get(key)
        if entry is None:
            return Lookup(key)
        real_ms = to_ms(at)
        if not entry.servable(real_ms):
            return Lookup(key)
        if asked is not None:  # the request of this call, validated before the lookup
            now = asked.context.get("now") if not reads else None
            return Lookup(key, True, asked, entry.result, entry.event, now)
        request, now = entry.request, None
        if "now" in request.context:
            nb, na = request.not_before_ms, request.not_after_ms
            now_ms = effective_now_ms(real_ms, granularity_ms, nb, na)
            if reads_now(bundle):
                if entry.now_ms != now_ms:  # another `now`, maybe another decision
                    return Lookup(key)
            else:
                now = cedar_datetime(now_ms)
                context = {**request.context, "now": now}
                request = replace(request, context=context, now_ms=now_ms)
        return Lookup(key, True, request, entry.result, entry.event, now)

    def fill(
        self,
        found: Lookup,
        bundle: Bundle,
        request: AuthzRequest,
        result: Result,
        event: Mapping[str, Any] | None,
    ) -> None:
        """Store the decision a miss made, under the key `lookup` gave.

        `event` is the decision event's template (hits are stamped from it), or
        None. A raw key holds no `now`: when the policies read it, the entry
        keeps the one the request was decided at.
        """
        now_ms = request.now_ms if found.key[0] == "wire" and reads_now(bundle) else None
        size = entry_size(_encoded_len(found.key))
        entry = Entry(
            request, result, request.not_before_ms, request.not_after_ms, size, event, now_ms
        )
        self.put(found.key, bundle.revision, entry)

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


class NoCache:
    """The cache turned off: every call is made below, nothing is kept."""

    def read(
        self,
        bundle: Bundle,
        msg: pb.AuthorizeRequest | None,
        asked: AuthzRequest | None,
        meta: CallMeta,
        below: Evaluator,
        *,
        limits: Limits | None,
        at: datetime,
        started: float,
        item: WindowItem | None = None,
    ) -> tuple[Made, bool]:
        made = below.make(
            bundle,
            msg,
            asked,
            meta,
            limits=limits,
            at=at,
            started=started,
            item=item,
            found=None,
            filling=False,
        )
        return made, False
