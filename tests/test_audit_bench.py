"""The audit benchmark's statistics, loads and verdicts."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.audit_bench import bootstrap_median_interval, render, request, step_requests
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb

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


def test_the_steps_load_asks_one_new_step_after_another() -> None:
    """Each `steps` request differs only in its run, and never repeats: none can be cached."""
    asks = list(itertools.islice(step_requests(itertools.count()), 50))
    assert len({a.context.run_id for a in asks}) == 50
    for ask in asks:
        same = pb.AuthorizeRequest()
        same.CopyFrom(ask)
        same.context.run_id = request().context.run_id
        assert same == request()


def _summary(ratios: dict[str, dict[str, float]]) -> dict[str, Any]:
    def mode(ratio: float) -> dict[str, Any]:
        return {
            "decisions_per_s": 1000 * ratio,
            "all": [1000 * ratio],
            "ratio": ratio,
            "ratio_interval": (ratio, ratio),
            "server_cpu_us": 500.0,
            "trail_ok": True,
        }

    return {
        "rounds": 1,
        "clients": 8,
        "seconds": 3.0,
        "load_average": (1.0, 1.0),
        "loads": {load: {m: mode(r) for m, r in by.items()} for load, by in ratios.items()},
    }


def test_the_table_gives_each_load_its_own_verdict() -> None:
    table = render(
        _summary(
            {
                "steps": {"off": 1.0, "flush": 0.93, "fsync": 0.79},
                "hits": {"off": 1.0, "flush": 0.89, "fsync": 0.61},
            }
        ),
        "cmd",
    )
    rows = [line for line in table.splitlines() if line.startswith("| steps") or "| hits" in line]
    verdicts = {(r.split(" | ")[0], r.split(" | ")[1]): r.split(" | ")[4] for r in rows}
    assert verdicts[("| steps (a new run each call: evaluated)", "flush")] == ">= 0.9x: met"
    assert verdicts[("| hits (one call repeated: from the cache)", "flush")] == ">= 0.9x: NOT met"
    assert verdicts[("| hits (one call repeated: from the cache)", "fsync")] == ">= 0.6x: met"
    assert verdicts[("| steps (a new run each call: evaluated)", "off")] == "baseline"
