"""The fleet benchmark runs end to end on real servers (tiny settings), measures what it
says, and writes a block tests/benchmarks/test_bench_provenance.py accepts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from benchmarks import fleet_bench
from benchmarks.results import write_block
from tests.benchmarks.test_bench_provenance import BLOCK


def test_a_tiny_run_measures_throughput_lag_and_ingest(tmp_path: Path) -> None:
    args = argparse.Namespace(
        rounds=2, clients=4, seconds=0.5, rates=[200.0], lag_seconds=1.0, ingest=1500
    )
    summary = fleet_bench.run(args)
    t = summary["throughput"]
    assert len(t["rates"]["on"]) == len(t["rates"]["off"]) == 2
    assert t["on"] > 0 and t["off"] > 0 and t["ratio"] > 0
    assert t["interval"][0] <= t["ratio"] <= t["interval"][1]
    # where the CPU went: every process of the shipping side, per shipped record
    cpu = t["cpu"]
    assert cpu["records_shipped"] > 0
    names = {"sidecar (on)", "shipper", "nats-server", "collector", "postgresql"}
    assert set(cpu["cpu_s"]) == set(cpu["us_per_record"]) == names
    assert all(v >= 0 for v in [*cpu["cpu_s"].values(), *cpu["us_per_record"].values()])
    # the shipper published and the collector stored every record: both used some CPU
    assert cpu["cpu_s"]["shipper"] > 0 and cpu["cpu_s"]["collector"] > 0
    side = t["sidecar_cpu_us_per_decision"]
    assert side["on"] > 0 and side["off"] > 0
    assert len(side["rounds"]["on"]) == len(side["rounds"]["off"]) == 2
    # the pod (sidecars, shipper) on one CPU, the rest on the other; then all shared
    shared = summary["throughput_shared"]
    pod, where = t["topology"]["pod"], t["topology"]["elsewhere"]
    assert len(pod) == 1 and where and not set(pod) & set(where)
    assert shared["topology"]["pod"] == shared["topology"]["elsewhere"] == sorted(pod + where)
    for x in (t, shared):
        assert len(x["rates"]["on"]) == 2 and x["cpu"]["records_shipped"] > 0
        for mode in ("on", "off"):  # each CPU's busy share during the measurements
            busy = x["cpu_busy"][mode]
            assert set(busy) == {str(c) for c in pod + where}
            assert all(0 < v <= 1 for v in busy.values())
            # and how many CPUs' worth the pod's and the elsewhere side's processes used
            assert set(x["cpus_used"][mode]) == {"pod", "elsewhere"}
            assert all(v > 0 for v in x["cpus_used"][mode].values())
    [lag] = summary["lag"]
    # every paced decision was found in PostgreSQL, after it was made
    assert lag["decisions"] == 200 and 0 <= lag["p50_s"] <= lag["p99_s"] <= lag["max_s"]
    assert [i["collectors"] for i in summary["ingest"]] == [1, 2]
    for i in summary["ingest"]:
        assert i["records"] > 1500  # the decisions and headers
        # A span too short to time (all in one batch, on a quick machine) is "not measured".
        assert i["events_per_s"] > 0 or (math.isnan(i["events_per_s"]) and i["span_s"] <= 0.05)
    body = fleet_bench.render(summary, "python -m benchmarks.fleet_bench", "abc1234", "x", "t")
    results = tmp_path / "RESULTS.md"
    write_block(
        results,
        "fleet-bench",
        "python -m benchmarks.fleet_bench --write",
        body.replace("run t", "run 2026-12-06T10:00:00"),
    )
    [block] = list(BLOCK.finditer(results.read_text()))
    assert block["name"] == "fleet-bench" and "Command: `" in block["body"]
    assert "decisions/s, shipping on / off" in block["body"]
    assert "| shipper |" in block["body"] and "CPU µs per shipped record" in block["body"]
    assert "pinned (each round:" in block["body"] and "shared (each round:" in block["body"]
    assert "elsewhere" in block["body"] and "| pinned | on |" in block["body"]
