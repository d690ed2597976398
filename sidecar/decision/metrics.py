"""Every Prometheus metric stepguard exports, declared once.

Each server owns a registry, so several servers in one process (tests) do
not share counters.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.core.model import Decision, Result

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "stepguard_decisions_total",
            "Decisions answered, by outcome and whether the cache served them.",
            ["decision", "cached"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "stepguard_decision_duration_seconds",
            "Time from receiving a request to having its audited decision.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.invalid_requests = Counter(
            "stepguard_invalid_requests_total",
            "Requests refused as malformed (gRPC INVALID_ARGUMENT, AuthZEN 400 or an invalid "
            "batch item), by API and the top-level field at fault.",
            ["api", "field"],
            registry=r,
        )
        self.evaluation_errors = Counter(
            "stepguard_evaluation_errors_total",
            "Decisions whose evaluation reported at least one error "
            "(DENY under policy_errors: deny).",
            registry=r,
        )
        self.audit_failures = Counter(
            "stepguard_audit_write_failures_total",
            "Decisions turned into DENY because the audit trail could not be written.",
            registry=r,
        )
        self.audit_healthy = Gauge(
            "stepguard_audit_healthy",
            "1 while the audit trail accepts writes, 0 while it fails.",
            registry=r,
        )
        self.policy_revision = Gauge(
            "stepguard_policy_revision_info",
            "The policy bundle in use (value 1, revision in the label).",
            ["revision"],
            registry=r,
        )
        self.policies_loaded = Gauge(
            "stepguard_policies_loaded",
            "Number of policies in the bundle in use.",
            registry=r,
        )
        self.reloads = Counter(
            "stepguard_policy_reloads_total",
            "Policy reload attempts, by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.reload_error = Gauge(
            "stepguard_policy_reload_error",
            "1 while the policy files on disk are refused (the last good bundle keeps "
            "serving), 0 once the bundle in use matches them.",
            registry=r,
        )
        self.cache_lookups = Counter(
            "stepguard_decision_cache_lookups_total",
            "Decision cache lookups, by result (hit: answered from the cache, still audited).",
            ["result"],
            registry=r,
        )
        self.cache_entries = Gauge(
            "stepguard_decision_cache_entries",
            "Decisions held in the decision cache.",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "stepguard_decision_cache_bytes",
            "Estimated bytes held by the decision cache (bounded by its max_bytes).",
            registry=r,
        )
        self.streams_open = Gauge(
            "stepguard_streams_open",
            "AuthorizeStream calls open now (at most workers / 2).",
            registry=r,
        )
        self.streams_refused = Counter(
            "stepguard_streams_refused_total",
            "AuthorizeStream calls refused with RESOURCE_EXHAUSTED, by the limit reached "
            "(total, per_caller).",
            ["reason"],
            registry=r,
        )
        self.streams_idle_closed = Counter(
            "stepguard_streams_idle_closed_total",
            "AuthorizeStream calls the server closed after stream_idle_timeout_s without a "
            "request.",
            registry=r,
        )
        self.audit_healthy.set(1)
        # `decisions` children by (decision, cached): the label lookup costs more
        # than the increment, so each is looked up once.
        self._decided: dict[tuple[Decision, bool], Any] = {}

    def count_decision(self, result: Result, *, cached: bool, started: float) -> None:
        """Count one answered decision: by outcome, its errors, its latency since `started`."""
        if result.errors:
            self.evaluation_errors.inc()
        counter = self._decided.get((result.decision, cached))
        if counter is None:
            label = "true" if cached else "false"
            counter = self.decisions.labels(decision=result.decision.value, cached=label)
            self._decided[(result.decision, cached)] = counter
        counter.inc()
        self.decision_seconds.observe(time.perf_counter() - started)

    def set_bundle(self, revision: str, policy_count: int) -> None:
        self.policy_revision.clear()
        self.policy_revision.labels(revision=revision).set(1)
        self.policies_loaded.set(policy_count)
