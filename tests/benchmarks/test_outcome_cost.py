"""The outcome-cost benchmark's harness on a short run (not timed): every load (decide,
pairs through the client's reporter, pairs one call each) is measured on one real
sidecar, every outcome the clients recorded is in the trail beside its decision, none
is a violation, and the block it writes names its command and both pairs figures."""

from __future__ import annotations

from benchmarks import machine
from benchmarks.outcome_cost import LOADS, render, run


def test_a_short_run_measures_both_loads_and_the_trail_holds_every_outcome() -> None:
    record = run(rounds=2, clients=2, warmup=0.1, seconds=0.3)
    assert LOADS == ("decide", "pairs", "pairs-unary")
    assert [len(record["by_load"][load]) for load in LOADS] == [2, 2, 2]
    assert all(x["batches"] > 0 for x in record["by_load"]["pairs"])  # sent batched
    assert all(x["decisions_per_s"] > 0 for load in LOADS for x in record["by_load"][load])
    trail = record["trail"]
    assert trail["verified"] and trail["violations"] == 0
    assert trail["outcomes"] == record["outcomes_sent"] > 0
    assert trail["decisions"] >= trail["outcomes"]
    text = render(
        {
            **record,
            "command": "python -m benchmarks.outcome_cost",
            "started": "2026-12-06T10:00:00+00:00",
            "commit": "0000000",
            "machine": machine.describe(),
            "data": "benchmarks/data/x.json",
        }
    )
    assert "| decide |" in text and "| pairs |" in text and "| pairs-unary |" in text
    assert "pairs (the default: batched by the reporter): decision throughput / decide" in text
    assert "pairs-unary (one RecordOutcome call each" in text


def test_a_pinned_run_gives_the_cpus_back_and_says_its_topology() -> None:
    """--pinned: the sidecar on CPU 0, the clients on CPU 1; this process has every CPU
    again afterwards, and the block says which topology the ratios come from."""
    import os

    before = os.sched_getaffinity(0)
    record = run(rounds=1, clients=2, warmup=0.1, seconds=0.3, pinned=True)
    assert os.sched_getaffinity(0) == before
    assert record["pinned"] and record["trail"]["verified"]
    text = render(
        {
            **record,
            "command": "python -m benchmarks.outcome_cost --pinned",
            "started": "2026-12-06T10:00:00+00:00",
            "commit": "0000000",
            "machine": machine.describe(),
            "data": "benchmarks/data/x.json",
        }
    )
    assert "Topology: the sidecar pinned to CPU 0" in text
