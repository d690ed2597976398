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
from sidecar.audit.sink import AuditSink
from sidecar.bundle import Bundle
from sidecar.engine import deny, evaluate
from sidecar.errors import AuditError
from sidecar.ids import DecisionIds
from sidecar.metrics import Metrics
from sidecar.model import AuthzRequest, Result


@dataclass(frozen=True, slots=True)
class Decided:
    decision_id: str
    result: Result
    cached: bool


class Decider:
    def __init__(self, sink: AuditSink, metrics: Metrics, clock: Callable[[], datetime]) -> None:
        self._sink = sink
        self._metrics = metrics
        self._clock = clock
        self._ids = DecisionIds()

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
        """Evaluate, audit, count. `at` is the time the request saw as `context.now`."""
        result = evaluate(bundle, request)
        decision_id = self._ids.next()
        latency = time.perf_counter() - started
        event = build_event(decision_id, at, request, result, meta, cached=False, latency_s=latency)
        try:
            self._sink.write(event)
        except AuditError as exc:
            self._metrics.audit_failures.inc()
            self._metrics.audit_healthy.set(0)
            result = deny(bundle.revision, f"audit trail unavailable, failing closed: {exc}")
        else:
            self._metrics.audit_healthy.set(1)
        if result.errors:
            self._metrics.evaluation_errors.inc()
        self._metrics.decisions.labels(decision=result.decision.value, cached="false").inc()
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        return Decided(decision_id, result, cached=False)
