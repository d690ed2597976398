"""The one place a decision is made: engine, then audit, then metrics.

No decision leaves without its audit event. When the trail cannot record
one, the answer becomes a DENY that says so; an ALLOW is never returned
unaudited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sidecar.audit.event import CallMeta, build_event
from sidecar.audit.redact import Redactor
from sidecar.audit.sink import AuditSink
from sidecar.bundle import Bundle
from sidecar.engine import deny, evaluate
from sidecar.errors import AuditError
from sidecar.identity import binding_refusal
from sidecar.ids import DecisionIds
from sidecar.metrics import Metrics
from sidecar.model import AuthzRequest, Result


@dataclass(frozen=True, slots=True)
class Decided:
    decision_id: str
    result: Result
    cached: bool


class Decider:
    def __init__(
        self,
        sink: AuditSink,
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        bind_workload_identity: bool = False,
        redactor: Redactor | None = None,
    ) -> None:
        self._sink = sink
        self._redactor = redactor
        self._metrics = metrics
        self._clock = clock
        self._ids = DecisionIds()
        self._bind = bind_workload_identity

    def now(self) -> datetime:
        return self._clock()

    def decide(
        self,
        bundle: Bundle,
        request: AuthzRequest,
        meta: CallMeta,
        *,
        at: datetime,
        started: float,
    ) -> Decided:
        """Evaluate, audit, count. `at` is the time the request saw as `context.now`.

        With workload binding on, a request about anyone but the authenticated
        caller is a DENY saying so, audited like any other decision.
        """
        refusal = binding_refusal(request.principal, meta.identity) if self._bind else None
        result = deny(bundle.revision, refusal) if refusal else evaluate(bundle, request)
        decision_id = self._ids.next()
        result = self.audit(decision_id, at, request, result, meta, cached=False, started=started)
        if result.errors:
            self._metrics.evaluation_errors.inc()
        self._metrics.decisions.labels(decision=result.decision.value, cached="false").inc()
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        return Decided(decision_id, result, cached=False)

    def audit(
        self,
        decision_id: str,
        at: datetime,
        request: AuthzRequest,
        result: Result,
        meta: CallMeta,
        *,
        cached: bool,
        started: float,
    ) -> Result:
        """Record the decision (a cache hit too, with `cached`) before it is answered.

        Returns the result to answer: the decision itself once its event is
        written, else a DENY saying the trail is unavailable.
        """
        latency = time.perf_counter() - started
        event = build_event(
            decision_id,
            at,
            request,
            result,
            meta,
            cached=cached,
            latency_s=latency,
            redactor=self._redactor,
        )
        try:
            self._sink.write(event)
        except AuditError as exc:
            self._metrics.audit_failures.inc()
            self._metrics.audit_healthy.set(0)
            return deny(result.revision, f"audit trail unavailable, failing closed: {exc}")
        self._metrics.audit_healthy.set(1)
        return result

    @property
    def audit_healthy(self) -> bool:
        """Whether the trail accepted its last write (the server's health follows it)."""
        return bool(getattr(self._sink, "healthy", True))
