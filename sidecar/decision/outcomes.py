"""Outcomes: look up the decision an outcome follows, flag violations, record, count.

The transports (gRPC servicer, AuthZEN) convert the input into the model
(sidecar/core/outcome.py) and call `OutcomeRecorder.record`. The request path
of decisions (decider.py) is left as it is: the sidecar learns the decisions
it makes from the trail's own events, through `IndexingSink`, which the
server puts between the decider and the trail.

Where a decision is looked for, in order:

1. `DecisionIndex`: the decisions this process made, the newest
   `DEFAULT_INDEX_ENTRIES` of them at least (up to an eighth more between two
   trims; a few small references each).
2. `TrailLookup`: the trail files in the configured trail's directory, every
   chain there whose name starts like the configured one's (`audit` for
   `audit.jsonl`: other workers' `audit.w<i>.jsonl`, the trail before a
   restart), newest segment first, at most `DEFAULT_SEGMENTS` segments per
   chain and `DEFAULT_SCAN_BYTES` read in all per lookup (each segment from
   its end: decisions are appended in time order); a segment last written
   before the decision was made (its UUIDv7 says when) is not read, nor the
   older ones of its chain. One lookup runs at a time.

Only when neither holds the id is the outcome flagged `decision_unknown`.

A report the client gave a `report_id` is recorded once per (caller identity,
report_id) while the recorder remembers it (`DEFAULT_REPORTS`, the newest,
oldest dropped first; only reports whose events the trail took; lost on
restart; each worker process its own): sent again, it gets the first answer and
writes nothing; the same id with another report is refused (`ReportIdReused`).
Keyed by the caller's identity, so one caller cannot suppress another's report
by sending its id first.

A report is remembered only once the trail took it, and a resend comes exactly
when the trail is slow (the client's deadline passed while the first copy was
being written). So the call writing a report first claims its key (`_claim`:
one lock, never held while writing or waiting) and lets go only after
remembering it or failing. A resend that finds the key claimed waits for the
claim to go, then looks again: remembered (the first answer, or
`ReportIdReused`; nothing written), or not (the trail refused the first copy:
it claims and records the report itself). A batch writes its own reports
first, lets go of their claims, then waits for those another call holds: no
call waits while holding a claim, so no two wait for each other. A wait is
bounded (`DEFAULT_REPORT_WAIT_S`); on an event loop's thread there is none, as
it would hold every call on the loop. A report still claimed then is answered
as a trail that cannot take it is (AuditError: UNAVAILABLE; send it again),
and nothing is written for it. A report without an id claims nothing.

Over 500 lines: where a decision is looked for (the index, the trail files)
and what an outcome is judged and recorded against it belong together; the
lookup's bounds above are the recorder's, and the reports' memory and claims
are how it records each report once.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import mmap
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from sidecar.audit.commit import encode_event
from sidecar.audit.files import open_read
from sidecar.audit.redact import Redactor
from sidecar.audit.segments import collect
from sidecar.audit.sink import AuditSink
from sidecar.core.errors import AuditError, InvalidRequest, StepguardError
from sidecar.core.event import CallMeta, build_outcome_event, timestamp
from sidecar.core.ids import DecisionIds
from sidecar.core.model import EntityUid
from sidecar.core.outcome import DecisionFacts, Outcome, judge
from sidecar.core.validate import datetime_text_ms, parse_cedar_datetime, to_ms
from sidecar.decision.identity import binding_refusal
from sidecar.decision.metrics import Metrics, observe_many

DEFAULT_INDEX_ENTRIES = 65_536
# Reports remembered by (caller identity, report_id): about 470 bytes each (tracemalloc,
# the benchmark's outcomes), so about 7 MiB when full; a resend comes seconds after
# its first send, and 16,384 is over 10 s of a worker's outcomes.
DEFAULT_REPORTS = 16_384
# How long a report waits for another call writing the same report (module doc): the
# Python clients' default deadline (client/decisions.py, DEFAULT_TIMEOUT_S), after which
# the caller has usually given up and will send it again. The trail has no write
# timeout of its own: a write that fails does so at once, one that hangs hangs.
DEFAULT_REPORT_WAIT_S = 2.0
DEFAULT_SEGMENTS = 4
DEFAULT_SCAN_BYTES = 256 * 1024 * 1024
# A segment's mtime may trail the write of its last line by this much (coarse clocks).
_MTIME_SLACK_MS = 2_000

# What the index keeps of a decision event: references into the event, no copies.
_Held = tuple[Any, ...]


class DecisionIndex:
    """The newest decisions this process made, by id (bounded, oldest dropped first)."""

    def __init__(self, max_entries: int = DEFAULT_INDEX_ENTRIES) -> None:
        self.max_entries = max_entries
        # Trimmed in batches, once it holds an eighth more than it keeps.
        self._high = max_entries + max(1, max_entries // 8)
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()

    def note(self, event: Mapping[str, Any]) -> None:
        """Remember a decision event the trail accepted (any other record is ignored).

        On the decision path: a few references and one dict insert (atomic
        under the GIL, so no lock), no parsing; the oldest are dropped in
        batches.
        """
        get = event.get
        if get("kind") != "decision":
            return
        ctx = get("context")
        held = self._held
        held[event["id"]] = (  # _held, inlined: this runs once per decision
            get("decision"),
            ctx.get("time_bound") if type(ctx) is dict else None,
            get("obligations"),
            get("principal"),
            get("action"),
            get("resource"),
            get("policy_revision"),
            get("workflow_id"),
            get("run_id"),
            get("step_id"),
            get("caller"),
        )
        if len(held) > self._high:
            self._trim()

    def _trim(self) -> None:
        with self._lock:
            held = self._held
            excess = len(held) - self.max_entries
            if excess > 0:  # one C-level pass: no other thread runs in between
                for key in list(itertools.islice(held, excess)):
                    held.pop(key, None)

    def get(self, decision_id: str) -> DecisionFacts | None:
        held = self._held.get(decision_id)
        return None if held is None else _facts(held)

    def facts_for(self, outcome: Outcome) -> DecisionFacts | None:
        """`get(outcome.decision_id)` with only the facts judging `outcome` reads: the
        time bound's start when the outcome says when it started, the credential TTL
        when its effect has a credential (else None: `judge` reads neither then). Fewer
        of the decision's objects read, once per outcome; the rest as `get` has them."""
        held = self._held.get(outcome.decision_id)
        if held is None:
            return None
        effect = outcome.effect
        return _facts(
            held,
            started=outcome.started_at is not None,
            credential=effect is not None and effect.credential is not None,
        )

    def __contains__(self, decision_id: object) -> bool:
        """Whether the index holds this decision (no facts built: a dict lookup)."""
        return decision_id in self._held

    def holds_all(self, decision_ids: Iterable[str]) -> bool:
        """Whether the index holds every one of these decisions: `in` for each, in one
        C-level pass (no Python call per id: a batch's items are checked before it is
        recorded inline)."""
        return all(map(self._held.__contains__, decision_ids))

    def __len__(self) -> int:
        return len(self._held)


def facts_of(event: Mapping[str, Any]) -> DecisionFacts:
    """A decision event's facts (read back from a trail file)."""
    return _facts(_held(event))


def _held(event: Mapping[str, Any]) -> _Held:
    ctx = event.get("context")
    return (
        event.get("decision"),
        ctx.get("time_bound") if type(ctx) is dict else None,
        event.get("obligations"),
        event.get("principal"),
        event.get("action"),
        event.get("resource"),
        event.get("policy_revision"),
        event.get("workflow_id"),
        event.get("run_id"),
        event.get("step_id"),
        event.get("caller"),
    )


def _facts(held: _Held, *, started: bool = True, credential: bool = True) -> DecisionFacts:
    """The facts of a decision the index holds; without `started`, no `not_before_ms`,
    without `credential`, no `max_credential_ttl_s` (`DecisionIndex.facts_for`)."""
    (
        decision,
        bound,
        obligations,
        principal,
        action,
        resource,
        revision,
        workflow,
        run,
        step,
        caller,
    ) = held
    # Once per outcome: plain dicts (what events hold) are told apart by type, not by
    # the slower ABC check, which still catches any other mapping.
    nb = na = None
    if type(bound) is dict or isinstance(bound, Mapping):
        value = bound.get("not_before") if started else None
        if value is not None:  # absent: no bound (`_bound_ms(None)` is None)
            nb = _bound_ms(value)
        value = bound.get("not_after")
        if value is not None:
            na = _bound_ms(value)
    ttl = (
        obligations.get("max_credential_ttl_s")
        if credential and (type(obligations) is dict or isinstance(obligations, Mapping))
        else None
    )
    if type(caller) is dict:  # `_identity_in`, inlined for what events hold
        identity = caller.get("identity")
        if not isinstance(identity, str):
            identity = ""
    else:
        identity = _identity_in(caller)
    return DecisionFacts(  # positional, in the field order: the keywords cost a lookup each
        decision if decision in ("ALLOW", "DENY") else "DENY",  # a tuple: any value compares
        nb,
        na,
        float(ttl) if isinstance(ttl, int | float) else None,
        principal,
        action,
        resource,
        revision if isinstance(revision, str) else "",
        workflow if isinstance(workflow, str) else "",
        run if isinstance(run, str) else "",
        step if isinstance(step, str) else "",
        identity,
    )


# A run's steps share its time bound: each datetime text is read once (pure, bounded).
_text_ms = functools.lru_cache(maxsize=4096)(datetime_text_ms)


def _bound_ms(value: Any) -> int | None:
    """`parse_cedar_datetime`, with the forms a decision event records (a string, or
    `{"__extn": {"fn": "datetime", "arg": "..."}}`) read through `_text_ms`."""
    if type(value) is str:
        return _text_ms(value)
    if type(value) is dict and len(value) == 1:
        inner = value.get("__extn")
        if type(inner) is dict and len(inner) == 2 and inner.get("fn") == "datetime":
            arg = inner.get("arg")
            if type(arg) is str:
                return _text_ms(arg)
    return parse_cedar_datetime(value)


def _identity_in(caller: Any) -> str:
    """The identity an event's `caller` recorded ("" when none, or removed by redaction)."""
    if type(caller) is dict or isinstance(caller, Mapping):
        identity = caller.get("identity")
        return identity if isinstance(identity, str) else ""
    return ""


class IndexingSink:
    """A sink that notes each decision event it writes in a `DecisionIndex`.

    Everything else is the wrapped sink's (`wrap` keeps its deferring
    interface when it has one): the decider sees the same trail.
    """

    def __init__(self, inner: AuditSink, index: DecisionIndex) -> None:
        self.inner = inner
        self.index = index
        self._write = inner.write
        self._note = index.note

    def write(self, event: Mapping[str, Any]) -> None:
        self._write(event)
        self._note(event)

    def close(self) -> None:
        self.inner.close()

    @property
    def healthy(self) -> bool:
        return bool(getattr(self.inner, "healthy", True))

    def watch(self, watcher: Callable[[bool, str], None]) -> None:
        self.inner.watch(watcher)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _IndexingDeferringSink(IndexingSink):
    """An `IndexingSink` over a sink that queues (sink.DeferringSink)."""

    def enqueue(self, event: Mapping[str, Any]) -> Any:
        ticket = self.inner.enqueue(event)  # type: ignore[attr-defined]
        self.index.note(event)  # a refused commit answers under another id: harmless here
        return ticket

    def when_done(self, ticket: Any, callback: Callable[[str], object]) -> None:
        self.inner.when_done(ticket, callback)  # type: ignore[attr-defined]

    def outcome(self, ticket: Any) -> str:
        return str(self.inner.outcome(ticket))  # type: ignore[attr-defined]


def trail_lookup(audit_file: str) -> TrailLookup | None:
    """The lookup for a configured trail (`-`, stdout: none): its directory, and the
    chains named like it (`audit.jsonl`: `audit*`)."""
    if audit_file == "-":
        return None
    path = Path(audit_file)
    return TrailLookup(path.parent, prefix=path.name.split(".", 1)[0])


def indexing(sink: AuditSink, index: DecisionIndex) -> IndexingSink:
    """`sink`, noting its decision events in `index`; deferring when `sink` is."""
    if all(callable(getattr(sink, m, None)) for m in ("enqueue", "when_done", "outcome")):
        return _IndexingDeferringSink(sink, index)
    return IndexingSink(sink, index)


def decision_ms(decision_id: str) -> int:
    """When a UUIDv7 decision id was made (ms since the epoch); 0 when it is no UUIDv7."""
    hexid = decision_id.replace("-", "")
    if len(hexid) != 32 or hexid[12] != "7":
        return 0
    return int(hexid[:12], 16)


class TrailLookup:
    """Find a decision event in the trail files of a directory (bounds: module doc)."""

    def __init__(
        self,
        directory: Path,
        *,
        prefix: str = "",
        max_segments: int = DEFAULT_SEGMENTS,
        max_bytes: int = DEFAULT_SCAN_BYTES,
    ) -> None:
        self.directory = directory
        self.prefix = prefix  # only chains whose file name starts with it
        self.max_segments = max_segments
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def find(self, decision_id: str) -> DecisionFacts | None:
        needle = b'"id":"%s"' % decision_id.encode()
        made_ms = decision_ms(decision_id)
        with self._lock:
            try:
                trails = collect([self.directory])
            except (OSError, StepguardError):
                return None
            budget = self.max_bytes
            for trail in trails:
                if not Path(trail.name).name.startswith(self.prefix):
                    continue
                for path in reversed(trail.segments[-self.max_segments :]):
                    if budget <= 0:
                        return None
                    try:
                        if made_ms and path.stat().st_mtime * 1000 < made_ms - _MTIME_SLACK_MS:
                            break  # written before the decision: so were the older ones
                        found, scanned = _search(path, needle, decision_id, budget)
                    except (OSError, StepguardError, ValueError):
                        continue  # unreadable or vanished (rotated away): look on
                    budget -= scanned
                    if found is not None:
                        return facts_of(found)
        return None


def _search(
    path: Path, needle: bytes, decision_id: str, budget: int
) -> tuple[dict[str, Any] | None, int]:
    """The decision event with this id in the last `budget` bytes of `path`, and the
    bytes scanned. Searched from the end (the newest records) with a memory map."""
    with open_read(path) as f:
        size = f.seek(0, 2)
        if size == 0:
            return None, 0
        start = max(0, size - budget)
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
            end = size
            while True:
                at = mm.rfind(needle, start, end)
                if at < 0:
                    return None, size - start
                line_start = mm.rfind(b"\n", 0, at) + 1
                line_end = mm.find(b"\n", at)
                if line_end < 0:  # a line still being written
                    end = at
                    continue
                try:
                    record = orjson.loads(mm[line_start:line_end])
                except orjson.JSONDecodeError:
                    record = None
                if (
                    isinstance(record, dict)
                    and record.get("kind") == "decision"
                    and record.get("id") == decision_id
                ):
                    return record, size - start
                end = at  # the id in another field (a principal named like it): look on


class ReportIdReused(InvalidRequest):
    """A report_id this caller already used for another report (its field path is
    `report_id`; a batch's answer names the item's, `items[3].report_id`)."""

    def __init__(self, field: str = "report_id") -> None:
        super().__init__(
            field,
            "was already used for another report (another decision_id, status, "
            "error_class, effect, times or attempt): a report_id names one report; "
            "send a new one for a new report",
        )


@dataclass(slots=True)  # not frozen: one per outcome (as core/outcome.Effect)
class Recorded:
    """What `record` wrote: the outcome's own event id, and what it was judged."""

    outcome_id: str
    decision_id: str
    decision: str  # "ALLOW", "DENY", or "" when no decision was found
    violation: str  # "" when none
    reason: str


# A remembered report: its answer's fields (Recorded's, in order) and the report's
# fingerprint. Strings and ints only, so the collector stops tracking it: thousands
# kept alive must not make every older-generation collection walk them.
_Remembered = tuple[str, str, str, str, str, int]


def _fingerprint(outcome: Outcome) -> int:
    """What a report sent again under the same id is compared with: a hash of every
    field of the report (two different reports agree with odds of 2**-64)."""
    e = outcome.effect
    c = e.credential if e is not None else None
    return hash(
        (
            outcome.decision_id,
            outcome.status,
            outcome.error_class,
            outcome.started_at,
            outcome.finished_at,
            outcome.attempt,
            None
            if e is None
            else (
                e.identity,
                e.target_system,
                e.entitlements_added,
                e.entitlements_removed,
                e.account,
                None if c is None else (c.id, c.change, c.issued_at, c.expires_at),
            ),
        )
    )


def _remembered(recorded: Recorded, outcome: Outcome) -> _Remembered:
    return (
        recorded.outcome_id,
        recorded.decision_id,
        recorded.decision,
        recorded.violation,
        recorded.reason,
        _fingerprint(outcome),
    )


def _answer(prior: _Remembered, outcome: Outcome) -> Recorded | ReportIdReused:
    """The first answer to a report sent again, or the refusal of another report under
    its id."""
    if prior[5] != _fingerprint(outcome):
        return ReportIdReused()
    return Recorded(prior[0], prior[1], prior[2], prior[3], prior[4])


# A claim on reports being written (`OutcomeRecorder._claim`): a lock its call holds
# from the claim until it has written and remembered them, that waiters acquire with a
# timeout and release at once. A Lock, not an Event: made for every call that records
# a report with an id, and an Event costs 1.5 us to make, a Lock 0.1 us.
_Latch = threading.Lock


def _held_latch() -> _Latch:
    latch = threading.Lock()
    latch.acquire()
    return latch


class _Claims:
    """One call's claims: its latch (made at its first claim), the keys it holds, and
    the reports another call holds (their slots in the batch's answer, their latches)."""

    __slots__ = ("keys", "latch", "waits")

    def __init__(self) -> None:
        self.latch: _Latch | None = None
        self.keys: list[tuple[str, str]] = []
        self.waits: list[tuple[int, _Latch]] = []


# A batch's slot for a report another call is writing, until it is answered.
_IN_FLIGHT = AuditError("the same report is being written by another call")


class OutcomeRecorder:
    """Judge and record outcomes into the trail; count them."""

    def __init__(
        self,
        sink: AuditSink,
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        index: DecisionIndex,
        trail: TrailLookup | None = None,
        redactor: Redactor | None = None,
        audit_note: str = "",
        bind_workload_identity: bool = False,
        max_reports: int = DEFAULT_REPORTS,
        report_wait_s: float = DEFAULT_REPORT_WAIT_S,
    ) -> None:
        self._sink = sink
        self._bind = bind_workload_identity
        # Decisions record their caller redacted: a reporter is compared in that form.
        self._redacts_caller = redactor is not None and redactor.touches(("caller",))
        self._audit_note = audit_note  # as in decision events (a fixed clock says so)
        self._metrics = metrics
        self._clock = clock
        self.index = index
        self.trail = trail
        self._redactor = redactor
        self._ids = DecisionIds()
        self._counted: dict[tuple[str, str], Any] = {}
        # Reports by (caller identity, report_id), oldest first; trimmed in batches.
        self._reports: dict[tuple[str, str], _Remembered] = {}
        self.max_reports = max_reports
        self._reports_high = max_reports + max(1, max_reports // 8)
        self._reports_lock = threading.Lock()
        # Reports being written, by the same key, to their writer's latch (`_claim`).
        self._inflight: dict[tuple[str, str], _Latch] = {}
        self._inflight_lock = threading.Lock()  # never held while writing or waiting
        self.report_wait_s = report_wait_s
        self.waiting = 0  # calls now waiting for another's report (tests, debugging)

    def lookup(self, decision_id: str) -> DecisionFacts | None:
        facts = self.index.get(decision_id)
        if facts is None and self.trail is not None:
            facts = self.trail.find(decision_id)
        return facts

    def record(self, outcome: Outcome, meta: CallMeta) -> Recorded:
        """Write the outcome's event; raise AuditError when the trail cannot take it
        (the outcome is then not recorded and the caller should report it again)."""
        started = time.perf_counter()
        report_id = outcome.report_id
        if not report_id:  # nothing to remember it by: no claim either
            return self._write_one(outcome, meta, started, None)
        key = (meta.identity, report_id)
        prior = self._reports.get(key)
        if prior is None:  # ours to write, unless another call is writing it (module doc)
            claims = _Claims()
            deadline = 0.0
            while (got := self._claim(key, claims)) is not None:
                if isinstance(got, tuple):  # remembered: written by the call waited for
                    prior = got
                    break
                deadline = deadline or self._wait_deadline()
                self._wait_for(got, deadline)
            else:  # claimed: written here
                try:
                    return self._write_one(outcome, meta, started, key)
                finally:
                    self._release(claims)
        answer = _answer(prior, outcome)  # recorded already: the first answer, nothing written
        if isinstance(answer, ReportIdReused):
            raise answer
        return answer

    def _write_one(
        self,
        outcome: Outcome,
        meta: CallMeta,
        started: float,
        key: tuple[str, str] | None,
    ) -> Recorded:
        """Judge and write one outcome; remember it under `key` (claimed by this call),
        if any, once the trail took it."""
        at = self._clock()
        event, recorded = self._judged(outcome, meta, self._ids.next(), at, timestamp(at))
        self._sink.write(event)
        if key is not None:
            self._remember({key: _remembered(recorded, outcome)})
        self._counter(outcome.status, recorded.violation).inc()
        self._metrics.outcome_seconds.observe(time.perf_counter() - started)
        return recorded

    def _claim(self, key: tuple[str, str], claims: _Claims) -> _Remembered | _Latch | None:
        """The report remembered under `key`; else None once `claims` holds it (this
        call writes it, and lets go after remembering it: `_release`); else the latch
        of the call that holds it, to wait for (`_wait_for`) and look again."""
        with self._inflight_lock:
            prior = self._reports.get(key)  # a claim is let go only after remembering
            if prior is not None:
                return prior
            latch = claims.latch
            other = self._inflight.get(key)
            if other is not None and other is not latch:
                return other
            if latch is None:
                latch = claims.latch = _held_latch()
            self._inflight[key] = latch
        claims.keys.append(key)
        return None

    def _wait_deadline(self) -> float:
        """Until when a call waits for reports another call is writing: `report_wait_s`
        from now; now on an event loop's thread (grpc.aio records an outcome inline
        there), where a wait would hold every other call on the loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return time.monotonic() + self.report_wait_s
        return time.monotonic()

    def _wait_for(self, other: _Latch, deadline: float) -> None:
        """Wait until the call holding `other` lets go of its claims; AuditError when it
        still holds them at `deadline` (the report is not recorded by this call)."""
        with self._inflight_lock:
            self.waiting += 1
        try:
            left = deadline - time.monotonic()
            if not (other.acquire(timeout=left) if left > 0 else other.acquire(False)):
                raise AuditError(
                    "the same report (its report_id) is still being written by another "
                    "call; not recorded by this one: send it again"
                )
            other.release()  # it was only a signal: the next waiter takes it in turn
        finally:
            with self._inflight_lock:
                self.waiting -= 1

    def _release(self, claims: _Claims) -> None:
        """Let go of this call's claims (after remembering what the trail took): the
        calls waiting for them look again."""
        latch = claims.latch
        if latch is None:
            return
        inflight = self._inflight
        with self._inflight_lock:
            for key in claims.keys:
                if inflight.get(key) is latch:
                    del inflight[key]
        latch.release()

    def _remember(self, reports: dict[tuple[str, str], _Remembered]) -> None:
        """Remember reports whose events the trail took (a dict update: atomic under
        the GIL); the oldest are dropped in batches."""
        held = self._reports
        held.update(reports)
        if len(held) > self._reports_high:
            with self._reports_lock:
                excess = len(held) - self.max_reports
                if excess > 0:
                    for key in list(itertools.islice(held, excess)):
                        held.pop(key, None)

    def record_many(
        self, outcomes: Sequence[Outcome], meta: CallMeta
    ) -> list[Recorded | Exception]:
        """Judge each outcome as `record` does and write their events in order, in one
        trail commit when the sink can. Per outcome: what was recorded, or the error
        that kept it out (an AuditError when the trail could not take the batch: none
        of it is recorded then; any other error stays with its own outcome).

        What a batch shares is the commit (one write for the chained lines), the
        time it was received (its events' `time`, and when a step that says no
        time of its own is taken to have run) and the call's bookkeeping (its ids
        drawn together, its counts added once per kind); each outcome is still
        looked up, judged, redacted, encoded and chained on its own, with its own id.

        A report another call is writing (module doc) is waited for once this
        call's own are written and let go: never while holding a claim.
        """
        return self._record_many(outcomes, meta, 0.0)

    def _record_many(
        self, outcomes: Sequence[Outcome], meta: CallMeta, deadline: float
    ) -> list[Recorded | Exception]:
        """`record_many`, waiting for reports other calls write until `deadline` (0:
        `_wait_deadline()`, set at the first wait)."""
        claims = _Claims()
        try:
            out = self._batch(outcomes, meta, claims)
        finally:
            self._release(claims)
        if claims.waits:  # reports other calls were writing: answered once they let go
            again: list[int] = []
            deadline = deadline or self._wait_deadline()
            for i, other in claims.waits:
                try:
                    self._wait_for(other, deadline)
                except AuditError as exc:
                    out[i] = exc
                    continue
                again.append(i)
            if again:  # remembered now, or (their write failed) to write here
                answers = self._record_many([outcomes[i] for i in again], meta, deadline)
                for i, answer in zip(again, answers, strict=True):
                    out[i] = answer
        return out

    def _batch(
        self, outcomes: Sequence[Outcome], meta: CallMeta, claims: _Claims
    ) -> list[Recorded | Exception]:
        """Write a batch's reports, claiming (`claims`) those with an id; a report another
        call holds is left to the caller (`claims.waits`, its slot a placeholder)."""
        started = time.perf_counter()
        out: list[Recorded | Exception] = []
        # Each event encoded as soon as it is built, while what it copied from its
        # decision is still in the CPU's cache (a trail that takes encoded events).
        write_encoded = getattr(self._sink, "write_encoded", None)
        encode = encode_event if callable(write_encoded) else None
        events: list[Any] = []
        judged = self._judged
        at = self._clock()
        stamped, at_ms = timestamp(at), to_ms(at)
        # Counted per kind as judged, added to the metrics once the batch is written.
        kinds: dict[tuple[str, str], int] = {}
        # Reports with an id: those remembered (`_reports`), those of this batch (`fresh`,
        # remembered once the trail took them).
        reports = self._reports
        fresh: dict[tuple[str, str], _Remembered] = {}
        earlier: list[int] = []  # where `out` answers a report an earlier call recorded
        identity = meta.identity
        for outcome, outcome_id in zip(outcomes, self._ids.next_many(len(outcomes)), strict=True):
            report_id = outcome.report_id
            if report_id:
                key = (identity, report_id)
                prior = reports.get(key)
                if prior is not None:
                    earlier.append(len(out))
                else:
                    prior = fresh.get(key)
                    if prior is None:
                        got = self._claim(key, claims)
                        if isinstance(got, tuple):  # remembered since `reports.get`
                            earlier.append(len(out))
                            prior = got
                        elif got is not None:  # another call is writing it: wait after
                            claims.waits.append((len(out), got))
                            out.append(_IN_FLIGHT)
                            continue
                if prior is not None:  # sent before: its first answer, nothing written
                    out.append(_answer(prior, outcome))
                    continue
            try:
                event, recorded = judged(outcome, meta, outcome_id, at, stamped, received_ms=at_ms)
                events.append(event if encode is None else encode(event))
            except Exception as exc:  # noqa: BLE001 - this outcome fails, not the batch
                out.append(exc)
                continue
            out.append(recorded)
            if report_id:
                fresh[key] = _remembered(recorded, outcome)
            kind = (outcome.status, recorded.violation)
            kinds[kind] = kinds.get(kind, 0) + 1
        if not events:
            return out
        try:
            write_many = getattr(self._sink, "write_many", None)
            if encode is not None:
                write_encoded(events)  # type: ignore[misc]
            elif callable(write_many):
                write_many(events)
            else:  # a sink without it: one write each (a failure stops the rest)
                for event in events:
                    self._sink.write(event)
        except AuditError as exc:
            # None of this batch is recorded; a report an earlier call recorded still is.
            kept = set(earlier)
            return [
                exc if isinstance(r, Recorded) and i not in kept else r for i, r in enumerate(out)
            ]
        if fresh:
            self._remember(fresh)
        for (status, violation), count in kinds.items():
            self._counter(status, violation).inc(count)
        each = (time.perf_counter() - started) / len(events)  # its share of the batch
        observe_many(self._metrics.outcome_seconds, each, len(events))
        return out

    def _judged(
        self,
        outcome: Outcome,
        meta: CallMeta,
        outcome_id: str,
        at: datetime,
        stamped: str,
        *,
        received_ms: int | None = None,
    ) -> tuple[dict[str, Any], Recorded]:
        """The outcome's event and what it was judged (nothing written yet), received
        `at` (`stamped`: its text; `received_ms`: its milliseconds, when known)."""
        facts = self.index.facts_for(outcome)  # `lookup`, inlined: once per outcome
        if facts is None and self.trail is not None:
            facts = self.trail.find(outcome.decision_id)
        # `caller_mismatch` is False without a recorded identity or binding: not called then.
        mismatch = (
            facts is not None
            and (facts.caller_identity != "" or self._bind)
            and self.caller_mismatch(facts, meta.identity)
        )
        violation = judge(outcome, facts, at, caller_mismatch=mismatch, received_ms=received_ms)
        event = build_outcome_event(
            outcome_id,
            at,
            outcome,
            meta,
            facts=facts,
            violation=violation,
            redactor=self._redactor,
            audit_note=self._audit_note,
            stamped=stamped,
        )
        decided = facts.decision if facts is not None else ""
        return event, Recorded(
            outcome_id,
            outcome.decision_id,
            decided,
            violation,
            _reason(outcome.status, decided, violation),
        )

    def _counter(self, status: str, violation: str) -> Any:
        """The outcome counter's child for this status and violation (labels looked up
        once each: the lookup costs more than the increment)."""
        key = (status, violation or "none")
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = self._metrics.outcomes.labels(
                status=key[0], violation=key[1]
            )
        return child

    def caller_mismatch(self, facts: DecisionFacts, identity: str) -> bool:
        """Whether a caller with this authenticated `identity` ("" for none) is another
        than the one the decision was made for.

        When the decision recorded its caller's identity, the reporter's must be the
        same (compared as the trail records both: redacted alike). With workload
        binding on, the reporter must also be the decision's principal workload
        (`binding_refusal`, the rule decisions are made under), so a decision that
        recorded no identity (made before binding was turned on, or its identity
        removed by redaction) is no way around it.
        """
        recorded = facts.caller_identity
        if recorded and self._as_recorded(identity) != recorded:
            return True
        if self._bind:
            principal = facts.principal
            if not isinstance(principal, Mapping):
                return True
            kind, name = principal.get("type"), principal.get("id")
            if not isinstance(kind, str) or not isinstance(name, str):
                return True
            return binding_refusal(EntityUid(kind, name), identity) is not None
        return False

    def _as_recorded(self, identity: str) -> str:
        if not self._redacts_caller or self._redactor is None:
            return identity
        redacted = self._redactor.apply({"caller": {"peer": "", "identity": identity}})
        return _identity_in(redacted.get("caller"))


@functools.lru_cache(maxsize=256)
def _reason(status: str, decided: str, violation: str) -> str:
    """The answer's reason for an outcome of `status` whose decision was `decided`
    ("" when none was found) and judged `violation`: a few dozen texts in all,
    each made once (the arguments are validated values, so the cache stays small)."""
    if not violation:
        if not decided:
            return f"recorded: {status} (no decision found with that id; the step did not run)"
        return f"recorded: {status} (its decision: {decided})"
    why = {
        "decision_unknown": "no decision with that id was found",
        "decision_denied": "its decision was DENY",
        "after_time_bound": "the step ran after its decision's time bound (not_after)",
        "before_time_bound": "the step started before its decision's time bound (not_before)",
        "credential_ttl_exceeded": "the credential outlives the decision's max_credential_ttl",
        "caller_mismatch": (
            "it was reported by another caller than the one its decision was made for"
        ),
    }[violation]
    return f"recorded as a violation ({violation}): {status}, but {why}"
