"""decision/metrics.observe_many: a batch's observations in one update leave the
histogram as many `observe` calls would (its count, sum and every bucket), in one
process and in the multiprocess mode worker processes use."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, values

from sidecar.decision.metrics import LATENCY_BUCKETS, observe_many


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def _same(a: dict[tuple[str, str], float], b: dict[tuple[str, str], float]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert math.isclose(value, b[key], rel_tol=1e-9, abs_tol=1e-12), key


amounts = st.one_of(
    st.sampled_from([*LATENCY_BUCKETS, 0.0, 2.0]),
    st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.tuples(amounts, st.integers(0, 300)), max_size=6))
def test_observe_many_equals_as_many_observe_calls(batches: list[tuple[float, int]]) -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("o", "o", buckets=LATENCY_BUCKETS, registry=one)
    h_many = Histogram("o", "o", buckets=LATENCY_BUCKETS, registry=many)
    for amount, count in batches:
        for _ in range(count):
            h_one.observe(amount)
        observe_many(h_many, amount, count)
    _same(_samples(one), _samples(many))


def test_observe_many_in_multiprocess_mode_writes_the_worker_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes keep their values in mmap files (PROMETHEUS_MULTIPROC_DIR):
    the batch update lands there as the calls would."""
    from prometheus_client import multiprocess

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    multiprocess_value = values.get_value_class()  # type: ignore[no-untyped-call]
    monkeypatch.setattr(values, "ValueClass", multiprocess_value)
    try:
        h_one = Histogram("calls", "c", buckets=LATENCY_BUCKETS, registry=None)
        h_many = Histogram("batch", "b", buckets=LATENCY_BUCKETS, registry=None)
        for _ in range(7):
            h_one.observe(0.0003)
        observe_many(h_many, 0.0003, 7)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, str(tmp_path))  # type: ignore[no-untyped-call]
        got = _samples(combined)
    finally:
        monkeypatch.undo()
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    calls = {(n.replace("calls", "x"), le): v for (n, le), v in got.items() if "calls" in n}
    batch = {(n.replace("batch", "x"), le): v for (n, le), v in got.items() if "batch" in n}
    assert calls and calls[("x_count", "")] == 7
    _same(calls, batch)
