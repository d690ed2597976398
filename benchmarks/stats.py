"""Paired ratios, their uncertainty and the verdicts drawn from them.

One shared piece for every benchmark that checks a target (`./dev bench`'s
report and `benchmarks.audit_bench`): A and B are measured in the same round,
one after the other, so each round gives one ratio B/A in which the machine's
drift mostly cancels; the figure is the median of those per-round ratios, and
a 95% percentile-bootstrap interval of that median (the rounds resampled)
says how far one run can be trusted on a shared, noisy machine. A verdict is
drawn from the interval, never from the point alone: *met* when the whole
interval is on the target's side, *not met* when the whole interval is on the
other side, *undecided* when it straddles the target.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MET, NOT_MET, UNDECIDED, NOT_MEASURED = "met", "not met", "undecided", "not measured"


def bootstrap_median_interval(
    values: Sequence[float], *, resamples: int = 4000, seed: int = 1
) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the median of `values` (seeded: reproducible)."""
    rng = random.Random(seed)
    data = list(values)
    medians = sorted(statistics.median(rng.choices(data, k=len(data))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


@dataclass(frozen=True, slots=True)
class Ratio:
    """The median of per-round ratios and its 95% interval; nan when nothing was measured."""

    median: float
    low: float
    high: float
    rounds: int

    @property
    def measured(self) -> bool:
        return not math.isnan(self.median)


NO_RATIO = Ratio(math.nan, math.nan, math.nan, 0)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> Ratio:
    """Round by round b/a (rounds where either side is missing or a is 0 are left out)."""
    ratios = [
        n / d
        for n, d in zip(numerators, denominators, strict=True)
        if not (math.isnan(n) or math.isnan(d)) and d != 0
    ]
    if not ratios:
        return NO_RATIO
    low, high = bootstrap_median_interval(ratios)
    return Ratio(statistics.median(ratios), low, high, len(ratios))


def verdict(ratio: Ratio, limit: float, *, at_most: bool) -> str:
    """met / not met / undecided (the interval straddles the limit) / not measured."""
    if not ratio.measured:
        return NOT_MEASURED
    if at_most:
        if ratio.high <= limit:
            return MET
        return NOT_MET if ratio.low > limit else UNDECIDED
    if ratio.low >= limit:
        return MET
    return NOT_MET if ratio.high < limit else UNDECIDED
