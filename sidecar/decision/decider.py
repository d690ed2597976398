"""The one place a decision is made: cache, validation, engine, audit, metrics.

Every API enters here: the gRPC API and `stepguard check` with the message as
received (`decide_message`: the raw bytes are looked up before validation;
`decide_messages` for an AuthorizeBatch, its misses in one engine call per window),
AuthZEN and tests with a request already in the model (`decide`). The order
below the entry is the same for all; the transports only convert.

No decision leaves without its audit event. When the trail cannot record
one, the answer becomes a DENY that says the decision was not recorded,
under a decision id of its own that no trail holds; an ALLOW is never
returned unaudited. So for every decision id a caller receives, the trail
holds exactly one event with the same decision, or none and the answer says
so (docs/audit.md).

It is a little past 500 lines on purpose: the single and the batch entries end
in the one `_decide` that fixes the order of every decision, and the failing
closed around the trail is the decider's own; the cache, identity, engine,
audit and metrics work it orders is in their modules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.audit.redact import Redactor
from sidecar.audit.sink import AuditSink, DeferringSink
from sidecar.core.bundle import Bundle
from sidecar.core.engine import deny, evaluate_many
from sidecar.core.errors import AuditError, UnencodableEvent
from sidecar.core.event import CallMeta
from sidecar.core.explain import Explanation, explain
from sidecar.core.ids import DecisionIds
from sidecar.core.model import AuthzRequest, Decision, PolicyErrors, Result
from sidecar.core.validate import Limits
from sidecar.decision.cache import DecisionCache, NoCache
from sidecar.decision.evaluation import Evaluator, WindowItem
from sidecar.decision.metrics import Metrics

log = logging.getLogger(__name__)
# Items of an AuthorizeBatch evaluated together (decide_messages).
BATCH_WINDOW = 8
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
        self._metrics = metrics
        self._clock = clock
        self._ids = DecisionIds()
        # Below the cache: identity, validation, engine, the event (decision/evaluation.py).
        # `audit_note` goes into every decision event (a fixed clock says so).
        # `policy_errors`, what an erroring policy does (engine.evaluate), is fixed for
        # the life of the decider, like its cache: a cached decision was made under it.
        self._below = Evaluator(
            self._ids,
            bind_workload_identity=bind_workload_identity,
            redactor=redactor,
            now_granularity_ms=now_granularity_ms,
            policy_errors=policy_errors,
            audit_note=audit_note,
        )
        # The decision cache (sidecar/decision/cache.py): None when off. Hits are audited too.
        self.cache = cache
        self._reader: DecisionCache | NoCache = cache if cache is not None else NoCache()
        # Set for a sink that can queue events for its own committer (`deferring`).
        self._deferring: DeferringSink | None = sink if isinstance(sink, DeferringSink) else None
        # Counted with the metrics' children bound once (no label lookup per decision).
        self._hits = metrics.cache_lookups.labels(result="hit")
        self._misses = metrics.cache_lookups.labels(result="miss")
        self._decided = {
            (decision, cached): metrics.decisions.labels(
                decision=decision.value, cached="true" if cached else "false"
            )
            for decision in Decision
            for cached in (False, True)
        }
        self._evaluation_errors = metrics.evaluation_errors
        self._seconds = metrics.decision_seconds
        if cache is not None:
            metrics.cache_entries.set_function(lambda: cache.stats().entries)
            metrics.cache_bytes.set_function(lambda: cache.stats().bytes)

    @property
    def policy_errors(self) -> PolicyErrors:
        """The semantics every decision of this decider is made under."""
        return self._below.policy_errors

    @property
    def now_granularity_ms(self) -> int:
        """How `context.now` is rounded (validation's rule; the cache resolves hits by it)."""
        return self._below.now_granularity_ms

    def now(self) -> datetime:
        return self._clock()

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
        and on `now`, which the entry's own time bound resolves (cache.py). On
        a miss the message is validated into the request model (time bound
        read, `now` resolved, `context.caller` added) and decided. An
        explanation is never cached: a request asking for one is explained on
        every call, hit or miss (its bytes, `explain` set, are a key of their own).
        """
        return self._decide(
            bundle,
            msg,
            None,
            meta,
            limits=limits,
            at=self._clock(),
            started=started,
            explained=False,  # or as the message asks (`msg.explain`, read in `_decide`)
        )

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
        """Decide a request already in the model (AuthZEN, tests).

        `at` is the clock's reading. The canonical request is the cache key
        (`now` in it only when the policies read it). `explained` adds the
        explanation, from the same bundle and request, beside the decision.
        """
        return self._decide(
            bundle, None, request, meta, limits=None, at=at, started=started, explained=explained
        )

    def decide_messages(
        self,
        bundle: Bundle,
        msgs: Sequence[pb.AuthorizeRequest],
        meta: CallMeta,
        limits: Limits,
        *,
        started: float,
    ) -> list[Decided | Exception]:
        """Decide the items of an AuthorizeBatch, in order, each as `decide_message`
        decides it, the misses of each window of BATCH_WINDOW items in one engine
        call (engine.evaluate_many).

        Per item the order stays cache, identity, validation, engine, audit,
        cache fill, metrics. First every item of the window the cache does not
        hold is validated (a refused one keeps its exception, in its place) and
        the valid ones are evaluated together. Then each item, in order, is
        looked up (and counted) and answered from the cache when it can be, a
        hit or a repeat of an earlier item of the batch, else from its
        evaluation; audited and counted: the trail holds one event per
        decision, in item order. An item that fails any other way gets its
        exception in its place; the others stand. With a deferring trail
        (durability fsync) the window is one item: the trail commits as the batch goes.
        """
        # Events queued for a deferring trail (durability fsync): item by item, as
        # before, so the trail commits as the batch goes and a commit that fails
        # (a full disk) refuses only the events it holds, never the whole batch.
        window = 1 if _PENDING.get() is not None and self._deferring is not None else BATCH_WINDOW
        out: list[Decided | Exception] = []
        for first in range(0, len(msgs), window):
            out.extend(
                self._decide_window(bundle, msgs[first : first + window], meta, limits, started)
            )
        return out

    def _decide_window(
        self,
        bundle: Bundle,
        msgs: Sequence[pb.AuthorizeRequest],
        meta: CallMeta,
        limits: Limits,
        started: float,
    ) -> list[Decided | Exception]:
        """`decide_messages` for one window: validated and evaluated, then decided in order."""
        items: list[WindowItem] = []
        asked: list[AuthzRequest] = []
        seen: set[Any] = set()  # a repeat of an earlier item is its hit
        for msg in msgs:
            item = WindowItem(msg, self._clock())
            items.append(item)
            try:
                if self.cache is not None:
                    found = self.cache.lookup(
                        bundle,
                        msg,
                        None,
                        meta.identity,
                        at=item.at,
                        granularity_ms=self.now_granularity_ms,
                    )
                    if found.hit or found.key in seen:
                        continue  # most likely a hit: looked up again, in order, below
                    seen.add(found.key)
                item.caller, item.request = self._below.validated(
                    bundle, msg, meta, limits, item.at
                )
            except Exception as exc:  # noqa: BLE001 - this item's answer; the rest go on
                item.error = exc
                continue
            if not item.caller.refusal:
                item.index = len(asked)
                asked.append(item.request)
        results = evaluate_many(bundle, asked, policy_errors=self.policy_errors)
        out: list[Decided | Exception] = []
        for item in items:
            if item.index >= 0:
                item.result = results[item.index]
            try:
                decided = self._decide(
                    bundle,
                    item.msg,
                    None,
                    meta,
                    limits=limits,
                    at=item.at,
                    started=started,
                    explained=False,
                    item=item,
                )
                out.append(decided)
            except Exception as exc:  # noqa: BLE001 - this item's answer; the rest go on
                out.append(exc)
        return out

    def _decide(
        self,
        bundle: Bundle,
        msg: pb.AuthorizeRequest | None,
        asked: AuthzRequest | None,
        meta: CallMeta,
        *,
        limits: Limits | None,
        at: datetime,
        started: float,
        explained: bool,
        item: WindowItem | None = None,
    ) -> Decided:
        """The one order, for a message as received (`msg`) or a request in the model (`asked`).

        The cache reads through to the evaluator below it (a hit skips
        identity, validation and Cedar, never the event): decision/cache.py,
        decision/evaluation.py. Then, with the decision and its event: the
        record in the trail (failing closed), the metrics, and the explanation
        of the decision answered. An AuthorizeBatch `item` comes with what its
        window already went through, in the same order: its validation (or the
        refusal validation raised) and the engine's result.
        """
        made, looked = self._reader.read(
            bundle,
            msg,
            asked,
            meta,
            self._below,
            limits=limits,
            at=at,
            started=started,
            item=item,
        )
        if looked:
            (self._hits if made.cached else self._misses).inc()
        decision_id, result, hit = made.decision_id, made.result, made.cached
        # Record; inside `deferring()`, queue the event (counted on `settle`).
        recorded, error = result, None
        pending = _PENDING.get()
        if pending is not None and self._deferring is not None:
            try:
                ticket = self._deferring.enqueue(made.event)
            except AuditError as exc:
                error = exc
            else:
                pending.append(Pending(ticket, decision_id, result, hit, started))
        else:
            try:
                self._sink.write(made.event)
            except AuditError as exc:
                error = exc
        if error is not None:  # refused: not recorded, so not under the event's id
            recorded = self._audit_failed(result, error)
            decision_id = self._ids.next()
        if pending is None or self._deferring is None or error is not None:
            self._count(recorded, cached=hit, started=started)
        # Beside the decision answered, from the same bundle and request; never cached;
        # asked for by the caller of `decide`, or by the message (`explain`).
        asked_why = explained or (msg is not None and msg.explain)
        why = explain(bundle, made.request, recorded) if asked_why else None
        return Decided(decision_id, recorded, cached=hit, explanation=why)

    def _count(self, result: Result, *, cached: bool, started: float) -> None:
        """Count one answered decision: by outcome, its errors, its latency since `started`.

        On the children bound once in `__init__`: a label lookup costs more than the count.
        """
        if result.errors:
            self._evaluation_errors.inc()
        self._decided[(result.decision, cached)].inc()
        self._seconds.observe(time.perf_counter() - started)

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
            self._count(result, cached=p.cached, started=p.started)
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

    @property
    def audit_healthy(self) -> bool:
        """Whether the trail accepted its last write (the server's health follows it)."""
        return bool(getattr(self._sink, "healthy", True))
