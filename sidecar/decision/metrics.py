"""Every Prometheus metric stepguard exports, declared once.

Each server owns a registry, so several servers in one process (tests) do
not share counters.

Worker processes (`serve --workers N`) write their values to files in
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, chosen when
the worker starts); the supervisor serves the sum with `multiprocess_registry`.
Counters and histograms add up across workers; every gauge says how its
workers' values combine (`multiprocess_mode`; ignored in a single process).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.metrics_core import Metric

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
            multiprocess_mode="livemin",  # 0 while any worker's trail fails
        )
        self.policy_revision = Gauge(
            "stepguard_policy_revision_info",
            "The policy bundle in use (value 1, revision in the label).",
            ["revision"],
            registry=r,
            multiprocess_mode="livemax",  # 1 for each revision some worker serves
        )
        self.policies_loaded = Gauge(
            "stepguard_policies_loaded",
            "Number of policies in the bundle in use.",
            registry=r,
            multiprocess_mode="livemax",
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
            multiprocess_mode="livemax",  # 1 while any worker refuses them
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
            multiprocess_mode="livesum",  # each worker has its own cache
        )
        self.cache_bytes = Gauge(
            "stepguard_decision_cache_bytes",
            "Estimated bytes held by the decision cache (bounded by its max_bytes).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.streams_open = Gauge(
            "stepguard_streams_open",
            "AuthorizeStream calls open now (at most threads / 2 per worker).",
            registry=r,
            multiprocess_mode="livesum",
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
        self.outcomes = Counter(
            "stepguard_outcomes_total",
            "Outcomes recorded (RecordOutcome, POST /stepguard/v1/outcome), by status and "
            "violation (none, decision_denied, decision_unknown, after_time_bound, "
            "before_time_bound, credential_ttl_exceeded, caller_mismatch).",
            ["status", "violation"],
            registry=r,
        )
        self.outcome_seconds = Histogram(
            "stepguard_outcome_duration_seconds",
            "Time to judge and record one outcome (a trail lookup included).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_healthy.set(1)
        self._revision: str | None = None

    def set_bundle(self, revision: str, policy_count: int) -> None:
        if self._revision is not None and self._revision != revision:
            # In multiprocess mode the old value stays in this worker's file: say 0.
            self.policy_revision.labels(revision=self._revision).set(0)
        self._revision = revision
        with warnings.catch_warnings():  # multiprocess mode: clearing only forgets the labels
            warnings.simplefilter("ignore", UserWarning)
            self.policy_revision.clear()
        self.policy_revision.labels(revision=revision).set(1)
        self.policies_loaded.set(policy_count)


class _Combined:
    """Every worker's metrics from the multiprocess files, as one process would show them.

    A worker's files keep every label it ever set, so a revision no worker
    serves any more is still there, at 0 (set_bundle): it is left out, as a
    single process leaves it out (its gauge was cleared), so "how many
    revisions are served" stays a count of series.
    """

    def __init__(self, directory: Path) -> None:
        files = multiprocess.MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]
        self._files = files

    def collect(self) -> Iterator[Metric]:
        for metric in self._files.collect():  # type: ignore[no-untyped-call]
            if metric.name == "stepguard_policy_revision_info":
                metric.samples = [s for s in metric.samples if s.value != 0]
            yield metric


def multiprocess_registry(directory: Path) -> CollectorRegistry:
    """What the supervisor serves: every worker's metrics from `directory`, combined."""
    registry = CollectorRegistry()
    registry.register(_Combined(directory))
    return registry


def forget_worker(directory: Path, pid: int) -> None:
    """A worker process ended: its live gauges no longer count (its counters still do)."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """`count` observations of one `amount` (each outcome's share of its batch's time)
    in one update: the count, sum and bucket that `count` calls of `observe` leave.

    Written against prometheus_client's Histogram as `observe` updates it (its
    `_sum`, `_buckets` and `_upper_bounds`, in one process or in multiprocess mode);
    tests/decision/test_metrics_many.py holds it equal to the calls. A histogram
    without them (another client version) is observed call by call.
    """
    if count <= 0:
        return
    total = getattr(histogram, "_sum", None)
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if total is None or buckets is None or bounds is None:
        for _ in range(count):
            histogram.observe(amount)
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    total.inc(amount * count)
    for i, bound in enumerate(bounds):
        if amount <= bound:
            buckets[i].inc(count)
            break
