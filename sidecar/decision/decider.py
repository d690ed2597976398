"""The one place a decision is made: cache, validation, engine, audit, metrics.

Every API enters here: the gRPC API and `stepguard check` with the message as
received (`decide_message`: the raw bytes are looked up before validation),
AuthZEN and tests with a request already in the model (`decide`). The order
below the entry is the same for all; the transports only convert.

No decision leaves without its audit event. When the trail cannot record
one, the answer becomes a DENY that says the decision was not recorded,
under a decision id of its own that no trail holds; an ALLOW is never
returned unaudited. So for every decision id a caller receives, the trail
holds exactly one event with the same decision, or none and the answer says
so (docs/audit.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.audit.event import PER_CALL, CallMeta, build_event, stamp, template
from sidecar.audit.redact import Redactor
from sidecar.audit.sink import AuditSink, DeferringSink
from sidecar.core.bundle import Bundle
from sidecar.core.engine import deny, evaluate
from sidecar.core.errors import AuditError, UnencodableEvent
from sidecar.core.explain import Explanation, explain
from sidecar.core.ids import DecisionIds
from sidecar.core.index import WHOLE_CONTEXT
from sidecar.core.model import (
    AuthzRequest,
    Decision,
    EntityUid,
    PolicyErrors,
    Result,
    cedar_datetime,
    effective_now_ms,
    to_ms,
)
from sidecar.core.validate import Limits, request_from_proto
from sidecar.decision.cache import DecisionCache, Entry, canonical, entry_size
from sidecar.decision.identity import CallerContext, binding_refusal
from sidecar.decision.metrics import Metrics

log = logging.getLogger(__name__)
# A cache key: ("wire", revision, request bytes, identity) or ("request", revision, text, identity).
_Key = tuple[Any, ...]
# In the reason of every DENY whose decision the trail does not hold.
NOT_RECORDED = " (this decision was not recorded)"


@dataclass(frozen=True, slots=True)
class Decided:
    decision_id: str
    result: Result
    cached: bool
    # Set when the caller asked why (AuthorizeRequest.explain); never changes `result`.
    explanation: Explanation | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """A decision whose event is queued, not yet written: it is not answered before `settle`."""

    ticket: Any
    decision_id: str
    result: Result
    cached: bool
    started: float


# The decisions made inside `Decider.deferring()` on this thread/task, else None.
_PENDING: ContextVar[list[Pending] | None] = ContextVar("stepguard_pending", default=None)


class _Deferring:
    """The context of `Decider.deferring()` (a class: it runs once per call)."""

    __slots__ = ("pending", "token")

    def __enter__(self) -> list[Pending]:
        self.pending: list[Pending] = []
        self.token = _PENDING.set(self.pending)
        return self.pending

    def __exit__(self, *exc: object) -> None:
        _PENDING.reset(self.token)


class Decider:
    def __init__(
        self,
        sink: AuditSink,
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        bind_workload_identity: bool = False,
        redactor: Redactor | None = None,
        cache: DecisionCache | None = None,
        now_granularity_ms: int = 1,
        policy_errors: PolicyErrors = PolicyErrors.DENY,
        audit_note: str = "",
    ) -> None:
        self._sink = sink
        # In every decision event's `note` (a fixed clock says so); cache hits
        # carry it through the template they are stamped from.
        self._audit_note = audit_note
        # What an erroring policy does (engine.evaluate). Fixed for the life of
        # the decider, like its cache: a cached decision was made under it.
        self._policy_errors = policy_errors
        self._redactor = redactor
        self._metrics = metrics
        self._clock = clock
        self._ids = DecisionIds()
        self._bind = bind_workload_identity
        self._caller = CallerContext()  # `context.caller` where the schema declares it
        # The decision cache (sidecar/decision/cache.py): None when off. Hits are audited too.
        self.cache = cache
        self.now_granularity_ms = now_granularity_ms
        # Set for a sink that can queue events for its own committer (`deferring`).
        self._deferring: DeferringSink | None = sink if isinstance(sink, DeferringSink) else None
        # Hits stamp their event from the cached decision's template unless a
        # redaction path could reach a per-call field (then each builds anew).
        self._stamp = redactor is None or not redactor.touches(PER_CALL)
        self._stamp_now = redactor is None or not redactor.touches(("context",))
        self._hits = metrics.cache_lookups.labels(result="hit")
        self._counters: dict[tuple[Decision, bool], Any] = {}
        self._misses = metrics.cache_lookups.labels(result="miss")
        if cache is not None:
            metrics.cache_entries.set_function(lambda: cache.stats().entries)
            metrics.cache_bytes.set_function(lambda: cache.stats().bytes)

    @property
    def policy_errors(self) -> PolicyErrors:
        """The semantics every decision of this decider is made under."""
        return self._policy_errors

    def now(self) -> datetime:
        return self._clock()

    def context_now_ms(
        self, at: datetime, not_before_ms: int | None, not_after_ms: int | None
    ) -> int:
        """`context.now` for a request seen at `at` (model.py: granularity, time bound)."""
        return effective_now_ms(to_ms(at), self.now_granularity_ms, not_before_ms, not_after_ms)

    def decide_message(
        self,
        bundle: Bundle,
        msg: pb.AuthorizeRequest,
        meta: CallMeta,
        limits: Limits,
        *,
        started: float,
    ) -> Decided:
        """Decide an AuthorizeRequest as received: the gRPC API's and `stepguard check`'s entry.

        The raw bytes are looked up first, so a hit skips validation and Cedar
        (never the audit): validation and the server-side context depend only
        on the bytes, the bundle and the caller's identity, all in the key,
        and on `now`, which the entry's own time bound resolves (`_hit`). On a
        miss the message is validated into the request model (time bound read,
        `now` resolved, `context.caller` added) and decided. An explanation is
        never cached: a request asking for one is explained on every call, hit
        or miss (its bytes, `explain` set, are a key of their own).
        """
        at = self._clock()
        key: _Key | None = None
        if self.cache is not None:
            wire = msg.SerializeToString(deterministic=True)
            key = ("wire", bundle.revision, wire, meta.identity)
            hit = self._hit(
                bundle, key, meta, at=at, started=started, asked=None, explained=msg.explain
            )
            if hit is not None:
                return hit
        action = EntityUid(msg.action.type, msg.action.id)
        request = request_from_proto(
            msg,
            bundle,
            limits,
            now=at,
            now_granularity_ms=self.now_granularity_ms,
            extra_context=self._caller.context_for(bundle, action, meta.identity),
            principal_bound=self._bind,
        )
        return self._miss(bundle, request, meta, key, at=at, started=started, explained=msg.explain)

    def decide(
        self,
        bundle: Bundle,
        request: AuthzRequest,
        meta: CallMeta,
        *,
        at: datetime,
        started: float,
        explained: bool = False,
    ) -> Decided:
        """Decide a request already in the model (AuthZEN, tests): cache, engine, audit, count.

        `at` is the clock's reading. The canonical request is the cache key
        (`now` in it only when the policies read it). `explained` adds the
        explanation, from the same bundle and request, beside the decision.
        """
        key: _Key | None = None
        if self.cache is not None:
            reads_now = _reads_now(bundle)
            key = ("request", bundle.revision, canonical(request, with_now=reads_now))
            key = (*key, meta.identity)
            # `now` left out of the key: the hit still records this call's `now`.
            now = request.context.get("now") if not reads_now else None
            hit = self._hit(
                bundle,
                key,
                meta,
                at=at,
                started=started,
                asked=request,
                explained=explained,
                now=now,
            )
            if hit is not None:
                return hit
        return self._miss(bundle, request, meta, key, at=at, started=started, explained=explained)

    def _hit(
        self,
        bundle: Bundle,
        key: _Key,
        meta: CallMeta,
        *,
        at: datetime,
        started: float,
        asked: AuthzRequest | None,
        explained: bool,
        now: Any = None,
    ) -> Decided | None:
        """Answer from the cache (audited, marked cached), or None on a miss.

        `asked` is the request of this call, when it was validated before the
        lookup; a raw key (`asked` None) holds no `now`: this call's is
        resolved from the entry's own time bound; an entry decided at another
        `now` is a miss when the policies read it, else the hit's event
        records this call's `now`.
        """
        assert self.cache is not None
        entry = self.cache.get(key)
        real_ms = to_ms(at)
        if entry is None or not entry.servable(real_ms):
            self._misses.inc()
            return None
        request = entry.request if asked is None else asked
        if asked is None and "now" in request.context:
            nb, na = request.not_before_ms, request.not_after_ms
            now_ms = effective_now_ms(real_ms, self.now_granularity_ms, nb, na)
            if _reads_now(bundle):
                if entry.now_ms != now_ms:  # another `now`, maybe another decision
                    self._misses.inc()
                    return None
            else:
                now = cedar_datetime(now_ms)
                request = replace(request, context={**request.context, "now": now})
        self._hits.inc()
        decision_id = self._ids.next()
        if (
            entry.event is not None
            and (now is None or self._stamp_now)
            and (self._redactor is None or self._redactor.stampable(meta.request_id))
        ):
            latency = time.perf_counter() - started
            event = stamp(entry.event, decision_id, at, meta, latency_s=latency, now=now)
        else:  # no template, or redaction changes a per-call field (a secret-looking request id)
            event = self._event(
                decision_id, at, request, entry.result, meta, cached=True, started=started
            )
        result = self._record(event, entry.result, decision_id, cached=True, started=started)
        if result is not entry.result:  # refused: not recorded, so not under the event's id
            decision_id = self._ids.next()
        why = explain(bundle, request, result) if explained else None
        return Decided(decision_id, result, cached=True, explanation=why)

    def _miss(
        self,
        bundle: Bundle,
        request: AuthzRequest,
        meta: CallMeta,
        key: _Key | None,
        *,
        at: datetime,
        started: float,
        explained: bool,
    ) -> Decided:
        """Evaluate, audit, cache, count; the explanation beside, when asked.

        With workload binding on, a request about anyone but the authenticated
        caller is a DENY saying so, audited like any other decision.
        """
        refusal = binding_refusal(request.principal, meta.identity) if self._bind else None
        if refusal:
            result = deny(bundle.revision, refusal, self._policy_errors)
        else:
            result = evaluate(bundle, request, policy_errors=self._policy_errors)
        decision_id = self._ids.next()
        event = self._event(decision_id, at, request, result, meta, cached=False, started=started)
        if key is not None and self.cache is not None:
            nb, na = request.not_before_ms, request.not_after_ms
            size = entry_size(_encoded_len(key))
            hits_from = template(event) if self._stamp else None
            now_ms = None
            if key[0] == "wire" and _reads_now(bundle):  # a raw key holds no `now`
                now_ms = effective_now_ms(to_ms(at), self.now_granularity_ms, nb, na)
            entry = Entry(request, result, nb, na, size, hits_from, now_ms)
            self.cache.put(key, bundle.revision, entry)
        recorded = self._record(event, result, decision_id, cached=False, started=started)
        if recorded is not result:  # refused: not recorded, so not under the event's id
            decision_id = self._ids.next()
        # Beside the decision answered, from the same bundle and request; never cached.
        why = explain(bundle, request, recorded) if explained else None
        return Decided(decision_id, recorded, cached=False, explanation=why)

    def _record(
        self,
        event: dict[str, Any],
        result: Result,
        decision_id: str,
        *,
        cached: bool,
        started: float,
    ) -> Result:
        """Audit and count a decision; inside `deferring()`, queue its event and count later.

        Returns `result` itself when its event is written (or queued), else the
        DENY that replaces it (the caller then answers under a new id).
        """
        pending = _PENDING.get()
        if pending is not None and self._deferring is not None:
            try:
                ticket = self._deferring.enqueue(event)
            except AuditError as exc:
                result = self._audit_failed(result, exc)
            else:
                pending.append(Pending(ticket, decision_id, result, cached, started))
                return result
        else:
            result = self._write(event, result)
        self._count(result, cached, started)
        return result

    def _count(self, result: Result, cached: bool, started: float) -> None:
        if result.errors:
            self._metrics.evaluation_errors.inc()
        counter = self._counters.get((result.decision, cached))
        if counter is None:  # the label lookup costs more than the increment: keep the child
            label = "true" if cached else "false"
            counter = self._metrics.decisions.labels(decision=result.decision.value, cached=label)
            self._counters[(result.decision, cached)] = counter
        counter.inc()
        self._metrics.decision_seconds.observe(time.perf_counter() - started)

    def deferring(self) -> _Deferring:
        """`with decider.deferring() as pending:` decisions made inside queue their events.

        For the asyncio server with durability fsync: the event loop must not
        wait for a disk. The caller holds every answer made inside the block
        until `tickets_done` reports the events written, then calls `settle`;
        an answer whose event failed is replaced by a DENY (servicer.py).
        Without a sink that can queue, decisions are written as usual.
        """
        return _Deferring()

    def tickets_done(self, pending: list[Pending], callback: Callable[[str], object]) -> None:
        """Call `callback(error)` once every pending event is written ("" then) or failed."""
        sink = self._deferring
        assert sink is not None, "pending decisions come only from a deferring sink"
        if len(pending) == 1:  # a unary call: the usual case
            sink.when_done(pending[0].ticket, callback)
            return
        tickets = list({id(p.ticket): p.ticket for p in pending}.values())
        remaining = [len(tickets)]
        errors: list[str] = []

        def one(error: str) -> None:  # on the committing thread, or here
            if error:
                errors.append(error)
            remaining[0] -= 1
            if remaining[0] == 0:
                callback(errors[0] if errors else "")

        for ticket in tickets:
            sink.when_done(ticket, one)

    def settle(self, pending: list[Pending], error: str) -> dict[str, Decided]:
        """Count the pending decisions once their events are written (or not: `error`).

        `error` is what `tickets_done` reported (the first failure, "" when
        every event was written). A commit that fails refuses only its own
        events: each pending decision is judged by its own ticket, so an
        answer whose event is in the trail stands. Returns, by original
        decision id, the refusals that replace the others: DENYs saying the
        decision was not recorded, each under a new id.
        """
        refusals: dict[str, Decided] = {}
        for p in pending:
            result = p.result
            failed = error and self._failed(p.ticket)
            if failed:
                result = self._audit_failed(result, AuditError(failed))
                refusals[p.decision_id] = Decided(self._ids.next(), result, cached=False)
            self._count(result, p.cached, p.started)
        return refusals

    def _failed(self, ticket: Any) -> str:
        """Why the ticket's event was not written; "" when it was."""
        assert self._deferring is not None
        return self._deferring.outcome(ticket)

    def _audit_failed(self, result: Result, error: AuditError) -> Result:
        """The DENY for a decision whose event the trail did not record.

        Only a failure of the trail counts as an audit write failure; the
        health gauge follows the sink's own health (server.py), never one
        event: an event that cannot be encoded (a value validation should
        have refused) says nothing about the sink.
        """
        if isinstance(error, UnencodableEvent):
            log.error("decision refused: %s", error)  # a bug: validation lets no such value in
            why = f"failing closed{NOT_RECORDED}: {error}"
        else:
            self._metrics.audit_failures.inc()
            why = f"audit trail unavailable, failing closed{NOT_RECORDED}: {error}"
        return deny(result.revision, why, result.policy_errors)

    def _write(self, event: dict[str, Any], result: Result) -> Result:
        try:
            self._sink.write(event)
        except AuditError as exc:
            return self._audit_failed(result, exc)
        return result

    def _event(
        self,
        decision_id: str,
        at: datetime,
        request: AuthzRequest,
        result: Result,
        meta: CallMeta,
        *,
        cached: bool,
        started: float,
    ) -> dict[str, Any]:
        return build_event(
            decision_id,
            at,
            request,
            result,
            meta,
            cached=cached,
            latency_s=time.perf_counter() - started,
            audit_note=self._audit_note,
            redactor=self._redactor,
        )

    @property
    def audit_healthy(self) -> bool:
        """Whether the trail accepted its last write (the server's health follows it)."""
        return bool(getattr(self._sink, "healthy", True))


def _encoded_len(key: _Key) -> int:
    """Length of the request's encoding inside a cache key (wire bytes or canonical text)."""
    return len(key[2]) if isinstance(key, tuple) and isinstance(key[2], bytes | str) else 4096


def _reads_now(bundle: Bundle) -> bool:
    """Whether the bundle's policies can read `context.now` (then it is part of the key)."""
    reads = bundle.context_reads
    return "now" in reads or WHOLE_CONTEXT in reads
