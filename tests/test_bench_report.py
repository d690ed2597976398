"""benchmarks/report.py computes ratios and verdicts from measured values: known inputs,
known answers. And `./dev bench --help` states the defaults the code uses."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from benchmarks import report, run


def _row(p50: float, p99: float, rate: float) -> dict[str, Any]:
    return {
        "p50_us": p50,
        "p99_us": p99,
        "decisions_per_s": rate,
        "server_cpu_us": None,
        "window": 0,
        "clients": 8,
    }


def _record() -> dict[str, Any]:
    seq = {
        "empty servicer": _row(100, 150, 0),
        "stepguard hit": _row(110, 160, 0),  # 1.10 <= 1.15: met
        "stepguard miss": _row(200, 300, 0),  # 2.00 > 1.5: missed by 33%
        "stepguard miss, 20 policies": _row(200, 0, 0),
        "stepguard batch 100 hit": _row(1100, 0, 0),  # 11 per decision / 110 = 0.10: met
    }
    c8 = {
        "empty servicer": _row(0, 0, 1000),
        "Cerbos": _row(500, 900, 800),
        "stepguard hit": _row(400, 1000, 900),  # /empty 0.90 met, /Cerbos 1.125 met
        "stepguard miss": _row(600, 800, 400),
    }
    return {"results": {"seq": seq, "c8": c8, "throughput": {}}}


def _by_name(rows: list[list[str]]) -> dict[str, list[str]]:
    return {r[0]: r for r in rows}


def test_ratios_and_verdicts_from_known_figures() -> None:
    rows = _by_name(report._targets(_record()))
    hit = rows["cache hit p50 / empty p50"]
    assert hit[2:] == ["1.10", "<= 1.15", "met"]
    miss = rows["miss p50 / empty p50 (example policies)"]
    assert miss[2:] == ["2.00", "<= 1.5", "missed by 33%"]
    batch = rows["per decision in a batch of 100 / single call (hit)"]
    assert batch[2:] == ["0.10", "<= 0.15", "met"]
    assert rows["8 clients, hit: throughput / empty"][2:] == ["0.90", ">= 0.85", "met"]
    assert rows["8 clients, hit: throughput / Cerbos"][2:] == ["1.12", ">= 1", "met"]
    assert rows["8 clients, miss: throughput / Cerbos"][2:] == ["0.50", ">= 1", "missed by 50%"]
    assert rows["8 clients, hit: p50 / Cerbos p50"][4] == "met"  # 400 / 500
    assert rows["8 clients, hit: p99 / Cerbos p99"][4] == "missed by 11%"  # 1000 / 900
    assert rows["8 clients, miss: p99 / Cerbos p99"][2:] == ["0.89", "<= 1", "met"]


def test_what_was_not_measured_says_so_instead_of_a_verdict() -> None:
    rows = _by_name(report._targets(_record()))
    absent = rows["miss p50, 2,000 / 20 policies"]
    assert absent[2:] == [report.NA, "<= 2", "not measured"]
    assert rows["AuthorizeStream (miss) / Cerbos unary, decisions/s"][4] == "not measured"
    assert rows["per decision in a batch of 100 / single call (miss)"][4] == "not measured"


def test_ratio_helpers_refuse_missing_or_zero_baselines() -> None:
    assert report._x(3.0, 2.0) == "1.50x"
    assert report._x(3.0, 0.0) == report.NA
    assert report._x(math.nan, 2.0) == report.NA
    assert report._get({"g": {"l": {"k": None}}}, "g", "l", "k") != report._get({}, "g", "l", "k")


@pytest.mark.parametrize(
    ("argv", "seconds", "rounds", "memory"),
    [
        ([], run.SECONDS, run.ROUNDS, run.MEMORY_REQUESTS),
        (["--quick"], run.QUICK_SECONDS, run.QUICK_ROUNDS, run.QUICK_MEMORY_REQUESTS),
        (["--duration", "7", "--rounds", "5", "--memory-requests", "9"], 7.0, 5, 9),
    ],
)
def test_flags_give_the_timing_they_say(
    argv: list[str], seconds: float, rounds: int, memory: int
) -> None:
    timing, memory_requests = run.timing_for(run._args(argv))
    assert (timing.seconds, timing.rounds, memory_requests) == (seconds, rounds, memory)


def test_help_states_the_defaults_the_code_uses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run._args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    timing, memory = run.timing_for(run._args([]))
    quick, quick_memory = run.timing_for(run._args(["--quick"]))
    assert f"seconds per measurement (default {timing.seconds:g})" in text
    assert f"(default {timing.rounds})" in text
    assert f"memory figure (default {memory};" in text
    assert re.search(rf"short run: {quick.seconds:g} s per measurement, {quick.rounds} round", text)
    assert f"{quick_memory} requests for the memory figure" in text
