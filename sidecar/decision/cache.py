"""The decision cache: a repeated request skips validation and Cedar, never the audit.

Correctness first. An entry is keyed on everything its decision depends on:
the bundle revision (policies, schema and entities: a reload never serves an
old decision), the canonical request, the caller's identity (server-side
context and workload binding come from it) and, when the bundle's policies
read `context.now`, the value of `context.now`. So a cached decision is the
decision a fresh evaluation would give at the moment it is served.

Time. `context.now` has a granularity (`now_granularity_ms`, default 1000):
the server's clock is rounded down to it, so requests within one granule
share `now`, and their cache entry. Rounding never moves `now` back across
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
import re
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cachetools import LRUCache

from sidecar.core.model import AuthzRequest, Result, datetime_text

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# Fixed cost of an entry: key tuple, Entry, Result and its tuples, LRU links.
ENTRY_OVERHEAD = 1200
SIZE_FACTOR = 24


def to_ms(value: datetime) -> int:
    """Milliseconds since the epoch, rounded down (Cedar's datetime resolution)."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return EPOCH + ms * _MS


def effective_now_ms(
    real_ms: int, granularity_ms: int, not_before_ms: int | None, not_after_ms: int | None
) -> int:
    """`context.now` for a request: the clock rounded down to the granularity, but on
    the same side of the request's time bound as the clock itself. Never later
    than the clock; idempotent."""
    now = real_ms - real_ms % granularity_ms if granularity_ms > 1 else real_ms
    if not_before_ms is not None and not_before_ms <= real_ms:
        now = max(now, not_before_ms)
    if not_after_ms is not None and not_after_ms < real_ms:
        now = max(now, not_after_ms + 1)
    return now


def cedar_datetime(ms: int) -> dict[str, Any]:
    """A Cedar `datetime` value for an instant (as validate.py writes `context.now`)."""
    return {"__extn": {"fn": "datetime", "arg": datetime_text(from_ms(ms))}}


_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{3}))?(?:(Z)|([+-])(\d{2})(\d{2})))?"
)
_DURATION = re.compile(r"(-)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")
_DURATION_MS = (86_400_000, 3_600_000, 60_000, 1000, 1)
_I64 = 2**63


def datetime_text_ms(text: str) -> int | None:
    """Milliseconds of a string in Cedar's `datetime` grammar, else None.

    Exactly the five forms Cedar accepts: `YYYY-MM-DD`, then optionally
    `Thh:mm:ss`, `.SSS` and `Z` or `+hhmm`/`-hhmm` (offset under 24 hours).
    """
    m = _DATETIME.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, milli, _zulu, sign, oh, om = m.groups()
    if hour is not None and not (int(hour) < 24 and int(minute) < 60 and int(second) < 60):
        return None
    if sign is not None and not (int(oh) < 24 and int(om) < 60):
        return None
    try:
        date = datetime(int(year), int(month), int(day), tzinfo=UTC)
    except ValueError:
        return None
    ms = to_ms(date)
    if hour is not None:
        ms += ((int(hour) * 60 + int(minute)) * 60 + int(second)) * 1000 + int(milli or 0)
    if sign is not None:
        offset = (int(oh) * 60 + int(om)) * 60_000
        ms += -offset if sign == "+" else offset
    return ms


def duration_text_ms(text: str) -> int | None:
    """Milliseconds of a string in Cedar's `duration` grammar (`-1d2h3m4s5ms`), else None."""
    m = _DURATION.fullmatch(text)
    if m is None or not any(m.groups()[1:]):
        return None
    ms = sum(int(n) * unit for n, unit in zip(m.groups()[1:], _DURATION_MS, strict=True) if n)
    ms = -ms if m.group(1) else ms
    return ms if -_I64 <= ms < _I64 else None


def _extension(value: Any, fn: str) -> str | list[Any] | None:
    """The argument(s) of a call to extension `fn`, written either way Cedar's JSON
    allows (`{"__extn": {...}}`, or `{"fn": ...}` where the schema expects it), with
    exactly one of `arg` (a string) and `args` (a list); else None."""
    if isinstance(value, Mapping) and set(value) == {"__extn"}:
        value = value["__extn"]
    if not isinstance(value, Mapping) or value.get("fn") != fn or len(value) != 2:
        return None
    if isinstance(value.get("arg"), str):
        return str(value["arg"])
    args = value.get("args")
    return list(args) if isinstance(args, list) else None


def parse_cedar_datetime(value: Any) -> int | None:
    """Milliseconds of the instant Cedar would read from a `datetime` value, else None.

    Every form Cedar accepts where the schema expects a datetime: a string in
    Cedar's grammar; `datetime("...")` as `{"__extn": {"fn": "datetime", "arg"
    (or "args"): ...}}` or without `__extn`; and `offset(datetime, duration)`.
    Anything else, including forms Cedar reads ambiguously (both `arg` and
    `args`, extra keys), is None: callers refuse it or treat it as no bound.
    """
    if isinstance(value, str):
        return datetime_text_ms(value)
    arg = _extension(value, "datetime")
    if isinstance(arg, list):
        arg = arg[0] if len(arg) == 1 and isinstance(arg[0], str) else None
    if isinstance(arg, str):
        return datetime_text_ms(arg)
    args = _extension(value, "offset")
    if not isinstance(args, list) or len(args) != 2:
        return None
    start = parse_cedar_datetime(args[0]) if not isinstance(args[0], str) else None
    span = _extension(args[1], "duration")
    if isinstance(span, list):
        span = span[0] if len(span) == 1 and isinstance(span[0], str) else None
    delta = duration_text_ms(span) if isinstance(span, str) else None
    if start is None or delta is None or not -_I64 <= start + delta < _I64:
        return None
    return start + delta


def time_bound_ms(context: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The request's own time bound (`context.time_bound`), in milliseconds."""
    bound = context.get("time_bound")
    if not isinstance(bound, Mapping):
        return None, None
    return parse_cedar_datetime(bound.get("not_before")), parse_cedar_datetime(
        bound.get("not_after")
    )


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
