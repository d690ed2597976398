"""The audit benchmark's statistics: the interval it prints beside each ratio."""

from __future__ import annotations

import statistics

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.audit_bench import bootstrap_median_interval

ratios = st.lists(st.floats(min_value=0.1, max_value=3.0), min_size=1, max_size=40)


@given(ratios)
def test_the_interval_brackets_the_median_within_the_data(values: list[float]) -> None:
    low, high = bootstrap_median_interval(values, resamples=400)
    assert min(values) <= low <= statistics.median(values) <= high <= max(values)


def test_the_interval_narrows_as_rounds_agree() -> None:
    noisy = [0.80, 1.05, 0.88, 0.99, 0.91, 1.10, 0.85, 0.97, 0.93, 1.02]
    steady = [0.92, 0.93, 0.93, 0.94, 0.92, 0.93, 0.94, 0.93, 0.92, 0.93]
    low_n, high_n = bootstrap_median_interval(noisy)
    low_s, high_s = bootstrap_median_interval(steady)
    assert high_s - low_s < (high_n - low_n) / 3
    assert bootstrap_median_interval([0.9] * 5) == (0.9, 0.9)
