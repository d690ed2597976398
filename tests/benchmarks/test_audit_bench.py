"""The audit benchmark's statistics, loads and verdicts."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.audit_bench import pool, render, request, step_requests
from benchmarks.stats import bootstrap_median_interval
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


def _summary(
    ratios: dict[str, dict[str, float]], intervals: dict[str, tuple[float, float]] | None = None
) -> dict[str, Any]:
    def mode(name: str, ratio: float) -> dict[str, Any]:
        return {
            "decisions_per_s": 1000 * ratio,
            "all": [1000 * ratio],
            "ratios": [ratio],
            "ratio": ratio,
            "ratio_interval": (intervals or {}).get(name, (ratio, ratio)),
            "server_cpu_us": 500.0,
            "cpus": [500.0],
            "trail_ok": True,
        }

    return {
        "rounds": 1,
        "clients": 8,
        "seconds": 3.0,
        "load_average": (1.0, 1.0),
        "loads": {
            load: {m: mode(f"{load} {m}", r) for m, r in by.items()} for load, by in ratios.items()
        },
    }


def _verdicts(table: str) -> dict[tuple[str, str], str]:
    rows = [line for line in table.splitlines() if line.startswith(("| steps", "| hits"))]
    return {(r.split(" | ")[0][2:], r.split(" | ")[1]): r.split(" | ")[4] for r in rows}


STEPS = "steps (a new run each call: evaluated)"
HITS = "hits (one call repeated: from the cache)"


def test_the_table_gives_each_load_its_own_verdict_from_the_interval() -> None:
    table = render(
        _summary(
            {
                "steps": {"off": 1.0, "flush": 0.93, "fsync": 0.79},
                "hits": {"off": 1.0, "flush": 0.91, "fsync": 0.55},
            },
            # hits flush: the median is above 0.9x but the interval straddles it
            {"hits flush": (0.88, 0.93), "steps flush": (0.91, 0.95)},
        ),
        "cmd",
        commit="abc123",
    )
    verdicts = _verdicts(table)
    assert verdicts[(STEPS, "flush")] == ">= 0.9x: met"
    assert verdicts[(HITS, "flush")] == ">= 0.9x: undecided"
    assert verdicts[(HITS, "fsync")] == ">= 0.6x: not met"
    assert verdicts[(STEPS, "off")] == "baseline"
    assert "on commit abc123" in table


def _run(flush: list[float]) -> dict[str, Any]:
    def mode(ratios: list[float]) -> dict[str, Any]:
        return {
            "all": [1000 * r for r in ratios],
            "ratios": ratios,
            "cpus": [500.0] * len(ratios),
            "trail_ok": True,
            "ratio": sorted(ratios)[len(ratios) // 2],
            "ratio_interval": (min(ratios), max(ratios)),
        }

    n = len(flush)
    return {
        "rounds": n,
        "clients": 8,
        "seconds": 3.0,
        "load_average": (1.0, 2.0),
        "loads": {"hits": {"off": mode([1.0] * n), "flush": mode(flush), "fsync": mode([0.7] * n)}},
    }


def test_runs_are_pooled_by_the_command_and_each_is_reported() -> None:
    """`--runs N`: the pool is every round of every run, and each run keeps its column."""
    runs = [_run([0.86, 0.87, 0.88]), _run([0.93, 0.94, 0.95]), _run([0.89, 0.91, 0.92])]
    pooled = pool(runs)
    flush = pooled["loads"]["hits"]["flush"]
    assert pooled["rounds"] == 9
    assert sorted(flush["ratios"]) == sorted(
        x for r in runs for x in r["loads"]["hits"]["flush"]["ratios"]
    )
    assert flush["ratio"] == 0.91
    table = render(pooled, "cmd --runs 3", runs=runs)
    assert "3 runs, decided before the first started, all reported" in table
    (row,) = [
        line
        for line in table.splitlines()
        if line.startswith(f"| {HITS} | flush |") and "rounds:" in line
    ]
    cells = row.split(" | ")[2:]
    assert len(cells) == 3
    assert cells[0].startswith("0.870x (0.860 to 0.880), 3 rounds: not met")
    assert cells[1].startswith("0.940x (0.930 to 0.950), 3 rounds: met")
    assert cells[2].startswith("0.910x (0.890 to 0.920), 3 rounds: undecided")
