"""benchmarks/report.py and benchmarks/stats.py compute ratios, intervals and verdicts from
measured values: known inputs, known answers (met, not met, undecided). The load generator
rotates its rounds and keeps each round. And `./dev bench --help` states the defaults the
code uses."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from benchmarks import load, report, run, stats
from benchmarks.report import CERBOS, CERBOS_B50, HIT, MISS, SG_HIT, SG_MISS, pinned, spread

ROUNDS = 8


def _row(p50: float | list[float], p99: float = 0, rate: float | list[float] = 0) -> dict[str, Any]:
    """A subject measured in ROUNDS rounds; a list gives each round its own figure."""
    p50s = p50 if isinstance(p50, list) else [p50] * ROUNDS
    rates = rate if isinstance(rate, list) else [rate] * ROUNDS
    return {
        "p50_us": p50s[0],
        "p99_us": p99,
        "decisions_per_s": rates[0],
        "server_cpu_us": None,
        "window": 0,
        "clients": 8,
        "rounds": [
            {"p50_us": a, "p99_us": p99, "decisions_per_s": r}
            for a, r in zip(p50s, rates, strict=True)
        ],
    }


# Per-round ratios around 1.15 that straddle it: the median is under the target
# (1.14) but the interval is not, so the verdict cannot be "met".
STRADDLING = [110.0, 112.0, 114.0, 114.0, 116.0, 116.0, 118.0, 120.0]


def _record() -> dict[str, Any]:
    seq = {
        "empty servicer": _row(100, 150),
        SG_HIT: _row(STRADDLING, 160),  # about 1.15 either side: undecided
        SG_MISS: _row(200, 300),  # 2.00 > 1.5 in every round: not met
        pinned(20): _row(200),
        pinned(2000): _row(210),  # 1.05 <= 2: met
        spread(20, 1): _row(200),
        spread(2000, 100): _row(500),  # 2.5 > 2: not met
        f"stepguard batch 100 {HIT}": _row(1000),  # 10 per decision / ~115 = 0.09: met
    }
    c8 = {
        "empty servicer": _row(0, 0, 1000),
        CERBOS: _row(500, 900, 800),
        SG_HIT: _row(400, 1000, 900),  # /empty 0.90 met, /Cerbos 1.125 met
        SG_MISS: _row(600, 800, 400),
    }
    tp = {
        CERBOS: _row(0, 0, 1000),
        f"stepguard stream {MISS}": _row(0, 0, [1900.0, 2100.0] * (ROUNDS // 2)),  # undecided
        CERBOS_B50: _row(0, 0, 1000),
        f"stepguard batch 50 {MISS}": _row(0, 0, 300),
    }
    return {"results": {"seq": seq, "c8": c8, "throughput": tp}}


def _by_name(rows: list[list[str]]) -> dict[str, list[str]]:
    return {r[0]: r for r in rows}


def _find(rows: dict[str, list[str]], *words: str) -> list[str]:
    (row,) = [r for name, r in rows.items() if all(w in name for w in words)]
    return row


def test_ratios_intervals_and_verdicts_from_known_figures() -> None:
    rows = _by_name(report._targets(_record()))
    miss = _find(rows, "miss (evaluated) p50 / empty p50")
    assert miss[2:] == ["2.00", "2.00 to 2.00 (8 rounds)", "<= 1.5", "not met"]
    pinned_row = _find(rows, "pinned policies")
    assert pinned_row[2] == "1.05" and pinned_row[5] == "met"
    spread_row = _find(rows, "spread policies")
    assert spread_row[2] == "2.50" and spread_row[5] == "not met"
    assert _find(rows, "batch of 100", "(cached)")[5] == "met"
    assert _find(rows, "8 clients, throughput (cached) / empty")[2:] == [
        "0.90",
        "0.90 to 0.90 (8 rounds)",
        ">= 0.85",
        "met",
    ]
    assert _find(rows, "cached vs evaluated", "8 clients, throughput")[2] == "1.12"
    assert _find(rows, "cached vs evaluated", "8 clients, throughput")[5] == "met"
    assert _find(rows, "headline", "8 clients, throughput")[2:] == [
        "0.50",
        "0.50 to 0.50 (8 rounds)",
        ">= 1",
        "not met",
    ]
    assert _find(rows, "cached vs evaluated", "p50")[5] == "met"  # 400 / 500
    assert _find(rows, "cached vs evaluated", "p99")[5] == "not met"  # 1000 / 900
    assert _find(rows, "headline", "p99")[2] == "0.89"


def test_an_interval_that_straddles_the_target_is_undecided() -> None:
    rows = _by_name(report._targets(_record()))
    hit = _find(rows, "hit (cached) p50 / empty p50")
    low, high = (float(v) for v in hit[3].split(" (")[0].split(" to "))
    assert low < 1.15 < high  # the data straddle the target ...
    assert float(hit[2]) <= 1.15  # ... and the median alone would say "met"
    assert hit[5] == "undecided"
    stream = _find(rows, "headline", "AuthorizeStream")
    assert stream[5] == "undecided"  # rounds at 1.9x and 2.1x against a 2x target


def test_the_miss_comparisons_with_cerbos_come_first_and_are_named_headline() -> None:
    rows = report._targets(_record())
    names = [r[0] for r in rows]
    headline = [n for n in names if n.startswith(report.HEADLINE)]
    assert len(headline) == 5
    assert names[: len(headline)] == headline
    for name in names:
        if "Cerbos" in name:  # Cerbos evaluates every request: every such row says which
            assert "Cerbos" in name and "(evaluated)" in name.split("Cerbos", 1)[1]
            assert ("(evaluated) /" in name) != ("(cached) /" in name)
            assert name.startswith(report.HEADLINE) == ("(evaluated) /" in name)
            assert name.startswith(report.CACHED_VS) == ("(cached) /" in name)


def test_every_subject_label_says_cached_or_evaluated() -> None:
    for group, entries in run.GROUPS.items():
        for label, _ in entries:
            if label.startswith(("stepguard", "Cerbos")):
                assert ("(cached)" in label) != ("(evaluated)" in label), (group, label)


def test_what_was_not_measured_says_so_instead_of_a_verdict() -> None:
    rows = _by_name(report._targets(_record()))
    for name in (
        "per decision in a batch of 100 / single call (evaluated)",
        f"{report.CACHED_VS}AuthorizeStream (cached) / Cerbos unary (evaluated), decisions/s",
    ):
        assert rows[name][2:] == [report.NA, report.NA, rows[name][4], "not measured"]


@pytest.mark.parametrize(
    ("ratio", "limit", "at_most", "expected"),
    [
        (stats.Ratio(1.0, 0.9, 1.1, 8), 1.2, True, stats.MET),
        (stats.Ratio(1.0, 0.9, 1.2, 8), 1.2, True, stats.MET),  # the bound itself is met
        (stats.Ratio(1.0, 0.9, 1.3, 8), 1.2, True, stats.UNDECIDED),
        (stats.Ratio(1.3, 1.25, 1.4, 8), 1.2, True, stats.NOT_MET),
        (stats.Ratio(1.0, 0.9, 1.1, 8), 0.85, False, stats.MET),
        (stats.Ratio(0.9, 0.8, 1.1, 8), 0.85, False, stats.UNDECIDED),
        (stats.Ratio(0.8, 0.7, 0.84, 8), 0.85, False, stats.NOT_MET),
        (stats.NO_RATIO, 1.0, False, stats.NOT_MEASURED),
    ],
)
def test_a_verdict_reads_the_interval_not_the_median(
    ratio: stats.Ratio, limit: float, at_most: bool, expected: str
) -> None:
    assert stats.verdict(ratio, limit, at_most=at_most) == expected


def test_paired_ratios_are_taken_round_by_round() -> None:
    # B is 2x A in every round while both drift 3x over the run: the pairs see 2x exactly.
    a = [100.0, 150.0, 300.0, 200.0]
    b = [2 * v for v in a]
    ratio = stats.paired_ratio(b, a)
    assert (ratio.median, ratio.low, ratio.high, ratio.rounds) == (2.0, 2.0, 2.0, 4)
    assert stats.paired_ratio([1.0, math.nan], [1.0, 2.0]).rounds == 1
    assert not stats.paired_ratio([1.0], [0.0]).measured


def test_rounds_rotate_and_each_round_is_kept() -> None:
    order: list[str] = []

    class Recorded(load.Load):
        def run(
            self, subject: load.Subject, seconds: float, counter: load.Counter, warmup: float
        ) -> load.Samples:
            order.append(subject.label)
            n = len(order)
            return load.Samples([n * 1000] * 10, seconds, None)

    subjects = [load.Subject(x, "t", None, "/m", lambda i: b"") for x in "ABC"]
    out = load.interleaved([(s, Recorded()) for s in subjects], 3.0, rounds=3, warmup=0)
    assert order == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]
    assert [len(st.rounds) for st in out] == [3, 3, 3]
    # A's rounds were the 1st, 6th and 8th calls of the run, in that order.
    assert out[0].per_round("p50_us") == [1.0, 6.0, 8.0]
    assert out[0].to_json()["rounds"][1]["p50_us"] == 6.0


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
